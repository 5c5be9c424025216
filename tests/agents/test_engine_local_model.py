"""Acceptance: the local SmolLM2 model through llama.cpp (no provider key, no fake)
drives a run in a real sandbox: it makes at least one real tool call and the run ends
cleanly within its budget, whatever the model says."""

from __future__ import annotations

from apps.agents.models import AgentRun, Event
from tests.agents.engine import events, profile, remove_profile, start, wait_state
from tests.conftest import World


def test_the_local_model_makes_a_real_tool_call_and_the_run_ends_within_its_budget(
    live_db: World, sample_workspace
) -> None:
    small = profile(live_db, model="local", max_steps=3)
    try:
        run = start(live_db, sample_workspace, "Run `ls /workspace/sample` with the bash tool.", small)
        run = wait_state(live_db, run, timeout=600)
    finally:
        remove_profile(live_db, small)

    assert run.state in (AgentRun.State.SUCCEEDED, AgentRun.State.FAILED), run.state_reason
    if run.state == AgentRun.State.FAILED:
        assert run.state_reason.startswith(("Budget:", "Stuck:")), run.state_reason
    assert 1 <= run.steps <= 3
    actions = [event.payload for event in events(live_db, run, Event.Kind.ACTION)]
    observations = [event.payload for event in events(live_db, run, Event.Kind.OBSERVATION)]
    assert len(observations) == len(actions) == run.steps
    called = [action for action in actions if action.get("valid", True)]
    assert called, actions
    assert {action["tool"] for action in called} <= {
        "bash", "python", "str_replace_editor", "search", "think", "finish", "knowledge_search",
    }  # fmt: skip
    errors = [e.payload for e in events(live_db, run, Event.Kind.ERROR)]
    assert not [error for error in errors if error["code"] not in ("budget_exceeded", "stuck")], errors
    assert run.cost == 0
    assert run.input_tokens > 0
