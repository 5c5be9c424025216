"""Token estimates without a tokenizer download.

Context-window decisions, cost estimates before a call and the usage of a stream
whose server reports none all need a token count before (or without) the provider
saying. The exact tokenizers (tiktoken's BPE files, Claude's, Gemini's) are
downloads we refuse at run time, so this is a heuristic over the pieces BPE
tokenizers split text into: a word is a token and one more per 7-8 letters (an
identifier's underscores join its parts), digits go in groups (three for
OpenAI-style vocabularies, one for Gemini's and Llama-style ones), a run of
symbols is a token per 1.6-2 characters, a line break with its indentation about
one, accented words and scripts without spaces (CJK) by the character. Each family
has its own numbers and per-message overhead (role markers of its chat format).

Calibrated against real vocabularies loaded by llama.cpp (vocab-only GGUF files,
not shipped): Llama 3's tiktoken-style BPE for "openai" (o200k itself counts a few
percent fewer on English, so this errs high), Gemma's for "gemini", SmolLM2's for
"llama", on English prose (README, design notes), Python, HTML templates, JSON,
numbers, French and Chinese. On those the estimate is within 9% below (French)
to 19% above the real count, and within 2% on numbers; dense snippets (a short
function, compact JSON) come out up to about 35% above. One known low side:
SmolLM2's English-only vocabulary cuts unaccented French a third finer than this
counts, so the local provider, which has the real tokenizer loaded, should count
with it. Claude's tokenizer is
not public: "anthropic" is "openai" plus 15%, its commonly measured surplus, and
is not calibrated. It errs high on purpose: saying a prompt fits when
it does not costs a failed call, the other way round only a slightly earlier
truncation.

Images are a flat count each, whatever their size (we do not decode them): what a
1024x1024 image costs, the size most screenshots and photos are scaled to. OpenAI
(and open models): 765, i.e. 85 + 170 per 512 px tile at high detail, 85 at
detail "low"; Anthropic: 1,600, the most an image costs after Claude scales it
to about 1.15 megapixels (width x height / 750); Gemini: 1,032, four 768 px tiles
of 258."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from apps.llm.types import Message, Tool


@dataclass(frozen=True)
class Family:
    name: str
    letters_per_extra_token: int  # a word is one token, plus one per this many more letters
    digits_per_token: int
    indent_per_token: int  # spaces of indentation after a line break per token
    per_cjk_character: float
    letters_per_accented_token: int  # words with non-ASCII letters split finer
    symbols_per_token: float
    factor: float  # on the whole count (a vocabulary coarser or finer than the calibrated one)
    per_message: int  # role markers and separators per message
    per_reply: int  # what primes the assistant's answer


_OPENAI = Family("openai", 8, 3, 16, 0.95, 3, 2.0, 1.0, per_message=4, per_reply=3)
FAMILIES: dict[str, Family] = {
    "openai": _OPENAI,
    "anthropic": Family("anthropic", 8, 3, 16, 0.95, 3, 2.0, 1.15, per_message=5, per_reply=3),
    "gemini": Family("gemini", 7, 1, 16, 0.75, 6, 1.6, 1.0, per_message=4, per_reply=2),
    # Llama/Mistral/SmolLM vocabularies (32k-50k entries, mostly English).
    "llama": Family("llama", 7, 1, 8, 2.2, 2, 1.6, 1.0, per_message=5, per_reply=3),
}
# Provider kind -> tokenizer family (OpenAI-compatible servers mostly serve open models).
PROVIDER_FAMILIES = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gemini": "gemini",
    "openai_compatible": "llama",
    "local": "llama",
}

_PIECES = re.compile(
    r"(?P<word>[A-Za-z_]+)"
    r"|(?P<digits> ?\d+)"
    r"|(?P<newlines>\n\s*)"
    r"|(?P<spaces>[ \t]+)"
    r"|(?P<letters>[^\W\d_]+)"  # words with letters outside ASCII
    r"|(?P<symbols>[^\w\s]+)"
    r"|(?P<other>.)",
    re.DOTALL,
)


def family_of(provider_kind: str) -> Family:
    return FAMILIES[PROVIDER_FAMILIES.get(provider_kind, "openai")]


def _raw_count(text: str, family: Family) -> int:
    count = 0
    for match in _PIECES.finditer(text):
        kind = match.lastgroup
        piece = match.group()
        if kind == "word":
            parts = [part for part in piece.split("_") if part]
            count += max(1, sum(1 + (len(part) - 1) // family.letters_per_extra_token for part in parts))
        elif kind == "digits":
            spaced = piece.startswith(" ")  # a space before a number is a token of its own
            count += math.ceil((len(piece) - spaced) / family.digits_per_token) + spaced
        elif kind == "newlines":
            indent = len(piece.rsplit("\n", 1)[-1])
            count += 1 + (piece.count("\n") - 1) // 2 + indent // family.indent_per_token
        elif kind == "spaces":
            count += (len(piece) - 1) // 4  # one space joins the next word
        elif kind == "letters":
            cjk = sum(1 for char in piece if ord(char) >= 0x2E80)
            count += math.ceil(cjk * family.per_cjk_character)
            if len(piece) > cjk:
                count += 1 + (len(piece) - cjk) // family.letters_per_accented_token
        elif kind == "symbols":
            count += math.ceil(len(piece) / family.symbols_per_token)
        else:
            count += 1
    return count


def estimate_text_tokens(text: str, family: Family | str = "openai") -> int:
    if not text:
        return 0
    chosen = FAMILIES[family] if isinstance(family, str) else family
    # An agent resends its whole history each step: each text is counted once. The key
    # holds the text's hash and length, not the text (a long history stays uncopied);
    # a collision would only skew an estimate.
    key = (hash(text), len(text), chosen.name)
    count = _counted.get(key)
    if count is None:
        if len(_counted) >= _COUNTED_MAX:
            _counted.clear()
        count = _counted[key] = math.ceil(_raw_count(text, chosen) * chosen.factor)
    return count


_COUNTED_MAX = 16384
_counted: dict[tuple[int, int, str], int] = {}


def estimate_tool_tokens(tools: Iterable[Tool], family: Family | str = "openai") -> int:
    """The tool definitions as the provider puts them before the conversation."""
    chosen = FAMILIES[family] if isinstance(family, str) else family
    total = 0
    for tool in tools:
        text = f"{tool.name}\n{tool.description}\n{json.dumps(tool.parameters, separators=(',', ':'))}"
        total += estimate_text_tokens(text, chosen) + 8
    return total


def estimate_message_tokens(
    messages: Iterable[Message], family: Family | str = "openai", *, tools: Iterable[Tool] = ()
) -> int:
    """Prompt tokens of a conversation (and its tools), as the provider will count them."""
    chosen = FAMILIES[family] if isinstance(family, str) else family
    total = chosen.per_reply
    for message in messages:
        total += chosen.per_message + estimate_text_tokens(message.content or "", chosen)
        for call in message.tool_calls:
            total += (
                4 + estimate_text_tokens(call.name, chosen) + estimate_text_tokens(call.arguments, chosen)
            )
        if message.name:
            total += 1 + estimate_text_tokens(message.name, chosen)
        total += sum(estimate_image_tokens(image.detail, chosen) for image in message.images)
    return total + estimate_tool_tokens(tools, chosen)


# An image, flat, by family: (detail "auto" or "high", detail "low"); see the module's docstring.
IMAGE_TOKENS: dict[str, tuple[int, int]] = {
    "openai": (765, 85),
    "anthropic": (1600, 1600),
    "gemini": (1032, 1032),
    "llama": (765, 765),
}


def estimate_image_tokens(detail: str = "auto", family: Family | str = "openai") -> int:
    """One image, flat (see the module's docstring)."""
    name = family if isinstance(family, str) else family.name
    high, low = IMAGE_TOKENS.get(name, IMAGE_TOKENS["openai"])
    return low if detail == "low" else high
