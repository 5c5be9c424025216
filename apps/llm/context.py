"""Context-window management on conversations (tuples of apps.llm.types.Message).

Three tools, each usable alone:

- `truncate_message`: one oversized message cut to a token budget, keeping its head
  and its tail (a command's output ends with the error that matters) around a
  marker that says how much was left out.
- `sliding_window`: the conversation cut to a budget by dropping the oldest messages
  first. System messages and pinned messages always stay, the newest turn always
  stays, and an assistant message that calls tools is dropped together with the
  tool results that answer it (a provider refuses one without the other).
- `condense`: like the window, but what is dropped is summarized (by a callable:
  `gateway_summarizer` asks a model through the gateway itself) and the summary
  goes in as a pinned message where the dropped span was. It condenses down to a
  fraction of the budget (`target_fraction`), so a growing conversation is not
  summarized again on every turn; an earlier summary is folded into the next one.

Token counts come from a callable too (`counter_for(provider, model)` wraps a
provider's count_tokens; `estimating_counter(kind)` the gateway's estimates), so
the budget is in the tokens of the model that will read the conversation."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from apps.llm.errors import ContextTooLong
from apps.llm.types import CallContext, ChatRequest, Message

if TYPE_CHECKING:
    from apps.llm.providers.base import Provider

logger = logging.getLogger(__name__)

TokenCounter = Callable[[Sequence[Message]], int]
Summarizer = Callable[[list[Message]], Awaitable[str]]

SUMMARY_NAME: Final = "context_summary"
SUMMARY_HEADING: Final = "Summary of the earlier conversation (older messages were condensed):"
MIN_TRUNCATED_TOKENS: Final = 32


def counter_for(provider: Provider, model: str) -> TokenCounter:
    """A provider's own count (exact where it has a tokenizer, e.g. the local model)."""

    def count(messages: Sequence[Message]) -> int:
        return provider.count_tokens(model, tuple(messages))

    return count


def estimating_counter(provider_kind: str = "openai") -> TokenCounter:
    """The gateway's tokenizer-free estimate for a provider kind's tokenizer family."""
    from apps.llm.tokens import PROVIDER_FAMILIES, estimate_message_tokens

    family = PROVIDER_FAMILIES.get(provider_kind, "openai")

    def count(messages: Sequence[Message]) -> int:
        return estimate_message_tokens(messages, family)

    return count


def _with_content(message: Message, content: str) -> Message:
    return Message(
        role=message.role,
        content=content,
        tool_calls=message.tool_calls,
        tool_call_id=message.tool_call_id,
        name=message.name,
        pinned=message.pinned,
        images=message.images,
    )


def _marker(omitted_characters: int) -> str:
    return f"\n[... {omitted_characters:,} characters truncated ...]\n"


def _cut(text: str, keep: int, head_fraction: float) -> str:
    """`keep` characters of `text`: its head and its tail, cut at line ends where one is near."""
    head_size = int(keep * head_fraction)
    tail_size = keep - head_size
    head = text[:head_size]
    newline = head.rfind("\n")
    if newline >= head_size * 0.8:
        head = head[: newline + 1]
    tail = text[len(text) - tail_size :] if tail_size else ""
    newline = tail.find("\n")
    if 0 <= newline <= tail_size * 0.2:
        tail = tail[newline + 1 :]
    return head + _marker(len(text) - len(head) - len(tail)) + tail


def truncate_message(
    message: Message, *, max_tokens: int, count_tokens: TokenCounter, head_fraction: float = 0.5
) -> Message:
    """`message` cut to at most `max_tokens` (as `count_tokens` counts it alone), keeping
    the head and tail of its text around a marker. Unchanged if it already fits; only
    the text is cut (tool calls' arguments are kept whole)."""
    text = message.content or ""
    if count_tokens([message]) <= max_tokens or not text:
        return message
    # The most characters that fit, by bisection on the real count (counts are monotonic enough).
    low, high = 0, len(text)
    best = _with_content(message, _cut(text, 0, head_fraction))
    while low <= high:
        middle = (low + high) // 2
        candidate = _with_content(message, _cut(text, middle, head_fraction))
        if count_tokens([candidate]) <= max_tokens:
            best, low = candidate, middle + 1
        else:
            high = middle - 1
    return best


@dataclass(frozen=True)
class Window:
    messages: tuple[Message, ...]
    dropped: tuple[Message, ...] = ()  # in their original order
    truncated: int = 0  # how many of the kept messages were cut
    tokens: int = 0  # the kept messages' count
    summary: Message | None = None  # condense: the summary put in the dropped span's place
    summary_error: str = ""  # condense: why no summary was made (the span was dropped anyway)


def _units(messages: Sequence[Message]) -> list[list[int]]:
    """Indexes grouped into what is kept or dropped together: an assistant message that
    calls tools with the tool results that follow it; any other message alone."""
    units: list[list[int]] = []
    index = 0
    while index < len(messages):
        message = messages[index]
        unit = [index]
        index += 1
        if message.role == "assistant" and message.tool_calls:
            call_ids = {call.id for call in message.tool_calls}
            while index < len(messages) and messages[index].role == "tool":
                answered = messages[index].tool_call_id
                if answered is not None and answered not in call_ids:
                    break
                unit.append(index)
                index += 1
        units.append(unit)
    return units


def _protected(messages: Sequence[Message], unit: list[int]) -> bool:
    return any(messages[index].role == "system" or messages[index].pinned for index in unit)


class _Budget:
    """Per-message counts, so dropping is a subtraction; the real count of the whole
    list is checked at the end (a counter need not be exactly additive)."""

    def __init__(self, count_tokens: TokenCounter) -> None:
        self.count_tokens = count_tokens
        self.base = count_tokens([])

    def cost(self, message: Message) -> int:
        return max(0, self.count_tokens([message]) - self.base)


def _fit(
    messages: list[Message],
    *,
    max_tokens: int,
    count_tokens: TokenCounter,
    max_message_tokens: int | None,
    drop_limit_tokens: int | None = None,
) -> tuple[Window, list[int]]:
    """Drop the oldest droppable units until the estimate is within `drop_limit_tokens`
    (default: `max_tokens`), then truncate kept messages until the real count fits."""
    budget = _Budget(count_tokens)
    truncated: set[int] = set()
    if max_message_tokens is not None:
        for index, message in enumerate(messages):
            if message.role != "system" and not message.pinned and budget.cost(message) > max_message_tokens:
                messages[index] = truncate_message(
                    message, max_tokens=max_message_tokens + budget.base, count_tokens=count_tokens
                )
                truncated.add(index)
    costs = [budget.cost(message) for message in messages]
    total = budget.base + sum(costs)
    limit = max_tokens if drop_limit_tokens is None else drop_limit_tokens
    units = _units(messages)
    droppable = [unit for unit in units[:-1] if not _protected(messages, unit)]
    dropped: set[int] = set()
    for unit in droppable:
        if total <= limit:
            break
        dropped.update(unit)
        total -= sum(costs[index] for index in unit)

    kept = [index for index in range(len(messages)) if index not in dropped]

    def real_total() -> int:
        return count_tokens([messages[index] for index in kept])

    actual = real_total()
    remaining = [unit for unit in droppable if not dropped.intersection(unit)]
    while actual > max_tokens and remaining:  # the estimate was low: drop more
        unit = remaining.pop(0)
        dropped.update(unit)
        kept = [index for index in kept if index not in unit]
        actual = real_total()
    # Still over: cut the largest kept messages, unpinned before pinned, never the system prompt.
    order = sorted(
        (index for index in kept if messages[index].role != "system" and messages[index].content),
        key=lambda index: (messages[index].pinned, -costs[index]),
    )
    for index in order:
        if actual <= max_tokens:
            break
        excess = actual - max_tokens
        target = max(MIN_TRUNCATED_TOKENS, budget.cost(messages[index]) - excess)
        cut = truncate_message(messages[index], max_tokens=target + budget.base, count_tokens=count_tokens)
        if cut is not messages[index]:
            messages[index] = cut
            truncated.add(index)
            actual = real_total()
    if actual > max_tokens:
        raise ContextTooLong(
            f"The conversation needs {actual:,} tokens even after dropping and cutting what may go"
            f" (the system prompt, pinned messages and the newest turn stay); the window allows"
            f" {max_tokens:,}."
        )
    window = Window(
        messages=tuple(messages[index] for index in kept),
        dropped=tuple(messages[index] for index in sorted(dropped)),
        truncated=len(truncated & set(kept)),
        tokens=actual,
    )
    return window, kept


def sliding_window(
    messages: Sequence[Message],
    *,
    max_tokens: int,
    count_tokens: TokenCounter,
    max_message_tokens: int | None = None,
) -> Window:
    """The newest messages that fit in `max_tokens`, with every system and pinned message.

    A non-pinned message over `max_message_tokens` (default: half the budget) is cut
    first. Raises ContextTooLong (400) when even what must stay does not fit."""
    if max_tokens <= 0:
        raise ContextTooLong("The context window leaves no room for the conversation.")
    limit = max_message_tokens if max_message_tokens is not None else max_tokens // 2
    window, _ = _fit(
        list(messages), max_tokens=max_tokens, count_tokens=count_tokens, max_message_tokens=limit
    )
    return window


def _is_summary(message: Message) -> bool:
    return message.pinned and message.name == SUMMARY_NAME


def summary_message(text: str) -> Message:
    return Message(role="user", content=f"{SUMMARY_HEADING}\n{text.strip()}", name=SUMMARY_NAME, pinned=True)


async def condense(
    messages: Sequence[Message],
    *,
    max_tokens: int,
    count_tokens: TokenCounter,
    summarize: Summarizer,
    target_fraction: float = 0.6,
    summary_max_tokens: int | None = None,
    max_message_tokens: int | None = None,
) -> Window:
    """Fit `messages` in `max_tokens`, summarizing what has to go.

    Nothing changes while the conversation fits. Otherwise the oldest droppable
    messages (and any earlier summary) are dropped until the rest uses at most
    `target_fraction` of the budget less room for the summary; `summarize` gets the
    dropped messages in order and its text comes back as a pinned user message
    (name "context_summary") where the dropped span began. If `summarize` fails, the
    span is dropped without a summary and `summary_error` says why."""
    if max_tokens <= 0:
        raise ContextTooLong("The context window leaves no room for the conversation.")
    if count_tokens(messages) <= max_tokens:
        return Window(messages=tuple(messages), tokens=count_tokens(messages))
    summary_room = summary_max_tokens if summary_max_tokens is not None else min(1024, max_tokens // 5)
    per_message = max_message_tokens if max_message_tokens is not None else max_tokens // 2
    # An earlier summary is not kept as such: it is summarized again with the newly dropped span.
    earlier = [message for message in messages if _is_summary(message)]
    positions = [index for index, message in enumerate(messages) if not _is_summary(message)]
    rest = [messages[index] for index in positions]
    keep_budget = max(1, int(max_tokens * target_fraction) - summary_room)
    try:
        window, kept_positions = _fit(
            rest,
            max_tokens=max_tokens - summary_room,
            count_tokens=count_tokens,
            max_message_tokens=per_message,
            drop_limit_tokens=keep_budget,
        )
    except ContextTooLong:
        window = Window(messages=())  # no room for a summary: the plain window's answer below
    if not window.dropped:
        # Nothing old enough to summarize (or no room for a summary): cut what is there instead.
        return sliding_window(
            messages, max_tokens=max_tokens, count_tokens=count_tokens, max_message_tokens=per_message
        )
    span = earlier + list(window.dropped)
    try:
        text = (await summarize(span)).strip()
        if not text:
            raise ValueError("the summarizer answered with no text")
    except Exception as exc:  # a failed summary must not stop the conversation
        logger.warning("Context condensation could not summarize %d messages: %s", len(span), exc)
        final, _ = _fit(
            list(window.messages), max_tokens=max_tokens, count_tokens=count_tokens, max_message_tokens=None
        )
        return Window(
            messages=final.messages,
            dropped=tuple(span),
            truncated=window.truncated + final.truncated,
            tokens=final.tokens,
            summary_error=f"{type(exc).__name__}: {exc}",
        )
    summary = truncate_message(
        summary_message(text),
        max_tokens=summary_room + count_tokens([]),
        count_tokens=count_tokens,
        head_fraction=1.0,
    )
    # Where the span began: after the kept messages that came before it.
    kept_original = [positions[index] for index in kept_positions]
    span_start = min(index for index in range(len(messages)) if index not in set(kept_original))
    kept = list(window.messages)
    position = sum(1 for index in kept_original if index < span_start)
    kept.insert(position, summary)
    final, _ = _fit(kept, max_tokens=max_tokens, count_tokens=count_tokens, max_message_tokens=None)
    return Window(
        messages=final.messages,
        dropped=tuple(span),
        truncated=window.truncated + final.truncated,
        tokens=final.tokens,
        summary=summary,
    )


def transcript(messages: Sequence[Message]) -> str:
    """The messages as plain text for a model to summarize."""
    lines = []
    for message in messages:
        if _is_summary(message):
            lines.append(
                f"[earlier summary]\n{(message.content or '').removeprefix(SUMMARY_HEADING).strip()}"
            )
            continue
        if message.role == "tool":
            lines.append(
                f"[tool result{' ' + message.name if message.name else ''}]\n{message.content or ''}"
            )
            continue
        if message.content:
            lines.append(f"[{message.role}]\n{message.content}")
        for call in message.tool_calls:
            lines.append(f"[{message.role} calls {call.name}] {call.arguments}")
    return "\n\n".join(lines)


def default_summary_instructions(max_words: int = 200) -> str:
    """The platform's condensation prompt (apps/prompts/defaults/context.summarize.j2)."""
    from apps.prompts.file_defaults import default_get
    from apps.prompts.rendering import render_body

    default = default_get("context.summarize")
    if default is None:  # pragma: no cover (shipped with the code)
        raise RuntimeError("the context.summarize prompt default is missing")
    return render_body(
        default.body, default.variables, {"max_words": max_words}, template="context.summarize"
    )


def gateway_summarizer(
    *,
    model: str,
    context: CallContext,
    instructions: str | None = None,
    max_words: int = 200,
    max_output_tokens: int = 400,
    input_tokens: int = 6000,
    count_tokens: TokenCounter | None = None,
) -> Summarizer:
    """A summarizer that asks `model` through the gateway (metered, budgeted and routed
    like any call of the organization in `context`). A span longer than `input_tokens`
    is summarized piece by piece, each piece with the summary so far."""
    system = instructions if instructions is not None else default_summary_instructions(max_words)
    counter = count_tokens or estimating_counter()

    def pieces(span: list[Message]) -> list[list[Message]]:
        result: list[list[Message]] = [[]]
        used = 0
        for message in span:
            message = truncate_message(message, max_tokens=input_tokens // 2, count_tokens=counter)
            cost = counter([message])
            if result[-1] and used + cost > input_tokens:
                result.append([])
                used = 0
            result[-1].append(message)
            used += cost
        return result

    async def summarize(span: list[Message]) -> str:
        from apps.llm.gateway import gateway

        running = ""
        for piece in pieces(span):
            prompt = (f"Summary so far:\n{running}\n\n" if running else "") + (
                f"Conversation to condense:\n\n{transcript(piece)}"
            )
            response = await gateway().chat(
                ChatRequest(
                    model=model,
                    messages=(Message(role="system", content=system), Message(role="user", content=prompt)),
                    max_tokens=max_output_tokens,
                    temperature=0.0,
                ),
                context=context,
            )
            running = (response.message.content or "").strip() or running
        return running

    return summarize


async def fit_request(
    request: ChatRequest,
    *,
    context_window: int,
    count_tokens: TokenCounter,
    summarize: Summarizer | None = None,
    reserve_output_tokens: int = 1024,
    tools_tokens: int | None = None,
) -> tuple[ChatRequest, Window]:
    """`request` with its messages fitted to a model's `context_window`, leaving room
    for the answer (`max_tokens`, else `reserve_output_tokens`) and the tool
    definitions; condensed when `summarize` is given, else windowed."""
    from dataclasses import replace

    from apps.llm.tokens import estimate_tool_tokens

    output = request.max_tokens if request.max_tokens is not None else reserve_output_tokens
    tools = tools_tokens if tools_tokens is not None else estimate_tool_tokens(request.tools)
    budget = context_window - output - tools
    if budget <= 0:
        raise ContextTooLong(
            f"The answer ({output:,} tokens) and the tools ({tools:,}) leave no room for the conversation"
            f" in a window of {context_window:,}."
        )
    if summarize is not None:
        window = await condense(
            request.messages, max_tokens=budget, count_tokens=count_tokens, summarize=summarize
        )
    else:
        window = sliding_window(request.messages, max_tokens=budget, count_tokens=count_tokens)
    return replace(request, messages=window.messages), window
