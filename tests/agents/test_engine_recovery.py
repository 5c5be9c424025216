"""Acceptance: a worker killed with SIGKILL in the middle of a step; another worker
resumes the run within a minute, from its last persisted event. No event is lost or
duplicated, and the step that was cut short is not run a second time (a command that
appends to a file ran exactly once): the agent is told it was interrupted instead.

The test owns its two workers, on a queue of their own (AGENTS_STEP_QUEUE), and sends
agents.reap every two seconds as beat would (every AGENTS_REAP_SECONDS); the run is
found stale after the real AGENTS_HEARTBEAT_STALE_SECONDS."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.utils import timezone
from django_tenants.utils import schema_context

from apps.agents.loop import INTERRUPTED
from apps.agents.models import AgentRun, Event
from apps.agents.tasks import reap_task
from apps.workspaces.services import workspace_exec
from tests.agents.engine import as_alice, bash, events, finish, start, wait_state
from tests.conftest import ARTIFACTS, ROOT, World, _worker_env, wait_for

QUEUE = f"agentyard-recovery-{uuid.uuid4().hex[:8]}"


class Workers:
    def __init__(self) -> None:
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> subprocess.Popen[bytes]:
        ARTIFACTS.mkdir(exist_ok=True)
        log = (ARTIFACTS / f"recovery-worker-{name}.log").open("wb")
        process = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel=INFO",
                "--pool=solo", "--concurrency=1", "-Q", QUEUE, "--hostname", f"{name}@%h",
                "--without-mingle", "--without-gossip",
            ],
            cwd=ROOT, env={**_worker_env(), "AGENTS_STEP_QUEUE": QUEUE}, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        self.processes[name] = process
        # Ready when it has answered a task of its own queue.
        reap_task.apply_async(queue=QUEUE).get(timeout=90)
        return process

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()


@pytest.fixture
def workers(settings: Any) -> Iterator[Workers]:
    settings.AGENTS_STEP_QUEUE = QUEUE
    running = Workers()
    yield running
    running.stop_all()


def _log(world: World, workspace: Any) -> str:
    with schema_context(world.alpha.schema_name):
        return workspace_exec(
            actor=as_alice(world), workspace=workspace, command="cat sample/log.txt 2>/dev/null || true"
        ).stdout


def test_a_killed_worker_s_run_is_resumed_elsewhere_without_repeating_or_losing_a_step(
    live_db: World, llm, sample_workspace, workers: Workers
) -> None:
    first = workers.start("first")
    llm.script(
        bash("echo one >> /workspace/sample/log.txt"),
        bash("echo two >> /workspace/sample/log.txt && sleep 60"),
        finish("Wrote the log."),
    )
    run = start(live_db, sample_workspace, "Write two lines to sample/log.txt.")
    # Step 2's command is running (its first half has written its line) when the worker dies.
    wait_for(lambda: _log(live_db, sample_workspace) == "one\ntwo\n", timeout=60, interval=0.2)
    with schema_context(live_db.alpha.schema_name):
        driving = AgentRun.objects.get(pk=run.pk).worker
    assert driving.endswith(f":{first.pid}")
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    killed_at = timezone.now()

    workers.start("second")
    deadline = time.monotonic() + 90
    while fetch_state(live_db, run) not in AgentRun.FINISHED and time.monotonic() < deadline:
        reap_task.apply_async(queue=QUEUE)
        time.sleep(2)
    run = wait_state(live_db, run, timeout=5)

    assert run.state == AgentRun.State.SUCCEEDED, run.state_reason
    assert _log(live_db, sample_workspace) == "one\ntwo\n"  # step 2 did not run again
    history = events(live_db, run)
    assert [event.seq for event in history] == list(range(1, len(history) + 1))
    keyed = [event.step_key for event in history if event.step_key]
    assert len(keyed) == len(set(keyed))
    parts = (Event.Kind.ACTION, Event.Kind.OBSERVATION)
    steps = [(event.step, event.kind) for event in history if event.kind in parts]
    assert steps == [(1, "action"), (1, "observation"), (2, "action"), (2, "observation"), (3, "action"),
                     (3, "observation")]  # fmt: skip
    interrupted = next(e for e in history if e.kind == Event.Kind.OBSERVATION and e.step == 2)
    assert interrupted.payload["output"] == INTERRUPTED
    assert interrupted.payload["data"] == {"interrupted": True}
    assert interrupted.created_at - killed_at < timedelta(seconds=60)
    assert len(llm.chat_requests) == 3  # the interrupted step's action was not asked for again
    assert settings.AGENTS_HEARTBEAT_STALE_SECONDS <= 30


def fetch_state(world: World, run: AgentRun) -> str:
    with schema_context(world.alpha.schema_name):
        return AgentRun.objects.values_list("state", flat=True).get(pk=run.pk)


def test_a_second_worker_never_drives_a_run_another_is_driving(
    live_db: World, llm, sample_workspace, workers: Workers
) -> None:
    from apps.agents.tasks import step_task

    workers.start("first")
    workers.start("second")
    llm.script(bash("echo once >> /workspace/sample/log.txt && sleep 8"), finish("Done."))
    run = start(live_db, sample_workspace, "Write one line slowly.")
    wait_for(lambda: _log(live_db, sample_workspace) == "once\n", timeout=60, interval=0.2)

    # The same step sent again while it runs (as a redelivery or an early reap would):
    # the idle worker takes it and finds the run driven by the other.
    duplicate = step_task.apply_async((str(run.pk), 1), queue=QUEUE).get(timeout=30)
    assert duplicate["status"] == "skipped"
    assert duplicate["detail"] == "another worker drives this run"

    run = wait_state(live_db, run, timeout=60)
    assert run.state == AgentRun.State.SUCCEEDED, run.state_reason
    assert _log(live_db, sample_workspace) == "once\n"
    observation = events(live_db, run, Event.Kind.OBSERVATION)[0].payload
    assert observation["data"]["exit_code"] == 0
    assert "interrupted" not in observation["data"]
