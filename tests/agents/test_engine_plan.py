"""Acceptance: a run already going when its organization loses the `ai_assistance` feature
(staff turn it off) stops at its next model call with the reason, and the model is not
asked again."""

from __future__ import annotations

from apps.agents.models import AgentRun, Event
from tests.agents.engine import bash, events, finish, start, wait_state
from tests.billing.test_features_wired import overridden
from tests.conftest import World, wait_for


def test_a_run_stops_at_its_next_model_call_when_the_plan_loses_ai_assistance(
    live_db: World, llm, sample_workspace
) -> None:
    # The first command outlasts the worker's reading of the plan (BILLING_QUOTA_CACHE_SECONDS).
    llm.script(bash("sleep 7"), bash("echo never"), finish("Never reached."))
    run = start(live_db, sample_workspace, "Wait a while, then go on.")
    wait_for(lambda: len(events(live_db, run, Event.Kind.ACTION)) == 1, timeout=60, interval=0.2)

    with overridden(live_db.alpha, "ai_assistance", False):
        run = wait_state(live_db, run, timeout=60)

    assert run.state == AgentRun.State.FAILED
    assert "ai_assistance" in run.state_reason or "AI assistance" in run.state_reason, run.state_reason
    errors = [event.payload for event in events(live_db, run, Event.Kind.ERROR)]
    assert [error["code"] for error in errors] == ["feature_not_in_plan"]
    assert len(llm.chat_requests) == 1  # the second step never asked the model
    observations = [event.payload for event in events(live_db, run, Event.Kind.OBSERVATION)]
    assert [observation["tool"] for observation in observations] == ["bash"]
