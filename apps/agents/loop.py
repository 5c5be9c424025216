"""The CodeAct loop, one step at a time: each step is one Celery task (apps/agents/tasks.py),
so pause, resume and cancel take effect within one step and workers interleave runs.

A step, `step_run(run_id, number)`:
  1. only one worker drives a run: a per-run PostgreSQL advisory lock (session level,
     so a worker that dies lets go with its connection) and `number` must be the run's
     next step (a duplicate task, or one re-sent by the reaper, finds it done and stops);
  2. the member's control: cancel ends the run, pause parks it (its pool slot freed);
  3. budgets: steps, cost and active time; over one, the run fails saying which;
  4. context (apps/agents/context.py) -> the model through the gateway, offered the
     run's tools; an answer that is no valid tool call becomes an error observation the
     model reads next step, not a crash;
  5. the action is persisted BEFORE it runs ("step:<n>:action"); in confirmation mode a
     risky action waits for a member (waiting_for_approval, slot freed; run_decide);
  6. the tool runs in the workspace; its observation is persisted ("step:<n>:observation")
     with the run's totals in one transaction; `finish` ends the run succeeded with the
     answer and the repository's diff; the same action and result repeated
     AGENTS_STUCK_REPEATS times ends it failed;
  7. the next step is enqueued after commit.

Crash safety. A worker that dies mid-step stops its heartbeat; agents.reap re-sends the
step, and the step picks up from what was persisted:
  - no action yet: the model is asked again (nothing ran);
  - action and observation: the step was done; only its ending is completed;
  - action without observation: the tool may have started and partly run (a command
    half done, a file half written). It is NOT run again blindly: the observation says
    it was interrupted and may have partly run, and the model decides what to do (look
    first, then redo it if needed). Re-running could do a non-idempotent action twice
    (append to a file, send a request), which is worse than asking the model to check.
    An approved risky action counts as started once its "step:<n>:executing" event is
    written, just before it runs.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

import jsonschema
from django.conf import settings
from django.db import DatabaseError, connection, connections, transaction
from django.db.models import F, Q
from django.utils import timezone
from django_tenants.utils import schema_context

from apps.agents import context as run_context
from apps.agents import pool
from apps.agents.events import event_append
from apps.agents.models import AgentRun, Event
from apps.agents.tools.base import ToolCallContext, ToolOutcome, ToolSpec
from apps.agents.tools.registry import Toolbox, tools_for, wire_name
from apps.core.errors import ServiceError
from apps.tenancy.audit import Actor
from apps.tenancy.models import Organization
from apps.workspaces.models import Workspace

logger = logging.getLogger(__name__)

State = AgentRun.State
Kind = Event.Kind

INTERRUPTED = (
    "This action was interrupted: the worker running it stopped before it reported back."
    " It may have partly run (or not at all). Check its effects before doing it again."
)
NOT_A_TOOL_CALL = (
    "Your answer was not a tool call. Every step must call exactly one of the tools ({tools});"
    " when the task is done, call finish with your answer."
)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _lock_key(run_id: uuid.UUID) -> int:
    """A signed 64-bit advisory lock key from the run's id (the one-bigint lock space,
    apart from the two-int keys other apps use)."""
    return int.from_bytes(run_id.bytes[:8], "big", signed=True)


@contextmanager
def run_lock(run_id: uuid.UUID) -> Iterator[bool]:
    """Whether this process now drives the run; held until the block ends (or the
    process dies: PostgreSQL drops a session's advisory locks with its connection)."""
    key = _lock_key(run_id)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
        acquired = bool(cursor.fetchone()[0])
    try:
        yield acquired
    finally:
        if acquired:
            try:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
            except DatabaseError:  # the connection is gone, and the lock with it
                logger.warning("Run %s: could not unlock (connection lost)", run_id)


class Heartbeat:
    """Says every AGENTS_HEARTBEAT_SECONDS that this worker still drives the run, from a
    thread with its own connection, so a long tool call keeps the run alive."""

    def __init__(self, *, run_id: uuid.UUID, schema_name: str, worker: str) -> None:
        self.run_id = run_id
        self.schema_name = schema_name
        self.worker = worker
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"heartbeat-{run_id}", daemon=True)

    def _beat(self) -> None:
        interval = float(settings.AGENTS_HEARTBEAT_SECONDS)
        try:
            while not self.stop.wait(interval):
                try:
                    with schema_context(self.schema_name):
                        AgentRun.objects.filter(pk=self.run_id, worker=self.worker).update(
                            heartbeat_at=timezone.now()
                        )
                except DatabaseError:
                    logger.warning("Run %s: heartbeat not written", self.run_id)
        finally:
            connections.close_all()

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


@dataclass
class StepOutcome:
    status: str  # "continued", "ended", "paused", "waiting", "skipped"
    detail: str = ""

    @property
    def continues(self) -> bool:
        return self.status == "continued"


def step_run(*, run_id: str | uuid.UUID, number: int, worker: str | None = None) -> StepOutcome:
    """Drive the run from step `number` in the current (tenant) schema; safe to call twice.

    Steps follow one another in this call for AGENTS_STEP_SLICE_SECONDS, then the next is
    sent as a task of its own. Handing every step to Celery cost about 70 ms a step (commit,
    broker, a worker process picking it up, the lock taken again), most of the platform's
    share; the slice keeps that hand-off rare while other runs' steps still get a worker
    process every few seconds. Each step is persisted as before, so a worker that dies
    mid-slice loses nothing: the run is resumed from its last event (agents.reap)."""
    worker = worker or worker_name()
    run_uuid = uuid.UUID(str(run_id))
    with run_lock(run_uuid) as acquired:
        if not acquired:
            return StepOutcome("skipped", "another worker drives this run")
        organization: Organization | None = None
        # The slice's first step may have been begun by a worker that died; the steps after
        # it are new: this process just finished the one before, holding the lock.
        fresh = False
        slice_ends = time.monotonic() + float(settings.AGENTS_STEP_SLICE_SECONDS)
        with ExitStack() as heartbeat:
            while True:
                run = AgentRun.objects.select_related("workspace").filter(pk=run_uuid).first()
                if run is None:
                    return StepOutcome("skipped", "no such run")
                if run.state != State.RUNNING:
                    return StepOutcome("skipped", f"the run is {run.state}")
                if number != run.steps + 1:
                    return StepOutcome("skipped", f"step {number} is not next (the run has done {run.steps})")
                if organization is None:  # the slice's first step
                    AgentRun.objects.filter(pk=run.pk).update(worker=worker, heartbeat_at=timezone.now())
                    organization = Organization.objects.get(schema_name=pool.current_schema())
                    heartbeat.enter_context(
                        Heartbeat(run_id=run.pk, schema_name=organization.schema_name, worker=worker)
                    )
                run.worker = worker
                outcome = _step_guarded(run, number, organization, fresh=fresh)
                if not outcome.continues:
                    return outcome
                if time.monotonic() >= slice_ends:
                    _enqueue_next(run)
                    return outcome
                number = run.steps + 1
                fresh = True


def _step_guarded(run: AgentRun, number: int, organization: Organization, *, fresh: bool) -> StepOutcome:
    try:
        return _Step(run=run, number=number, organization=organization, fresh=fresh).perform()
    except DatabaseError:
        raise  # the database is the record: nothing to write the failure to; retried later
    except Exception as exc:
        logger.exception("Run %s step %s failed", run.pk, number)
        return _fail(
            run,
            organization,
            f"The platform failed during step {number}: {type(exc).__name__}.",
            code="internal_error",
            detail=str(exc),
        )


def _enqueue_next(run: AgentRun) -> None:
    _send_step(str(run.pk), run.steps + 1)


def _send_step(run_id: str, number: int) -> None:
    """agents.step for the run's step `number`, sent after the transaction commits."""
    from apps.agents.tasks import step_send

    transaction.on_commit(lambda: step_send(run_id, number))


def _actor(run: AgentRun) -> Actor:
    from apps.accounts.models import User

    user = User.objects.filter(pk=run.created_by_id).first() if run.created_by_id else None
    return Actor(user=user)


def run_end_hook(*, organization: Organization, run: AgentRun) -> None:
    """The run's sessions in the sandbox (shell state, interpreter, undo history) cleared, then
    the knowledge app's end of run: the session distilled into experience, then freed."""
    from apps.agents.tools.builtin import sessions_end
    from apps.knowledge.agent import run_end

    workspace = Workspace.objects.filter(pk=run.workspace_id).first() if run.workspace_id else None
    if workspace is not None:
        try:
            sessions_end(workspace=workspace, run_id=run.pk, actor=_actor(run))
        except Exception:
            logger.exception("Run %s: its sessions were not cleared from the sandbox", run.pk)

    try:
        run_end(
            organization=organization,
            run_id=str(run.pk),
            outcome=run.state,
            summary=str(run.result.get("answer") or run.state_reason)[:2000],
        )
    except Exception:
        logger.exception("Run %s: knowledge not synced at its end", run.pk)


def _end(run: AgentRun, organization: Organization, state: str, reason: str, *, step: int = 0) -> StepOutcome:
    with transaction.atomic():
        locked = AgentRun.objects.select_for_update().get(pk=run.pk)
        locked.result = run.result
        _set_state_locked(locked, state, reason, step=step)
        run.state, run.state_reason, run.finished_at = locked.state, locked.state_reason, locked.finished_at
    run_end_hook(organization=organization, run=run)
    return StepOutcome("ended", reason)


def _set_state_locked(run: AgentRun, state: str, reason: str, *, step: int = 0) -> None:
    from apps.agents.services import run_state_change

    run_state_change(run, state, reason, step=step)
    if state in AgentRun.FINISHED:
        AgentRun.objects.filter(pk=run.pk).update(result=run.result)


def _fail(
    run: AgentRun, organization: Organization, reason: str, *, code: str, detail: str = "", step: int = 0
) -> StepOutcome:
    event_append(run=run, kind=Kind.ERROR, payload={"message": detail or reason, "code": code}, step=step)
    return _end(run, organization, State.FAILED, reason, step=step)


def _stuck(run: AgentRun, number: int) -> str | None:
    """Why the run is stuck: its last AGENTS_STUCK_REPEATS steps did the same thing with
    the same result."""
    repeats = int(settings.AGENTS_STUCK_REPEATS)
    if repeats < 2 or number < repeats:
        return None
    first = number - repeats + 1
    events = Event.objects.filter(
        run_id=run.pk, step__gte=first, step__lte=number, kind__in=[Kind.ACTION, Kind.OBSERVATION]
    ).order_by("seq")
    by_step: dict[int, list[Any]] = {}
    for event in events:
        payload = event.payload
        if event.kind == Kind.ACTION:
            by_step.setdefault(event.step, [None, None])[0] = (
                payload.get("tool"),
                json.dumps(payload.get("arguments"), sort_keys=True),
                payload.get("raw_arguments"),
                payload.get("thought") if not payload.get("tool") else None,
            )
        else:
            by_step.setdefault(event.step, [None, None])[1] = (payload.get("output"), payload.get("error"))
    signatures = [tuple(by_step.get(step, [None, None])) for step in range(first, number + 1)]
    if any(None in signature for signature in signatures) or len(set(signatures)) != 1:
        return None
    tool = signatures[0][0][0] or "an answer that is no tool call"
    return (
        f"Stuck: the agent repeated the same action ({tool}) {repeats} times in a row with the same"
        " result, so the run was stopped."
    )


class _Step:
    def __init__(
        self, *, run: AgentRun, number: int, organization: Organization, fresh: bool = False
    ) -> None:
        """`run` as read at the step's start; `fresh`: nothing of this step was stored yet."""
        self.run = run
        self.number = number
        self.organization = organization
        self.fresh = fresh
        self.started = time.monotonic()
        self.key = f"step:{number}"
        self._actor: Actor | None = None

    def actor(self) -> Actor:
        if self._actor is None:
            self._actor = _actor(self.run)
        return self._actor

    # -- the step ----------------------------------------------------------------------------------

    def perform(self) -> StepOutcome:
        run = self.run
        control = self._control()
        if control is not None:
            return control
        over = self._over_budget()
        if over is not None:
            return _fail(run, self.organization, over, code="budget_exceeded", step=self.number)
        if run.workspace is None:
            return _fail(
                run, self.organization, "The run's workspace was destroyed.", code="workspace_deleted"
            )
        toolbox = tools_for(run, organization=self.organization)
        action = (
            None if self.fresh else Event.objects.filter(run_id=run.pk, step_key=f"{self.key}:action").first()
        )
        decided_now = action is None
        if action is None:
            if self.number == 1:
                self._first_step()
            action_or_outcome = self._decide(toolbox)
            if isinstance(action_or_outcome, StepOutcome):
                return action_or_outcome
            action = action_or_outcome
        return self._act(action, toolbox, decided_now=decided_now)

    def _control(self) -> StepOutcome | None:
        run = self.run  # read at the step's start, control included
        if run.control == AgentRun.Control.CANCEL:
            return _end(run, self.organization, State.CANCELLED, "Cancelled at a member's request")
        if run.control == AgentRun.Control.PAUSE:
            with transaction.atomic():
                locked = AgentRun.objects.select_for_update().get(pk=run.pk)
                locked.control = AgentRun.Control.NONE
                AgentRun.objects.filter(pk=run.pk).update(control="")
                _set_state_locked(locked, State.PAUSED, "Paused at a member's request")
            return StepOutcome("paused")
        return None

    def _over_budget(self) -> str | None:
        run, config = self.run, self.run.settings
        max_steps = int(config.get("max_steps") or 0)
        if max_steps and self.number > max_steps:
            return f"Budget: the run used all {max_steps} steps it may take without finishing."
        max_cost = Decimal(str(config.get("max_cost") or "0"))
        if run.cost > 0 and run.cost >= max_cost:
            return f"Budget: the run spent ${run.cost:.4f}, its limit is ${max_cost:.4f}."
        max_seconds = int(config.get("max_seconds") or 0)
        if max_seconds and run.active_seconds >= max_seconds:
            return f"Budget: the run worked {run.active_seconds:.0f} s, its limit is {max_seconds} s."
        return None

    def _deadline(self) -> float:
        max_seconds = float(self.run.settings.get("max_seconds") or 0) or float("inf")
        return self.started + max(0.0, max_seconds - self.run.active_seconds)

    def _context(self) -> ToolCallContext:
        assert self.run.workspace is not None
        return ToolCallContext(
            run=self.run,
            organization=self.organization,
            workspace=self.run.workspace,
            actor=self.actor(),
            step=self.number,
            deadline=self._deadline(),
        )

    def _first_step(self) -> None:
        """Once per run: the environment facts for the prompt, the knowledge preloaded."""
        from apps.billing.features import feature_enabled_cached
        from apps.knowledge.agent import run_start

        run = self.run
        if "environment" not in run.settings:
            facts: dict[str, Any] = {}
            try:
                from apps.agents.tools.builtin import environment_facts

                context = self._context()
                facts = dict(environment_facts(context.workspace, context.actor))
            except ServiceError as exc:
                logger.warning("Run %s: no environment facts (%s)", run.pk, exc.message)
            run.settings = {**run.settings, "environment": facts}
            AgentRun.objects.filter(pk=run.pk).update(settings=run.settings)
        if not feature_enabled_cached(organization_id=self.organization.pk, key="knowledge"):
            return  # the plan has no knowledge to preload: no block, no knowledge_search
        try:
            run_start(organization=self.organization, run_id=str(run.pk), task_text=run.task)
        except Exception:
            logger.exception("Run %s: knowledge not preloaded", run.pk)

    # -- asking the model --------------------------------------------------------------------------

    def _decide(self, toolbox: Toolbox) -> Event | StepOutcome:
        from apps.billing.features import FeatureNotInPlan, feature_check_cached
        from apps.llm.gateway import gateway
        from apps.llm.selectors import catalog_models
        from apps.llm.types import CallContext, ChatRequest

        run = self.run
        # A run already going stops at its next model call when the plan no longer has AI
        # assistance (this process's reading of the features, at most
        # BILLING_QUOTA_CACHE_SECONDS old); starting one is refused in run_create.
        try:
            feature_check_cached(organization_id=self.organization.pk, key="ai_assistance")
        except FeatureNotInPlan as exc:
            return _fail(run, self.organization, exc.message, code=exc.code, step=self.number)
        events = run_context.run_events(run)
        messages = run_context.conversation(
            organization=self.organization, run=run, events=events, toolbox=toolbox
        )
        max_tokens = int(settings.AGENTS_MAX_OUTPUT_TOKENS)
        call = CallContext(
            organization_id=self.organization.pk,
            user_id=run.created_by_id,
            run_id=str(run.pk),
            priority="agent",
            # A run's requests never repeat within it; another run's cached answer
            # replayed would make every retry of a task the same.
            cache=False,
        )
        request = ChatRequest(
            model=str(run.settings.get("model") or "auto"),
            messages=tuple(messages),
            tools=toolbox.llm_tools(),
            tool_choice="required",
            max_tokens=max_tokens,
        )
        try:
            # The model the router would pick, on the pinned part alone, gives the window.
            planned = gateway().estimate_cost(
                ChatRequest(
                    model=request.model,
                    messages=tuple(m for m in messages if m.role == "system" or m.pinned),
                    tools=request.tools,
                    tool_choice=request.tool_choice,
                    max_tokens=max_tokens,
                ),
                context=call,
            )
            model = catalog_models()[planned["model"]]
            response = _fit_and_ask(request, call=call, model=model, max_tokens=max_tokens)
        except ServiceError as exc:
            return _fail(
                run,
                self.organization,
                f"The model could not be asked: {exc.message}",
                code=exc.code,
                step=self.number,
            )
        usage = response.usage
        cost = Decimal(str(response.route.get("cost_usd") or 0)).quantize(Decimal("0.00000001"))
        payload = self._action_payload(response.message, toolbox)
        # The provider's own time, apart from the platform's work around it (bench/agents.py).
        provider_ms = response.route.get("provider_latency_ms")
        if provider_ms is not None:
            payload["model_ms"] = round(float(provider_ms), 3)
        with transaction.atomic():
            action = event_append(
                run=run,
                kind=Kind.ACTION,
                payload=payload,
                step=self.number,
                step_key=f"{self.key}:action",
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cost=cost,
            )
            AgentRun.objects.filter(pk=run.pk).update(
                input_tokens=F("input_tokens") + usage.input_tokens,
                output_tokens=F("output_tokens") + usage.output_tokens,
                cached_tokens=F("cached_tokens") + usage.cached_tokens,
                cost=F("cost") + cost,
            )
        # Only the run's driver (this process, under the lock) adds to these.
        run.input_tokens += usage.input_tokens
        run.output_tokens += usage.output_tokens
        run.cached_tokens += usage.cached_tokens
        run.cost += cost
        return action

    def _action_payload(self, message: Any, toolbox: Toolbox) -> dict[str, Any]:
        """The model's answer as an action; `valid` False (and `problem`) when it is not a
        call of one of the run's tools with arguments its schema accepts."""
        thought = (message.content or "").strip()
        if not message.tool_calls:
            return {
                "tool": "",
                "arguments": {},
                "call_id": "",
                "thought": thought,
                "valid": False,
                "problem": NOT_A_TOOL_CALL.format(tools=", ".join(toolbox.names())),
            }
        call = message.tool_calls[0]
        spec = toolbox.get(call.name)
        payload: dict[str, Any] = {
            "tool": spec.name if spec else call.name,
            "arguments": {},
            "call_id": call.id or f"call-{self.number}",
            "thought": thought,
        }
        if spec is None:
            payload |= {
                "valid": False,
                "raw_arguments": call.arguments[:2000],
                "problem": f"There is no tool named {call.name!r}. The tools: {', '.join(toolbox.names())}.",
            }
            return payload
        try:
            arguments = call.parsed_arguments()
        except ValueError as exc:
            payload |= {
                "valid": False,
                "raw_arguments": call.arguments[:2000],
                "problem": f"The arguments of {call.name} are not a JSON object ({exc}). Send a JSON"
                " object matching the tool's schema.",
            }
            return payload
        payload["arguments"] = arguments
        try:
            jsonschema.validate(arguments, spec.parameters)
        except jsonschema.ValidationError as error:
            where = "/".join(str(part) for part in error.absolute_path) or "the arguments"
            payload |= {
                "valid": False,
                "problem": f"Invalid arguments for {call.name}: {where}: {error.message}.",
            }
            return payload
        if len(message.tool_calls) > 1:
            payload["note"] = f"Only the first of {len(message.tool_calls)} tool calls was run."
        risk = self._risk(spec, arguments)
        if risk:
            payload["risk"] = risk
        return payload

    def _risk(self, spec: ToolSpec, arguments: dict[str, Any]) -> str | None:
        import re

        reason = spec.risk(arguments) if spec.risk is not None else None
        if reason:
            return reason
        text = (
            arguments.get("command") if isinstance(arguments.get("command"), str) else json.dumps(arguments)
        )
        for pattern in self.run.settings.get("risk_patterns") or []:
            try:
                if re.search(pattern, str(text)):
                    return f"matches the profile's risk pattern {pattern!r}"
            except re.error:
                continue
        return None

    # -- acting ------------------------------------------------------------------------------------

    def _act(self, action: Event, toolbox: Toolbox, *, decided_now: bool) -> StepOutcome:
        run = self.run
        payload = action.payload
        observed = (
            None
            if self.fresh
            else Event.objects.filter(run_id=run.pk, step_key=f"{self.key}:observation").first()
        )
        if observed is not None:
            return self._complete(observed)
        if not payload.get("valid", True):
            return self._observe(
                payload, ToolOutcome(output=str(payload.get("problem") or "Invalid action."), error=True)
            )
        executing_key = f"{self.key}:executing"
        if bool(payload.get("risk")) and bool(run.settings.get("confirmation")):
            later = set(
                Event.objects.filter(run_id=run.pk, step=self.number, seq__gt=action.seq)
                .exclude(step_key="")
                .values_list("step_key", flat=True)
            )
            if f"{self.key}:approved" not in later:
                return self._wait(payload)
            if executing_key in later:
                return self._observe(payload, ToolOutcome(output=INTERRUPTED, error=True), interrupted=True)
            event_append(
                run=run,
                kind=Kind.STATE,
                step=self.number,
                step_key=executing_key,
                payload={"state": State.RUNNING, "reason": "Running the approved action"},
            )
        elif not decided_now:
            # Left by an attempt that died after recording it: it may have started.
            return self._observe(payload, ToolOutcome(output=INTERRUPTED, error=True), interrupted=True)
        return self._execute(payload, toolbox)

    def _wait(self, payload: dict[str, Any]) -> StepOutcome:
        run = self.run
        with transaction.atomic():
            locked = AgentRun.objects.select_for_update().get(pk=run.pk)
            self._add_active_seconds(locked)
            _set_state_locked(
                locked, State.WAITING, f"Waiting for approval: {payload.get('risk')}", step=self.number
            )
        return StepOutcome("waiting", str(payload.get("risk")))

    def _execute(self, payload: dict[str, Any], toolbox: Toolbox) -> StepOutcome:
        spec = toolbox.get(wire_name(str(payload["tool"])))
        if spec is None:
            return self._observe(
                payload, ToolOutcome(output=f"The tool {payload['tool']} is no longer available.", error=True)
            )
        context = self._context()
        started = time.perf_counter()
        try:
            outcome = spec.handler(context, dict(payload.get("arguments") or {}))
        except ServiceError as exc:
            return _fail(
                self.run,
                self.organization,
                f"The tool {spec.name} could not run: {exc.message}",
                code=exc.code,
                step=self.number,
            )
        # The tool's wall time as the step saw it; the platform's share of a step is the rest.
        tool_ms = round((time.perf_counter() - started) * 1000, 3)
        return self._observe(payload, replace(outcome, data={**outcome.data, "tool_ms": tool_ms}))

    def _observe(
        self, payload: dict[str, Any], outcome: ToolOutcome, *, interrupted: bool = False
    ) -> StepOutcome:
        run = self.run
        data = dict(outcome.data)
        if interrupted:
            data["interrupted"] = True
        observation = {
            "tool": payload.get("tool", ""),
            "call_id": payload.get("call_id", ""),
            "output": outcome.output,
            "error": outcome.error,
            "data": data,
        }
        if not payload.get("valid", True):
            observation["valid"] = False
        finish = outcome.finish
        result: dict[str, Any] | None = None
        if finish is not None:
            result = self._result(finish)
        with transaction.atomic():
            event = event_append(
                run=run,
                kind=Kind.OBSERVATION,
                payload=observation,
                step=self.number,
                step_key=f"{self.key}:observation",
            )
            if result is not None:
                AgentRun.objects.filter(pk=run.pk).update(result=result)
                run.result = result
        return self._complete(event)

    def _result(self, answer: str) -> dict[str, Any]:
        from apps.agents.workspace_git import repository_diff, repository_path

        run = self.run
        assert run.workspace is not None
        result: dict[str, Any] = {"answer": answer, "diff": "", "commit": None}
        actor = self.actor()
        try:
            path = repository_path(actor=actor, workspace=run.workspace)
            if path is not None:
                result["path"] = path
                result["diff"] = repository_diff(actor=actor, workspace=run.workspace, path=path)
        except ServiceError as exc:
            logger.warning("Run %s: no final diff (%s)", run.pk, exc.message)
        return result

    def _add_active_seconds(self, locked: AgentRun, **also: Any) -> None:
        elapsed = time.monotonic() - self.started
        self.started = time.monotonic()
        locked.active_seconds += elapsed
        AgentRun.objects.filter(pk=locked.pk).update(active_seconds=F("active_seconds") + elapsed, **also)
        self.run.active_seconds = locked.active_seconds

    def _complete(self, observation: Event) -> StepOutcome:
        """The step is done: counted; then the run finishes, is found stuck, or goes on."""
        run = self.run
        with transaction.atomic():
            locked = AgentRun.objects.select_for_update().get(pk=run.pk)
            if locked.steps < self.number:
                locked.steps = self.number
                self._add_active_seconds(locked, steps=self.number, heartbeat_at=timezone.now())
            else:
                self._add_active_seconds(locked)
            run.steps = locked.steps
            run.result = locked.result
        if observation.payload.get("tool") == "finish" and run.result.get("answer") is not None:
            return _end(run, self.organization, State.SUCCEEDED, "Finished", step=self.number)
        stuck = _stuck(run, self.number)
        if stuck is not None:
            return _fail(run, self.organization, stuck, code="stuck", step=self.number)
        return StepOutcome("continued")


def _fit_and_ask(request: Any, *, call: Any, model: Any, max_tokens: int) -> Any:
    """The conversation fitted to the model's window, then asked, in one event loop (each
    async_to_sync from a worker makes a loop and a thread of its own)."""
    from dataclasses import replace

    from asgiref.sync import async_to_sync

    from apps.llm.context import estimating_counter, fit_request
    from apps.llm.gateway import gateway

    async def ask() -> Any:
        try:
            fitted, _ = await fit_request(
                request,
                context_window=model.context_window,
                count_tokens=estimating_counter(model.provider),
                reserve_output_tokens=max_tokens,
            )
            fitted = replace(fitted, max_tokens=min(max_tokens, model.max_output_tokens))
            return await gateway().chat(fitted, context=call)
        finally:
            await gateway().close_loop_providers()

    return async_to_sync(ask)()


def reap(*, now: Any = None) -> list[str]:
    """Running runs of the current schema whose worker stopped saying so: their next step
    sent again (the step itself decides what is left to do). Their ids."""
    now = now or timezone.now()
    stale = now - timedelta(seconds=float(settings.AGENTS_HEARTBEAT_STALE_SECONDS))
    revived = []
    for run in AgentRun.objects.filter(state=State.RUNNING).filter(
        Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=stale)
    ):
        # The next reap waits a full period again before re-sending.
        if AgentRun.objects.filter(pk=run.pk, state=State.RUNNING, heartbeat_at=run.heartbeat_at).update(
            heartbeat_at=now
        ):
            _send_step(str(run.pk), run.steps + 1)
            revived.append(str(run.pk))
    return revived


__all__ = ["StepOutcome", "pool", "reap", "step_run", "worker_name"]
