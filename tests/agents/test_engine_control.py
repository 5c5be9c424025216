"""Steering and limits of a run driven by the real worker in a real sandbox: budgets,
cancel within one step, pause and resume, a stuck loop, confirmation mode (approve and
deny), an answer that is no tool call fed back to the model, and cancelling a run that
has finished (409)."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest
from django_tenants.utils import schema_context

from apps.agents import services
from apps.agents.models import AgentRun, Event
from apps.agents.tools.shell import STATE_ROOT
from apps.core.errors import Conflict
from apps.workspaces.services import workspace_exec
from tests.agents.engine import (
    as_alice,
    bash,
    events,
    fetch,
    finish,
    profile,
    start,
    wait_state,
)
from tests.conftest import World, wait_for
from tests.fakes.llm_fake import Reply

State = AgentRun.State
# A step whose result differs every time (never a stuck loop).
WORKING = bash("date +%s%N", delay=0.3)


def _control(world: World, action: str, run: AgentRun, **kwargs: object) -> AgentRun:
    with schema_context(world.alpha.schema_name):
        function = getattr(services, f"run_{action}")
        changed: AgentRun = function(
            actor=as_alice(world), organization=world.alpha, run=fetch(world, run), **kwargs
        )
        return changed


def _steps(world: World, run: AgentRun) -> int:
    return fetch(world, run).steps


def test_an_answer_that_is_no_tool_call_is_fed_back_and_the_run_goes_on(live_db, llm, sample_workspace):
    llm.script(Reply(text="The answer is 42."), finish("42"))
    run = wait_state(live_db, start(live_db, sample_workspace, "What is six times seven?"))

    assert run.state == State.SUCCEEDED, run.state_reason
    observation = events(live_db, run, Event.Kind.OBSERVATION)[0].payload
    assert observation["error"] is True
    assert "not a tool call" in observation["output"]
    # The model read its own answer and the error before its next step.
    second = llm.chat_requests[1].json["messages"]
    assert second[-2] == {"role": "assistant", "content": "The answer is 42."}
    assert "not a tool call" in second[-1]["content"]


def test_a_call_of_an_unknown_tool_or_with_bad_arguments_is_an_error_the_model_reads(
    live_db, llm, sample_workspace
):
    llm.script(
        Reply.tool("launch_rockets", {"count": 3}),
        Reply.tool("bash", {"cmd": "ls"}),
        Reply.tool("bash", "{not json"),
        finish(),
    )
    run = wait_state(live_db, start(live_db, sample_workspace, "Look around."))

    assert run.state == State.SUCCEEDED, run.state_reason
    outputs = [event.payload["output"] for event in events(live_db, run, Event.Kind.OBSERVATION)]
    assert "There is no tool named 'launch_rockets'" in outputs[0]
    assert "Invalid arguments for bash" in outputs[1]
    assert "not a JSON object" in outputs[2]
    assert run.steps == 4


def test_the_step_budget_ends_the_run_failed_saying_so(live_db, llm, sample_workspace):
    llm.default = Reply.tool("think", {"thought": "Still thinking."})
    limited = profile(live_db, max_steps=2)
    run = wait_state(live_db, start(live_db, sample_workspace, "Think forever.", limited))

    assert run.state == State.FAILED
    assert run.state_reason == "Budget: the run used all 2 steps it may take without finishing."
    assert run.steps == 2
    assert len(llm.chat_requests) == 2


def test_the_cost_budget_ends_the_run_once_it_is_spent(live_db, llm, sample_workspace):
    # 100,000 prompt tokens of gpt-4o-mini cost $0.015, over a $0.01 budget.
    llm.default = Reply.tool("think", {"thought": "Expensive."}, usage=(100_000, 10, 0))
    limited = profile(live_db, max_cost="0.01")
    run = wait_state(live_db, start(live_db, sample_workspace, "Spend.", limited))

    assert run.state == State.FAILED
    assert run.state_reason.startswith("Budget: the run spent $0.0150")
    assert run.cost > Decimal("0.01")
    assert run.steps == 1


def test_the_same_action_with_the_same_result_three_times_is_a_stuck_run(live_db, llm, sample_workspace):
    llm.default = bash("echo same")
    run = wait_state(live_db, start(live_db, sample_workspace, "Loop."))

    assert run.state == State.FAILED
    assert run.state_reason.startswith("Stuck: the agent repeated the same action (bash) 3 times")
    assert run.steps == 3
    assert events(live_db, run, Event.Kind.ERROR)[-1].payload["code"] == "stuck"


def test_cancel_takes_effect_within_one_step(live_db, llm, sample_workspace):
    llm.default = bash("date +%s%N", delay=0.5)
    run = start(live_db, sample_workspace, "Work until stopped.")
    wait_for(lambda: _steps(live_db, run) >= 2, timeout=30)

    cancelled = _control(live_db, "cancel", run)
    steps_at_cancel = cancelled.steps
    assert cancelled.control == AgentRun.Control.CANCEL

    run = wait_state(live_db, run, State.CANCELLED, timeout=30)
    assert run.state_reason == "Cancelled at a member's request"
    assert run.steps <= steps_at_cancel + 1


def test_pause_parks_the_run_and_resume_continues_it(live_db, llm, sample_workspace):
    llm.default = WORKING
    run = start(live_db, sample_workspace, "Work until stopped.")
    wait_for(lambda: _steps(live_db, run) >= 1, timeout=30)

    _control(live_db, "pause", run)
    paused = wait_state(live_db, run, State.PAUSED, timeout=30)
    time.sleep(2)  # a parked run takes no step
    assert _steps(live_db, run) == paused.steps
    with pytest.raises(Conflict):
        _control(live_db, "pause", run)

    _control(live_db, "resume", run)
    wait_for(lambda: _steps(live_db, run) >= paused.steps + 2, timeout=30)
    _control(live_db, "cancel", run)
    run = wait_state(live_db, run, timeout=30)

    states = [event.payload["state"] for event in events(live_db, run, Event.Kind.STATE)]
    assert states == ["queued", "running", "paused", "queued", "running", "cancelled"]
    history = events(live_db, run)
    assert [event.seq for event in history] == list(range(1, len(history) + 1))


def _exists(world: World, workspace, path: str) -> bool:
    with schema_context(world.alpha.schema_name):
        outcome = workspace_exec(actor=as_alice(world), workspace=workspace, command=f"test -e {path}")
    return outcome.exit_code == 0


def test_confirmation_mode_waits_for_approval_then_runs_the_action(live_db, llm, sample_workspace):
    llm.script(bash("rm -rf /workspace/sample/.git"), finish())
    careful = profile(live_db, confirmation=True)
    run = wait_state(live_db, start(live_db, sample_workspace, "Clean up.", careful), State.WAITING)

    assert "rm -rf" in run.state_reason or "delete" in run.state_reason.lower()
    action = events(live_db, run, Event.Kind.ACTION)[-1].payload
    assert action["risk"]
    assert not events(live_db, run, Event.Kind.OBSERVATION)
    assert _exists(live_db, sample_workspace, "sample/.git")

    _control(live_db, "decide", run, approve=True)
    run = wait_state(live_db, run)

    assert run.state == State.SUCCEEDED, run.state_reason
    assert not _exists(live_db, sample_workspace, "sample/.git")
    observation = events(live_db, run, Event.Kind.OBSERVATION)[0].payload
    assert observation["tool"] == "bash"
    assert observation["error"] is False


def test_a_denied_action_is_not_run_and_the_model_reads_why(live_db, llm, sample_workspace):
    llm.script(bash("rm -rf /workspace/sample/.git"), finish("Left it."))
    careful = profile(live_db, confirmation=True)
    run = wait_state(live_db, start(live_db, sample_workspace, "Clean up.", careful), State.WAITING)

    _control(live_db, "decide", run, approve=False, note="keep the history")
    run = wait_state(live_db, run)

    assert run.state == State.SUCCEEDED, run.state_reason
    assert _exists(live_db, sample_workspace, "sample/.git")
    observation = events(live_db, run, Event.Kind.OBSERVATION)[0].payload
    assert observation["data"] == {"denied": True}
    assert "denied this action" in observation["output"]
    assert "keep the history" in llm.chat_requests[-1].json["messages"][-1]["content"]


def test_cancelling_or_deciding_a_finished_run_is_a_conflict(live_db, llm, sample_workspace):
    llm.script(finish())
    run = wait_state(live_db, start(live_db, sample_workspace, "Nothing to do."))
    assert run.state == State.SUCCEEDED

    with pytest.raises(Conflict, match="already succeeded") as cancelled:
        _control(live_db, "cancel", run)
    assert cancelled.value.status == 409
    with pytest.raises(Conflict, match="no action is waiting"):
        _control(live_db, "decide", run, approve=True)
    with pytest.raises(Conflict, match="not paused"):
        _control(live_db, "resume", run)
    assert fetch(live_db, run).state == State.SUCCEEDED


def test_a_tool_call_runs_with_what_earlier_steps_left_in_the_shell(live_db, llm, sample_workspace):
    llm.script(bash("cd /workspace/sample && export GREETING=hello"), bash("pwd; echo $GREETING"), finish())
    run = wait_state(live_db, start(live_db, sample_workspace, "Check the shell keeps state."))

    assert run.state == State.SUCCEEDED, run.state_reason
    second = events(live_db, run, Event.Kind.OBSERVATION)[1].payload["output"]
    assert "/workspace/sample\nhello" in second
    # Once the run is over its shell state leaves the sandbox (it would hold memory until the
    # workspace stops).
    wait_for(lambda: not _exists(live_db, sample_workspace, f"{STATE_ROOT}/{run.pk}"), timeout=30)


def test_cancelling_a_paused_run_clears_its_sessions_from_the_sandbox(live_db, llm, sample_workspace):
    llm.default = bash("export KEPT=1; date +%s%N", delay=0.3)
    run = start(live_db, sample_workspace, "Work until stopped.")
    wait_for(lambda: _steps(live_db, run) >= 1, timeout=30)
    assert _exists(live_db, sample_workspace, f"{STATE_ROOT}/{run.pk}")
    _control(live_db, "pause", run)
    wait_state(live_db, run, State.PAUSED, timeout=30)

    _control(live_db, "cancel", run)  # no worker drives a paused run: the end is queued

    assert fetch(live_db, run).state == State.CANCELLED
    wait_for(lambda: not _exists(live_db, sample_workspace, f"{STATE_ROOT}/{run.pk}"), timeout=30)


def test_the_wall_time_budget_counts_the_time_spent_working(live_db, llm, sample_workspace):
    llm.default = bash("sleep 3; date +%s%N")
    limited = profile(live_db, max_seconds=2)
    run = wait_state(live_db, start(live_db, sample_workspace, "Take your time.", limited))

    assert run.state == State.FAILED
    assert run.state_reason.startswith("Budget: the run worked")
    assert run.state_reason.endswith("its limit is 2 s.")
    assert run.steps == 1
    assert run.active_seconds >= 2
