"""Tool calling for models that only write text.

`emulate_request` turns a request with tools into one without: the tools and the
answer format go into the system prompt, earlier tool calls and tool results become
plain conversation. `parse_tool_calls` reads the answer back into the same ToolCall
type native tool calling gives, tolerating what small models actually write: other
fence labels or none, <tool_call> tags, single quotes, trailing commas, Python
literals, "args"/"parameters"/"input" for "arguments", arguments as a JSON string,
a list of calls, and a block cut off by the token limit.

    response = await chat_with_emulated_tools(provider, request)   # same ChatResponse shape

A provider whose server cannot do tools calls this itself (apps/llm/providers/
openai_compatible.py with tools "emulated"); the gateway may call it for a catalog
model without native tools. Either way the provider then sees a request with no
tools, so nothing is emulated twice."""

from __future__ import annotations

import ast
import json
import re
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any

from apps.llm.providers.base import Provider
from apps.llm.types import ChatRequest, ChatResponse, Message, StreamChunk, Tool, ToolCall

FENCE_LABEL = "tool_call"
_NAME_KEYS = ("name", "tool", "tool_name", "function_name", "function")
_ARGUMENT_KEYS = ("arguments", "args", "parameters", "params", "input", "tool_input", "kwargs")
_FENCE_OPEN = re.compile(r"```[ \t]*([A-Za-z_\-]*)[ \t]*\n?")
_TAG_OPEN = re.compile(r"<(tool_call|function_call|tool)>", re.IGNORECASE)
_CALL_LABELS = frozenset({FENCE_LABEL, "function_call", "tool"})


def tools_prompt(tools: Sequence[Tool], tool_choice: str | None = None) -> str:
    lines = [
        "You can call tools. The tools:",
        "",
    ]
    for tool in tools:
        lines.append(f"- {tool.name}: {tool.description}".rstrip(": "))
        lines.append(f"  arguments (JSON Schema): {json.dumps(tool.parameters, separators=(',', ':'))}")
    lines += [
        "",
        "To call a tool, answer with a fenced block like this one and nothing after it:",
        f"```{FENCE_LABEL}",
        '{"name": "<tool name>", "arguments": {<the arguments as a JSON object>}}',
        "```",
        "Use one block per call to call several tools. The results come back in the next message.",
    ]
    if tool_choice == "required":
        lines.append("You must call at least one tool now.")
    elif tool_choice and tool_choice not in ("auto", "none"):
        lines.append(f"You must call the tool {tool_choice} now.")
    else:
        lines.append("If no tool is needed, answer normally without a block.")
    return "\n".join(lines)


def _call_block(call: ToolCall) -> str:
    try:
        arguments: Any = json.loads(call.arguments or "{}")
    except ValueError:
        arguments = call.arguments
    return f"```{FENCE_LABEL}\n{json.dumps({'name': call.name, 'arguments': arguments})}\n```"


def emulate_request(request: ChatRequest) -> ChatRequest:
    """The same conversation for a text-only model: tools described in the system prompt."""
    if not request.tools and not any(m.tool_calls or m.role == "tool" for m in request.messages):
        return request
    names = {}
    messages: list[Message] = []
    for message in request.messages:
        if message.role == "assistant" and message.tool_calls:
            for call in message.tool_calls:
                names[call.id] = call.name
            blocks = "\n".join(_call_block(call) for call in message.tool_calls)
            text = f"{message.content}\n{blocks}" if message.content else blocks
            messages.append(Message(role="assistant", content=text, pinned=message.pinned))
        elif message.role == "tool":
            name = names.get(message.tool_call_id or "", message.name or "the tool")
            text = f"Result of {name}:\n{message.content or ''}"
            messages.append(Message(role="user", content=text, pinned=message.pinned))
        else:
            messages.append(message)
    if request.tools and request.tool_choice != "none":
        prompt = tools_prompt(request.tools, request.tool_choice)
        if messages and messages[0].role == "system":
            first = messages[0]
            messages[0] = replace(first, content=f"{first.content or ''}\n\n{prompt}".strip())
        else:
            messages.insert(0, Message(role="system", content=prompt))
    return replace(request, messages=tuple(messages), tools=(), tool_choice=None)


# -- reading the answer ------------------------------------------------------------------------------


def _value_end(text: str, start: int) -> int:
    """Where the {...} or [...] starting at `start` ends (brackets and fences inside
    strings do not count); the text's end when it is cut off."""
    depth = 0
    quote = ""
    escaped = False
    for index in range(start, len(text)):
        char = text[index]
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = ""
        elif char in "\"'" and depth:
            quote = char
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return index + 1
    return len(text)


def _balanced_objects(text: str) -> list[tuple[int, int]]:
    """Spans of top-level {...} or [...] in text."""
    spans = []
    index = 0
    while index < len(text):
        if text[index] in "{[":
            end = _value_end(text, index)
            spans.append((index, end))
            index = end
        else:
            index += 1
    return spans


def _blocks(text: str) -> list[tuple[int, int, str, list[str]]]:
    """Fenced blocks and <tool_call> tags: (start, end, label, the JSON values inside).
    A closing fence or tag inside a JSON string does not end the block."""
    blocks: list[tuple[int, int, str, list[str]]] = []
    position = 0
    while True:
        fence = _FENCE_OPEN.search(text, position)
        tag = _TAG_OPEN.search(text, position)
        match = min((m for m in (fence, tag) if m is not None), key=lambda m: m.start(), default=None)
        if match is None:
            return blocks
        is_fence = match is fence
        closer = "```" if is_fence else f"</{match.group(1).lower()}>"
        label = match.group(1).lower() if is_fence else "tool_call"
        values = []
        cursor = match.end()
        while True:
            while cursor < len(text) and text[cursor].isspace():
                cursor += 1
            if cursor < len(text) and text[cursor] in "{[":
                end = _value_end(text, cursor)
                values.append(text[cursor:end])
                cursor = end
                continue
            break
        found = text.find(closer, cursor) if is_fence else text.lower().find(closer, cursor)
        end = len(text) if found < 0 else found + len(closer)
        blocks.append((match.start(), end, label, values))
        position = end


def _loads_tolerant(text: str) -> Any:
    text = text.strip()
    if not text:
        raise ValueError("empty")
    try:
        return json.loads(text)
    except ValueError:
        pass
    repaired = re.sub(r",\s*([}\]])", r"\1", text)
    try:
        return json.loads(repaired)
    except ValueError:
        pass
    try:  # single quotes, True/False/None: a Python literal
        return ast.literal_eval(
            re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", re.sub(r"\bnull\b", "None", repaired)))
        )
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        pass
    # Cut off: close what is open and try once more.
    closers = []
    quote = ""
    escaped = False
    for char in repaired:
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = ""
        elif char == '"':
            quote = char
        elif char in "{[":
            closers.append("}" if char == "{" else "]")
        elif char in "}]" and closers:
            closers.pop()
    if closers:
        candidate = repaired + (quote or "") + "".join(reversed(closers))
        return json.loads(re.sub(r",\s*([}\]])", r"\1", candidate))
    raise ValueError("not JSON")


def _match_tool(name: Any, tools: Sequence[Tool]) -> Tool | None:
    if not isinstance(name, str):
        return None
    for tool in tools:
        if tool.name == name:
            return tool
    lowered = name.strip().lower().replace("-", "_")
    for tool in tools:
        if tool.name.lower().replace("-", "_") == lowered:
            return tool
    return None


def _as_call(value: Any, tools: Sequence[Tool], forced: Tool | None) -> ToolCall | None:
    if not isinstance(value, dict):
        return None
    name: Any = None
    arguments: Any = None
    for key in _NAME_KEYS:
        if key in value:
            name = value[key]
            break
    if isinstance(name, dict):  # {"function": {"name": ..., "arguments": ...}}
        return _as_call(name, tools, forced)
    for key in _ARGUMENT_KEYS:
        if key in value:
            arguments = value[key]
            break
    tool = _match_tool(name, tools)
    if tool is None:
        if forced is None or arguments is not None:
            return None
        tool, arguments = forced, value  # the forced tool's arguments, written bare
    if isinstance(arguments, str):
        try:
            arguments = _loads_tolerant(arguments)
        except ValueError:
            return None
    if arguments is None:
        arguments = {key: item for key, item in value.items() if key not in _NAME_KEYS}
    if not isinstance(arguments, dict):
        return None
    return ToolCall(id=f"call_{secrets.token_hex(8)}", name=tool.name, arguments=json.dumps(arguments))


def _calls_in(value: Any, tools: Sequence[Tool], forced: Tool | None) -> list[ToolCall]:
    if isinstance(value, dict) and isinstance(value.get("tool_calls"), list):
        value = value["tool_calls"]
    items = value if isinstance(value, list) else [value]
    calls = [_as_call(item, tools, forced) for item in items]
    return [call for call in calls if call is not None]


def parse_tool_calls(
    text: str | None, tools: Sequence[Tool], *, tool_choice: str | None = None
) -> tuple[str | None, tuple[ToolCall, ...]]:
    """(the text without the call blocks or None, the tool calls) from a model's answer."""
    if not text or not tools or tool_choice == "none":
        return text, ()
    forced = _match_tool(tool_choice, tools) if tool_choice not in (None, "auto", "required") else None
    calls: list[ToolCall] = []
    spans: list[tuple[int, int]] = []
    for start, end, label, values in _blocks(text):
        found: list[ToolCall] = []
        for value in values:
            try:
                found += _calls_in(_loads_tolerant(value), tools, forced)
            except ValueError:
                continue
        if found or label in _CALL_LABELS:
            calls += found
            spans.append((start, end))
    if not calls:
        # No block: a bare JSON object naming a tool (or the forced tool's arguments alone).
        for start, end in _balanced_objects(text):
            try:
                found = _calls_in(_loads_tolerant(text[start:end]), tools, forced)
            except ValueError:
                continue
            if found:
                calls += found
                spans.append((start, end))
    if not calls:
        return text, ()
    remaining = text
    for start, end in sorted(spans, reverse=True):
        remaining = remaining[:start] + remaining[end:]
    remaining = remaining.strip()
    return (remaining or None), tuple(calls)


# -- calling through emulation ----------------------------------------------------------------------


def _read_back(response: ChatResponse, request: ChatRequest) -> ChatResponse:
    content, calls = parse_tool_calls(
        response.message.content, request.tools, tool_choice=request.tool_choice
    )
    if not calls:
        return response
    return replace(
        response,
        message=Message(role="assistant", content=content, tool_calls=calls),
        finish_reason="tool_calls",
    )


async def chat_with_emulated_tools(provider: Provider, request: ChatRequest) -> ChatResponse:
    response = await provider.chat(emulate_request(request))
    return _read_back(response, request) if request.tools else response


_CALL_START = re.compile(
    r"""^[\[{]\s*(\{\s*)?["']?(name|tool|tool_name|function|function_name|tool_calls)["']?\s*:"""
)
_CALL_TAGS = ("<tool_call>", "<function_call>", "<tool>")
_CALL_FENCE_LABELS = frozenset({"", FENCE_LABEL, "tool", "json", "function_call"})


def _may_be_call(held: str, forced: bool) -> bool | None:
    """Whether held text (starting at a fence, tag or bracket) may be a tool call:
    True (hold it to the end), False (show it), None (too early to say)."""
    if held.startswith("`"):
        if len(held) < 3:
            return None if held in ("`", "``") else False
        if not held.startswith("```"):
            return False  # inline code
        newline = held.find("\n")
        if newline < 0:
            return None if len(held) < 40 else False
        return held[3:newline].strip().lower() in _CALL_FENCE_LABELS
    if held.startswith("<"):
        lowered = held.lower()
        if any(lowered.startswith(tag) for tag in _CALL_TAGS):
            return True
        return None if any(tag.startswith(lowered) for tag in _CALL_TAGS) else False
    if forced or _CALL_START.match(held):
        return True
    rest = held[1:].lstrip()
    if held.startswith("["):  # a list of calls: [{"name": ...
        if not rest:
            return None
        if rest[0] != "{":
            return False
        rest = rest[1:].lstrip()
    if not rest:
        return None
    if rest[0] not in "\"'":  # not a JSON key: {city}, [1, 2]
        return False
    return None if len(held.strip()) < 24 and ":" not in held else False


class _CallSpotter:
    """Splits streamed text into what can be shown now and what may be a tool call."""

    def __init__(self, forced: bool) -> None:
        self.forced = forced
        self.held = ""
        self.in_code = False  # inside a fenced block that is not a call (e.g. ```python)
        self.call_started = False

    def feed(self, text: str) -> str:
        self.held += text
        shown: list[str] = []
        while self.held and not self.call_started:
            if self.in_code:
                end = self.held.find("```")
                if end < 0:  # keep two characters back: a fence may be split across pieces
                    cut = max(len(self.held) - 2, 0)
                    shown.append(self.held[:cut])
                    self.held = self.held[cut:]
                    break
                shown.append(self.held[: end + 3])
                self.held = self.held[end + 3 :]
                self.in_code = False
                continue
            start = min((i for i in (self.held.find(c) for c in "`<{[") if i >= 0), default=-1)
            if start < 0:
                shown.append(self.held)
                self.held = ""
                break
            shown.append(self.held[:start])
            self.held = self.held[start:]
            verdict = _may_be_call(self.held, self.forced)
            if verdict is None:
                break
            if verdict:
                self.call_started = True
                break
            if self.held.startswith("```"):
                shown.append("```")
                self.held = self.held[3:]
                self.in_code = True
            else:
                shown.append(self.held[0])
                self.held = self.held[1:]
        return "".join(shown)


async def stream_with_emulated_tools(provider: Provider, request: ChatRequest) -> AsyncIterator[StreamChunk]:
    """Text streams as it comes; from where a tool call may start (a ```tool_call or
    ```json fence, a <tool_call> tag, a JSON object that names a tool) it is held back
    and read as tool calls at the end. Other code blocks and braces stream through."""
    if not request.tools or request.tool_choice == "none":
        async for chunk in provider.stream(emulate_request(request)):
            yield chunk
        return
    forced = request.tool_choice not in (None, "auto", "required")
    spotter = _CallSpotter(forced)
    async for chunk in provider.stream(emulate_request(request)):
        if chunk.finish_reason is None:
            shown = spotter.feed(chunk.text)
            if shown:
                yield replace(chunk, text=shown)
            continue
        held = spotter.held + chunk.text
        content, calls = parse_tool_calls(held, request.tools, tool_choice=request.tool_choice)
        if calls:
            if content:
                yield StreamChunk(text=content, model=chunk.model)
            yield replace(chunk, text="", tool_calls=calls, finish_reason="tool_calls")
        else:
            yield replace(chunk, text=held)
        return
