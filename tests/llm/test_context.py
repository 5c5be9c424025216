"""Context-window management on a realistic agent conversation: a system prompt, the
task (pinned), then steps of tool calls with their (sometimes huge) outputs. What
must survive survives (system prompt, pinned messages, the newest turn, each tool
call with its result), the oldest steps go first, an oversized output keeps its
head and its tail, and condensation puts a summary where the dropped span was."""

import asyncio
import json
from collections.abc import Sequence

import pytest

from apps.llm.context import (
    SUMMARY_NAME,
    condense,
    estimating_counter,
    sliding_window,
    transcript,
    truncate_message,
)
from apps.llm.errors import ContextTooLong
from apps.llm.types import Message, ToolCall

count = estimating_counter("openai")

SYSTEM = Message(role="system", content="You are a careful software engineer. Use the bash tool to work.")
TASK = Message(role="user", content="Make tests/test_parser.py pass without changing the tests.", pinned=True)


def pytest_output(
    lines: int, failure: str = "FAILED tests/test_parser.py::test_nested - KeyError: 'b'"
) -> str:
    body = [
        f"tests/test_parser.py::test_case_{n} PASSED{' ' * 10}[{n * 100 // lines:3d}%]" for n in range(lines)
    ]
    return "\n".join(["============ test session starts ============", *body, failure, "1 failed in 0.42s"])


def step(number: int, command: str, output: str) -> list[Message]:
    call = ToolCall(id=f"call_{number}", name="bash", arguments=json.dumps({"command": command}))
    return [
        Message(role="assistant", content=f"Step {number}: I will run {command}.", tool_calls=(call,)),
        Message(role="tool", content=output, tool_call_id=call.id, name="bash"),
    ]


def agent_conversation(steps: int = 30) -> list[Message]:
    messages = [SYSTEM, TASK]
    for number in range(1, steps + 1):
        messages += step(number, f"sed -n {number},+40p src/parser.py", f"line {number}\n" * 60)
    messages.append(Message(role="user", content="What is left to do?"))
    return messages


def assert_tool_pairs_intact(messages: Sequence[Message]) -> None:
    """Every tool result follows the call it answers, and every call has its result."""
    open_calls: set[str] = set()
    for message in messages:
        if message.role == "tool":
            assert message.tool_call_id in open_calls, f"orphan tool result {message.tool_call_id}"
            open_calls.discard(message.tool_call_id)
        else:
            assert not open_calls, f"calls without results: {open_calls}"
            open_calls = {call.id for call in message.tool_calls}
    assert not open_calls


def step_numbers(messages: Sequence[Message]) -> list[int]:
    return [int(call.id.removeprefix("call_")) for message in messages for call in message.tool_calls]


def test_an_oversized_output_keeps_its_head_and_its_failing_tail() -> None:
    output = pytest_output(3000)
    message = Message(role="tool", content=output, tool_call_id="call_1", name="bash")
    assert count([message]) > 20_000

    cut = truncate_message(message, max_tokens=400, count_tokens=count)
    assert count([cut]) <= 400
    text = cut.content or ""
    assert text.startswith(
        "============ test session starts ============\ntests/test_parser.py::test_case_0 PASSED"
    )
    assert text.endswith("FAILED tests/test_parser.py::test_nested - KeyError: 'b'\n1 failed in 0.42s")
    omitted = len(output) - len(text.split("\n[... ")[0]) - len(text.split(" characters truncated ...]\n")[1])
    assert f"\n[... {omitted:,} characters truncated ...]\n" in text
    # Cut at line ends: every kept line is whole.
    kept_lines = [line for line in text.splitlines() if line.startswith("tests/")]
    assert all(line.endswith("%]") for line in kept_lines)
    assert (cut.role, cut.tool_call_id, cut.name) == ("tool", "call_1", "bash")

    short = Message(role="user", content="fine as it is")
    assert truncate_message(short, max_tokens=400, count_tokens=count) is short


def test_the_window_keeps_system_task_and_newest_steps_and_drops_whole_steps() -> None:
    conversation = agent_conversation(30)
    assert count(conversation) > 6000

    window = sliding_window(conversation, max_tokens=2500, count_tokens=count)
    kept = window.messages
    assert window.tokens == count(kept) <= 2500
    assert kept[0] == SYSTEM
    assert kept[1] == TASK
    assert kept[-1] == conversation[-1]
    assert_tool_pairs_intact(kept)
    numbers = step_numbers(kept)
    assert numbers == list(range(numbers[0], 31)), "the newest steps, in order"
    assert numbers[0] > 1
    assert step_numbers(window.dropped) == list(range(1, numbers[0]))
    assert len(window.dropped) == 2 * (numbers[0] - 1)
    # It kept as much as fits: one more step would not.
    previous = conversation[2 * numbers[0] - 2 : 2 * numbers[0]]
    assert count([*kept[:2], *previous, *kept[2:]]) > 2500


def test_a_pinned_message_in_the_middle_stays_where_it_was() -> None:
    conversation = agent_conversation(20)
    decision = Message(role="user", content="Decision: keep the public API unchanged.", pinned=True)
    conversation.insert(12, decision)  # after step 5
    window = sliding_window(conversation, max_tokens=1500, count_tokens=count)
    kept = list(window.messages)
    assert decision in kept
    assert kept.index(decision) == 2, "the steps before it were dropped; it comes right after the task"
    assert step_numbers(kept[3:])[0] > 5
    assert_tool_pairs_intact(kept)


def test_a_huge_newest_output_is_cut_instead_of_failing() -> None:
    conversation = [SYSTEM, TASK, *step(1, "pytest", pytest_output(5000))]
    window = sliding_window(conversation, max_tokens=1200, count_tokens=count)
    assert window.truncated == 1
    assert window.tokens <= 1200
    assert [message.role for message in window.messages] == ["system", "user", "assistant", "tool"]
    assert (window.messages[-1].content or "").endswith("1 failed in 0.42s")


def test_what_must_stay_but_cannot_fit_is_a_400_naming_the_window() -> None:
    huge_system = Message(role="system", content="Rule. " * 3000)
    with pytest.raises(ContextTooLong) as caught:
        sliding_window(
            [huge_system, TASK, Message(role="user", content="hi")], max_tokens=500, count_tokens=count
        )
    assert caught.value.status == 400
    assert caught.value.code == "context_window_exceeded"
    assert "the window allows 500." in caught.value.message


def commands_summary(calls: list[list[Message]]):
    """A summarizer that lists what was run (what a model's summary would keep)."""

    async def summarize(span: list[Message]) -> str:
        calls.append(span)
        earlier = [m.content or "" for m in span if m.name == SUMMARY_NAME]
        commands = [json.loads(c.arguments)["command"] for m in span for c in m.tool_calls]
        kept = " ".join(text.split(":", 1)[1].strip() for text in earlier)
        return (kept + " Ran: " + "; ".join(commands)).strip()

    return summarize


def test_condensation_summarizes_the_dropped_steps_in_their_place() -> None:
    conversation = agent_conversation(30)
    calls: list[list[Message]] = []
    result = asyncio.run(
        condense(conversation, max_tokens=3000, count_tokens=count, summarize=commands_summary(calls))
    )
    assert len(calls) == 1
    dropped_numbers = step_numbers(calls[0])
    assert dropped_numbers == list(range(1, dropped_numbers[-1] + 1))
    assert result.dropped == tuple(calls[0])

    kept = result.messages
    assert kept[:2] == (SYSTEM, TASK)
    summary = kept[2]
    assert summary == result.summary
    assert (summary.role, summary.pinned, summary.name) == ("user", True, SUMMARY_NAME)
    assert "Ran: sed -n 1,+40p src/parser.py; sed -n 2,+40p src/parser.py" in (summary.content or "")
    assert step_numbers(kept[3:]) == list(range(dropped_numbers[-1] + 1, 31))
    assert kept[-1] == conversation[-1]
    assert_tool_pairs_intact(kept)
    assert result.tokens <= 3000
    # Condensed well below the budget, so the next turns do not condense again at once.
    assert result.tokens <= 0.6 * 3000 + 50

    unchanged = asyncio.run(
        condense(kept, max_tokens=3000, count_tokens=count, summarize=commands_summary(calls))
    )
    assert unchanged.messages == kept
    assert len(calls) == 1


def test_a_second_condensation_folds_the_earlier_summary_into_one() -> None:
    calls: list[list[Message]] = []
    summarize = commands_summary(calls)
    first = asyncio.run(
        condense(agent_conversation(30), max_tokens=3000, count_tokens=count, summarize=summarize)
    )
    grown = list(first.messages)
    for number in range(31, 61):
        grown[-1:-1] = step(number, f"grep -n def src/module_{number}.py", f"{number}: def f():\n" * 60)
    second = asyncio.run(condense(grown, max_tokens=3000, count_tokens=count, summarize=summarize))

    assert calls[1][0] == first.summary, "the earlier summary is summarized again, first"
    summaries = [m for m in second.messages if m.name == SUMMARY_NAME]
    assert summaries == [second.summary]
    text = second.summary.content or "" if second.summary else ""
    assert "sed -n 1,+40p src/parser.py" in text  # from the first summary
    assert "grep -n def src/module_31.py" in text  # from the newly dropped steps
    assert second.messages[:3] == (SYSTEM, TASK, second.summary)
    assert second.tokens <= 3000
    assert_tool_pairs_intact(second.messages)


def test_a_failing_summarizer_still_leaves_a_conversation_that_fits() -> None:
    async def broken(span: list[Message]) -> str:
        raise ConnectionError("the summarizing model is down")

    result = asyncio.run(
        condense(agent_conversation(30), max_tokens=2500, count_tokens=count, summarize=broken)
    )
    assert result.summary is None
    assert result.summary_error == "ConnectionError: the summarizing model is down"
    assert result.tokens <= 2500
    assert result.messages[:2] == (SYSTEM, TASK)
    assert not any(m.name == SUMMARY_NAME for m in result.messages)
    assert_tool_pairs_intact(result.messages)


def test_the_transcript_a_summarizer_reads_shows_calls_and_results() -> None:
    text = transcript(step(7, "ls src", "parser.py\nlexer.py"))
    assert text == (
        '[assistant]\nStep 7: I will run ls src.\n\n[assistant calls bash] {"command": "ls src"}'
        "\n\n[tool result bash]\nparser.py\nlexer.py"
    )


def test_a_request_is_fitted_leaving_room_for_the_answer_and_the_tools() -> None:
    from apps.llm.context import fit_request
    from apps.llm.types import ChatRequest, Tool

    bash = Tool(
        name="bash",
        description="Run a shell command in the workspace",
        parameters={"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
    )
    request = ChatRequest(
        model="gpt-4o-mini",
        messages=tuple(agent_conversation(30)),
        tools=(bash,),
        max_tokens=500,
        temperature=0,
    )
    fitted, window = asyncio.run(fit_request(request, context_window=3000, count_tokens=count))
    assert fitted.messages == window.messages
    assert (fitted.tools, fitted.max_tokens, fitted.temperature, fitted.model) == (
        (bash,),
        500,
        0,
        "gpt-4o-mini",
    )
    assert count(fitted.messages) <= 3000 - 500 - 30  # the tool definition takes a few dozen tokens
    assert_tool_pairs_intact(fitted.messages)

    with pytest.raises(ContextTooLong) as caught:
        asyncio.run(fit_request(request, context_window=400, count_tokens=count))
    assert "leave no room for the conversation in a window of 400" in caught.value.message


def test_with_nothing_old_enough_to_summarize_the_newest_turn_is_cut_instead() -> None:
    calls: list[list[Message]] = []
    conversation = [SYSTEM, TASK, *step(1, "pytest", pytest_output(4000))]
    result = asyncio.run(
        condense(conversation, max_tokens=1500, count_tokens=count, summarize=commands_summary(calls))
    )
    assert calls == []
    assert result.summary is None
    assert result.truncated == 1
    assert result.tokens <= 1500
    assert (result.messages[-1].content or "").endswith("1 failed in 0.42s")
