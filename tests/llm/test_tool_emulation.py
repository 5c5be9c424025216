"""Tool calling for text-only models: the prompt that describes the tools, and the
parser that reads what models actually write back into the ToolCall type native
tool calling gives (apps/llm/tool_emulation.py)."""

import asyncio
import json
from typing import Any

import pytest

from apps.llm.providers.base import ProviderConfig
from apps.llm.providers.registry import make_provider
from apps.llm.tool_emulation import emulate_request, parse_tool_calls, tools_prompt
from apps.llm.types import ChatRequest, Message, StreamChunk, Tool, ToolCall
from tests.fakes.llm_fake import Reply
from tests.fakes.openai_server import FakeOpenAI

WEATHER = Tool(
    name="get_weather",
    description="The weather in a city now",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
SEARCH = Tool(
    name="search_docs",
    description="Search the documentation",
    parameters={"type": "object", "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}}},
)
USER = Tool(
    name="create_user",
    description="Create a user",
    parameters={"type": "object", "properties": {"name": {"type": "string"}}},
)
TOOLS = (WEATHER, SEARCH)


def one_call(text: str, tools: tuple[Tool, ...] = TOOLS, **kwargs: Any) -> tuple[str | None, ToolCall]:
    content, calls = parse_tool_calls(text, tools, **kwargs)
    assert len(calls) == 1, (text, calls)
    return content, calls[0]


@pytest.mark.parametrize(
    "answer",
    [
        # What the prompt asks for.
        '```tool_call\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
        # Another fence label, or none.
        '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
        '```\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
        # Hermes/Qwen-style tags.
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        # No block at all, inside a sentence.
        'Sure! {"name": "get_weather", "arguments": {"city": "Paris"}}',
        # Other words for the keys, arguments as a JSON string.
        '```tool_call\n{"tool": "get_weather", "args": {"city": "Paris"}}\n```',
        '```tool_call\n{"function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}}\n```',
        '```tool_call\n{"name": "get_weather", "parameters": {"city": "Paris"}}\n```',
        # Arguments next to the name instead of under a key.
        '```tool_call\n{"name": "get_weather", "city": "Paris"}\n```',
        # Sloppy JSON: single quotes, trailing comma, Python literals.
        "```tool_call\n{'name': 'get_weather', 'arguments': {'city': 'Paris'}}\n```",
        '```tool_call\n{"name": "get_weather", "arguments": {"city": "Paris",},}\n```',
        # Different case in the name.
        '```tool_call\n{"name": "Get_Weather", "arguments": {"city": "Paris"}}\n```',
        # Cut off by the token limit: no closing fence, no closing braces.
        '```tool_call\n{"name": "get_weather", "arguments": {"city": "Paris"',
    ],
)
def test_tolerant_parser_reads_what_models_write(answer):
    content, call = one_call(answer)
    assert call.name == "get_weather"
    assert call.parsed_arguments() == {"city": "Paris"}
    assert call.id.startswith("call_")
    assert content in (None, "Sure!")


def test_text_around_the_block_is_kept_as_the_answer():
    text = 'Let me check.\n```tool_call\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n```\n'
    content, call = one_call(text)
    assert content == "Let me check."
    assert call.parsed_arguments() == {"city": "Oslo"}


def test_several_calls_in_blocks_or_a_list():
    blocks = (
        '```tool_call\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n```\n'
        '```tool_call\n{"name": "search_docs", "arguments": {"query": "umbrella", "limit": 3}}\n```'
    )
    listed = (
        '```tool_call\n[{"name": "get_weather", "arguments": {"city": "Oslo"}},'
        ' {"name": "search_docs", "arguments": {"query": "umbrella", "limit": 3}}]\n```'
    )
    for text in (blocks, listed):
        content, calls = parse_tool_calls(text, TOOLS)
        assert content is None
        assert [call.name for call in calls] == ["get_weather", "search_docs"]
        assert calls[1].parsed_arguments() == {"query": "umbrella", "limit": 3}
        assert calls[0].id != calls[1].id


def test_plain_answers_and_json_answers_are_not_tool_calls():
    for text in (
        "It is sunny in Paris today.",
        'Here is the data: ```json\n{"city": "Paris", "temperature": 21}\n```',
        'The tool {"name": "launch_rockets", "arguments": {}} does not exist.',
        "Braces { inside } text and a half-open [ bracket",
        "",
    ):
        content, calls = parse_tool_calls(text, TOOLS)
        assert calls == ()
        assert content == text


def test_a_block_that_cannot_be_read_stays_text():
    text = "```tool_call\nI would call get_weather for Paris\n```"
    content, calls = parse_tool_calls(text, TOOLS)
    assert calls == ()
    assert content == text


def test_arguments_must_be_an_object():
    _, calls = parse_tool_calls('```tool_call\n{"name": "get_weather", "arguments": [1, 2]}\n```', TOOLS)
    assert calls == ()


def test_forced_tool_may_be_written_as_bare_arguments():
    _, call = one_call('{"city": "Rome"}', tool_choice="get_weather")
    assert call.name == "get_weather"
    assert call.parsed_arguments() == {"city": "Rome"}
    # Even when an argument is called "name".
    _, call = one_call('```json\n{"name": "Ada"}\n```', tools=(USER,), tool_choice="create_user")
    assert call.name == "create_user"
    assert call.parsed_arguments() == {"name": "Ada"}


def test_tool_choice_none_reads_nothing():
    text = '```tool_call\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```'
    assert parse_tool_calls(text, TOOLS, tool_choice="none") == (text, ())


def test_prompt_describes_tools_the_format_and_the_choice():
    prompt = tools_prompt(TOOLS)
    assert "get_weather: The weather in a city now" in prompt
    assert json.dumps(WEATHER.parameters, separators=(",", ":")) in prompt
    assert "```tool_call" in prompt
    assert "If no tool is needed" in prompt
    assert "You must call at least one tool" in tools_prompt(TOOLS, "required")
    assert "You must call the tool search_docs" in tools_prompt(TOOLS, "search_docs")


def test_emulated_request_has_no_tools_and_a_text_only_history():
    call = ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')
    request = ChatRequest(
        model="m",
        messages=(
            Message(role="system", content="Be brief."),
            Message(role="user", content="Weather in Paris?"),
            Message(role="assistant", content=None, tool_calls=(call,)),
            Message(role="tool", content="21 C, sunny", tool_call_id="call_1"),
        ),
        tools=TOOLS,
        tool_choice="auto",
    )
    emulated = emulate_request(request)
    assert emulated.tools == ()
    assert emulated.tool_choice is None
    roles = [message.role for message in emulated.messages]
    assert roles == ["system", "user", "assistant", "user"]
    assert (emulated.messages[0].content or "").startswith("Be brief.\n\nYou can call tools.")
    # The earlier call is written the way the model is asked to write calls...
    assert parse_tool_calls(emulated.messages[2].content, TOOLS)[1][0].parsed_arguments() == {"city": "Paris"}
    # ...and its result is a user turn that names the tool.
    assert emulated.messages[3].content == "Result of get_weather:\n21 C, sunny"
    assert all(not message.tool_calls for message in emulated.messages)


def test_request_without_tools_is_unchanged():
    request = ChatRequest(model="m", messages=(Message(role="user", content="hi"),))
    assert emulate_request(request) is request


# -- streaming through emulation, against a real server protocol (the OpenAI fake) ---------------


def stream_emulated(fake: FakeOpenAI, text: str, **request: Any) -> list[StreamChunk]:
    fake.script(Reply(text=text, chunk_size=3))

    async def main() -> list[StreamChunk]:
        provider = make_provider(
            ProviderConfig(kind="openai_compatible", base_url=fake.base_url, options={"tools": "emulated"})
        )
        try:
            chat = ChatRequest(
                model="m", messages=(Message(role="user", content="go"),), tools=TOOLS, **request
            )
            return [chunk async for chunk in provider.stream(chat)]
        finally:
            await provider.close()

    return asyncio.run(main())


def shown_before_the_end(chunks: list[StreamChunk]) -> str:
    assert chunks[-1].finish_reason is not None
    assert all(chunk.finish_reason is None for chunk in chunks[:-1])
    return "".join(chunk.text for chunk in chunks[:-1])


@pytest.mark.parametrize(
    "text",
    [
        "Use this:\n```python\ndef f(x):\n    return {x: [x]}\n```\nThat is all.",
        "Call `get_weather` with {city} in braces, or <b>bold</b> [links].",
        'As JSON: {"city": "Paris", "temperature": 21} and more words after it.',
    ],
)
def test_code_braces_and_json_answers_stream_through(openai_fake: FakeOpenAI, text: str) -> None:
    chunks = stream_emulated(openai_fake, text)
    assert shown_before_the_end(chunks) + chunks[-1].text == text
    assert len(shown_before_the_end(chunks)) >= len(text) - 2  # not held back to the end
    assert chunks[-1].tool_calls == ()
    assert chunks[-1].finish_reason == "stop"


@pytest.mark.parametrize(
    "text",
    [
        'Let me check. ```tool_call\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
        'Let me check. <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>',
        'Let me check. {"name": "get_weather", "arguments": {"city": "Paris"}}',
    ],
)
def test_calls_are_held_back_and_read(openai_fake: FakeOpenAI, text: str) -> None:
    chunks = stream_emulated(openai_fake, text)
    assert shown_before_the_end(chunks).strip() == "Let me check."
    assert chunks[-1].finish_reason == "tool_calls"
    assert [call.parsed_arguments() for call in chunks[-1].tool_calls] == [{"city": "Paris"}]
    assert chunks[-1].usage is not None


def test_forced_tool_written_as_bare_arguments_while_streaming(openai_fake: FakeOpenAI) -> None:
    chunks = stream_emulated(openai_fake, '{"city": "Rome"}', tool_choice="get_weather")
    assert shown_before_the_end(chunks) == ""
    assert [(call.name, call.parsed_arguments()) for call in chunks[-1].tool_calls] == [
        ("get_weather", {"city": "Rome"})
    ]


def test_fences_tags_and_brackets_inside_argument_strings_do_not_end_the_block():
    query = 'use {braces}, ``` fences, </tool_call> tags and \\"quotes\\"'
    call_json = f'{{"name": "search_docs", "arguments": {{"query": "{query}", "limit": 2}}}}'
    for text in (f"```tool_call\n{call_json}\n```\nDone.", f"<tool_call>{call_json}</tool_call>\nDone."):
        content, call = one_call(text)
        assert call.parsed_arguments() == {
            "query": 'use {braces}, ``` fences, </tool_call> tags and "quotes"',
            "limit": 2,
        }
        assert content == "Done."


def test_a_code_block_before_the_call_stays_in_the_text():
    text = (
        'Here is the helper:\n```python\nCONFIG = {"city": "Paris"}\n```\n'
        '```tool_call\n{"name": "get_weather", "arguments": {"city": "Paris", "when": ["today", "tomorrow"],'
        ' "where": {"lat": 48.85, "lon": 2.35}, "note": "café, 東京"}}\n```'
    )
    content, call = one_call(text)
    assert content == 'Here is the helper:\n```python\nCONFIG = {"city": "Paris"}\n```'
    assert call.parsed_arguments() == {
        "city": "Paris",
        "when": ["today", "tomorrow"],
        "where": {"lat": 48.85, "lon": 2.35},
        "note": "café, 東京",
    }
