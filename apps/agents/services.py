"""Agent runs and profiles: one function per state change, each audited.

A run's life: run_create (queued) -> the pool starts it (running; apps/agents/tasks.py)
-> steps (apps/agents/loop.py) -> succeeded / failed / cancelled. Members steer it:
run_pause / run_resume, run_cancel, run_decide (approve or deny a risky action in
confirmation mode) and, once it has ended, run_commit (its diff as a commit).

A running run is driven by a worker; what a member asks of it (pause, cancel) is a
`control` flag the worker takes up before its next step, so it takes effect within one
step. A run no worker drives (queued, paused, waiting) changes at once.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from apps.agents import pool
from apps.agents.events import event_append
from apps.agents.models import AgentProfile, AgentRun, Event
from apps.billing.features import feature_check
from apps.core.errors import Conflict, Invalid, NotFound
from apps.tenancy.audit import Actor, audit_record
from apps.tenancy.models import Organization
from apps.workspaces.models import Workspace

State = AgentRun.State
Control = AgentRun.Control

PROFILE_FIELDS = (
    "name",
    "role",
    "model",
    "prompt_template",
    "prompt_version",
    "tools",
    "max_steps",
    "max_cost",
    "max_seconds",
    "confirmation",
    "risk_patterns",
)
MAX_STEPS_LIMIT = 1000
MAX_SECONDS_LIMIT = 7 * 24 * 3600
MAX_COST_LIMIT = Decimal("10000")


def _user_id(actor: Actor) -> int | None:
    return actor.user.pk if actor.user is not None else None


def _who(actor: Actor) -> str:
    if actor.user is not None:
        return str(actor.user.email)
    if actor.api_key is not None:
        return f"API key {actor.api_key.name}"
    return "the platform"


def _check_schema(organization: Organization) -> None:
    """Runs live in the organization's schema: refuse to act on another's."""
    schema = getattr(connection, "schema_name", None)
    if schema != organization.schema_name:
        raise RuntimeError(f"agents of {organization.schema_name} used in schema {schema}")


# Profiles ---------------------------------------------------------------------------------------


def _known_model(name: str) -> str:
    from apps.llm.catalog import ALIASES, AUTO_MODEL
    from apps.llm.selectors import catalog_models

    name = (name or "").strip()
    if name == AUTO_MODEL:
        return name
    catalog = catalog_models()
    resolved = ALIASES.get(name, name)
    model = catalog.get(resolved)
    if model is None or model.embeddings:
        chat = ", ".join(sorted(n for n, m in catalog.items() if not m.embeddings))
        raise Invalid(f"Unknown model {name!r}; use auto or one of: {chat}.", field="model")
    return name


def _prompt_checked(template: str, version: Any) -> tuple[str, int | None]:
    from apps.prompts import selectors as prompt_selectors
    from apps.prompts.file_defaults import default_get

    template = (template or "").strip()
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise Invalid(
            "prompt_version is a version number (1 or more), or null for the current one.",
            field="prompt_version",
        )
    stored = prompt_selectors.template_by_name(name=template) if template else None
    if stored is None:
        if not template or default_get(template) is None:
            raise Invalid(f"No prompt template is named {template!r}.", field="prompt_template")
        if version is not None:
            raise Invalid(
                f"The prompt template {template} is the platform's default, which has no versions;"
                " create it in your organization to pin one.",
                field="prompt_version",
            )
        return template, None
    if version is not None:
        try:
            prompt_selectors.version_get(template=stored, number=version)
        except NotFound:
            raise Invalid(f"{template} has no version {version}.", field="prompt_version") from None
    return template, version


def _bounded_int(value: Any, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise Invalid(f"{field} is a whole number from {low} to {high}.", field=field)
    return int(value)


def _profile_values(fields: dict[str, Any], current: AgentProfile | None = None) -> dict[str, Any]:
    unknown = sorted(set(fields) - set(PROFILE_FIELDS))
    if unknown:
        raise Invalid(f"Unknown field {unknown[0]!r}.", field=unknown[0])
    values: dict[str, Any] = {}
    if "name" in fields or current is None:
        name = str(fields.get("name") or "").strip()
        if not name or len(name) > 100:
            raise Invalid("Give the profile a name of at most 100 characters.", field="name")
        values["name"] = name
    if "role" in fields:
        role = str(fields["role"] or "")
        if len(role) > 2000:
            raise Invalid("The role is at most 2,000 characters.", field="role")
        values["role"] = role
    if "model" in fields:
        values["model"] = _known_model(str(fields["model"] or ""))
    if "prompt_template" in fields or "prompt_version" in fields:
        template = fields.get("prompt_template", current.prompt_template if current else "agent.system")
        version = fields.get("prompt_version", current.prompt_version if current else None)
        values["prompt_template"], values["prompt_version"] = _prompt_checked(str(template or ""), version)
    if "tools" in fields:
        tools = fields["tools"] or []
        if not isinstance(tools, list) or not all(isinstance(t, str) and 0 < len(t) <= 200 for t in tools):
            raise Invalid("tools is a list of tool names (empty: every tool).", field="tools")
        values["tools"] = sorted(set(tools))
    if "max_steps" in fields:
        values["max_steps"] = _bounded_int(fields["max_steps"], "max_steps", 1, MAX_STEPS_LIMIT)
    if "max_seconds" in fields:
        values["max_seconds"] = _bounded_int(fields["max_seconds"], "max_seconds", 1, MAX_SECONDS_LIMIT)
    if "max_cost" in fields:
        try:
            cost = Decimal(str(fields["max_cost"]))
        except (InvalidOperation, ValueError):
            cost = Decimal(-1)
        if not cost.is_finite() or not Decimal(0) <= cost <= MAX_COST_LIMIT:
            raise Invalid(
                f"max_cost is an amount in US dollars from 0 to {MAX_COST_LIMIT}.", field="max_cost"
            )
        values["max_cost"] = cost.quantize(Decimal("0.000001"))
    if "confirmation" in fields:
        if not isinstance(fields["confirmation"], bool):
            raise Invalid("confirmation is true or false.", field="confirmation")
        values["confirmation"] = fields["confirmation"]
    if "risk_patterns" in fields:
        patterns = fields["risk_patterns"] or []
        if not isinstance(patterns, list) or not all(isinstance(p, str) and p for p in patterns):
            raise Invalid("risk_patterns is a list of regular expressions.", field="risk_patterns")
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise Invalid(
                    f"{pattern!r} is not a valid regular expression: {exc}.", field="risk_patterns"
                ) from None
        values["risk_patterns"] = patterns
    return values


@transaction.atomic
def profile_create(*, actor: Actor, organization: Organization, **fields: Any) -> AgentProfile:
    _check_schema(organization)
    values = _profile_values(fields)
    if AgentProfile.objects.filter(name=values["name"]).exists():
        raise Conflict("A profile with this name exists; choose another.", code="name_taken", field="name")
    profile = AgentProfile.objects.create(created_by_id=_user_id(actor), **values)
    audit_record(
        actor=actor,
        organization=organization,
        action="agents.profile_created",
        target=profile,
        after=profile_summary(profile),
    )
    return profile


@transaction.atomic
def profile_update(
    *, actor: Actor, organization: Organization, profile: AgentProfile, **fields: Any
) -> AgentProfile:
    """Change a profile; runs already created keep the settings they copied."""
    _check_schema(organization)
    try:
        profile = AgentProfile.objects.select_for_update().get(pk=profile.pk)
    except AgentProfile.DoesNotExist:
        raise NotFound("No such agent profile.", code="profile_not_found") from None
    values = _profile_values(fields, current=profile)
    if "name" in values and AgentProfile.objects.filter(name=values["name"]).exclude(pk=profile.pk).exists():
        raise Conflict("A profile with this name exists; choose another.", code="name_taken", field="name")
    before = profile_summary(profile)
    for name, value in values.items():
        setattr(profile, name, value)
    profile.save()
    audit_record(
        actor=actor,
        organization=organization,
        action="agents.profile_updated",
        target=profile,
        before=before,
        after=profile_summary(profile),
    )
    return profile


@transaction.atomic
def profile_delete(*, actor: Actor, organization: Organization, profile: AgentProfile) -> None:
    """Delete a profile; its runs stay (with the settings they copied)."""
    _check_schema(organization)
    audit_record(
        actor=actor,
        organization=organization,
        action="agents.profile_deleted",
        target=profile,
        before=profile_summary(profile),
    )
    AgentProfile.objects.filter(pk=profile.pk).delete()


def profile_summary(profile: AgentProfile) -> dict[str, Any]:
    return {
        "name": profile.name,
        "model": profile.model,
        "prompt_template": profile.prompt_template,
        "prompt_version": profile.prompt_version,
        "tools": list(profile.tools),
        "max_steps": profile.max_steps,
        "max_cost": str(profile.max_cost),
        "max_seconds": profile.max_seconds,
        "confirmation": profile.confirmation,
        "risk_patterns": list(profile.risk_patterns),
    }


def settings_snapshot(profile: AgentProfile | None) -> dict[str, Any]:
    """What a run works with, copied from its profile (or the defaults without one)."""
    if profile is None:
        defaults = AgentProfile(model=settings.AGENTS_DEFAULT_MODEL)
        return {**profile_summary(defaults), "profile": None, "role": ""}
    return {**profile_summary(profile), "profile": profile.name, "role": profile.role}


# Runs -------------------------------------------------------------------------------------------


def _workspace(workspace: Workspace | int | str | None) -> Workspace:
    if isinstance(workspace, Workspace):
        workspace_id: Any = workspace.pk
    else:
        workspace_id = workspace
    try:
        found = Workspace.objects.get(pk=int(workspace_id))
    except (TypeError, ValueError, Workspace.DoesNotExist):
        raise Invalid("No such workspace.", code="workspace_not_found", field="workspace") from None
    if found.state == Workspace.State.DELETED:
        raise Invalid("This workspace was destroyed.", code="workspace_deleted", field="workspace")
    if found.state != Workspace.State.RUNNING:
        raise Invalid(
            f"The workspace {found.name} is {found.get_state_display().lower()}; start it before"
            " running an agent on it.",
            code="workspace_not_running",
            field="workspace",
        )
    return found


def _profile(profile: AgentProfile | int | str | None) -> AgentProfile | None:
    if profile is None or profile == "":
        return None
    profile_id: Any = profile.pk if isinstance(profile, AgentProfile) else profile
    try:
        return AgentProfile.objects.get(pk=int(profile_id))
    except (TypeError, ValueError, AgentProfile.DoesNotExist):
        raise Invalid("No such agent profile.", code="profile_not_found", field="profile") from None


def _task(task: Any) -> str:
    if not isinstance(task, str) or not task.strip():
        raise Invalid("Say what the agent should do.", field="task")
    if "\x00" in task:
        raise Invalid("The task contains a NUL character.", field="task")
    task = task.strip()
    limit = int(settings.AGENTS_MAX_TASK_CHARS)
    if len(task) > limit:
        raise Invalid(
            f"The task has {len(task):,} characters; at most {limit:,}. Put long material in the"
            " workspace and point the agent at it.",
            code="task_too_long",
            field="task",
        )
    return str(task)


@transaction.atomic
def run_create(
    *,
    actor: Actor,
    organization: Organization,
    workspace: Workspace | int | str | None,
    task: str,
    profile: AgentProfile | int | str | None = None,
    priority: str = AgentRun.Priority.INTERACTIVE,
) -> AgentRun:
    """A queued run of `task` on a running workspace; it starts when the pool has a slot.
    The plan must have the `ai_assistance` feature."""
    _check_schema(organization)
    feature_check(organization=organization, key="ai_assistance")
    task = _task(task)
    found_workspace = _workspace(workspace)
    found_profile = _profile(profile)
    if priority not in AgentRun.Priority.values:
        raise Invalid(f"priority is one of: {', '.join(AgentRun.Priority.values)}.", field="priority")
    run = AgentRun.objects.create(
        task=task,
        workspace=found_workspace,
        profile=found_profile,
        settings=settings_snapshot(found_profile),
        priority=priority,
        created_by_id=_user_id(actor),
    )
    event_append(run=run, kind=Event.Kind.STATE, payload={"state": State.QUEUED, "reason": "Created"})
    event_append(run=run, kind=Event.Kind.MESSAGE, payload={"role": "user", "text": task})
    audit_record(
        actor=actor,
        organization=organization,
        action="agents.run_created",
        target=run,
        after={"workspace": found_workspace.name, "profile": run.settings["profile"], "priority": priority},
    )
    transaction.on_commit(lambda: pool.submit(organization=organization, run=run))
    return run


def _locked(run: AgentRun) -> AgentRun:
    try:
        return AgentRun.objects.select_for_update().get(pk=run.pk)
    except AgentRun.DoesNotExist:
        raise NotFound("No such run.", code="run_not_found") from None


def run_state_change(run: AgentRun, state: str, reason: str, *, step: int = 0, step_key: str = "") -> None:
    """The run's new state, its state event and, leaving the pool, its slot given back.
    For the services and the loop, inside a transaction holding the run's row lock."""
    run.state = state
    run.state_reason = reason[:1000]
    fields = ["state", "state_reason"]
    if state in AgentRun.FINISHED:
        run.finished_at = timezone.now()
        run.control = Control.NONE
        run.worker = ""
        fields += ["finished_at", "control", "worker"]
    AgentRun.objects.filter(pk=run.pk).update(**{name: getattr(run, name) for name in fields})
    event_append(
        run=run,
        kind=Event.Kind.STATE,
        payload={"state": state, "reason": reason},
        step=step,
        step_key=step_key,
    )
    if state != State.RUNNING:
        # In the same transaction: a release arriving after commit could find the ticket of
        # the run's next turn (resumed meanwhile) and drop it. The next run starts after commit.
        pool.release(run_id=run.pk)


def _run_ended_send(run_id: str) -> None:
    from apps.agents.tasks import run_ended_task

    run_ended_task.delay(run_id)


def _finished_conflict(run: AgentRun, what: str) -> Conflict:
    return Conflict(
        f"The run has already {run.state}; there is nothing to {what}.", code="run_finished", field="state"
    )


@transaction.atomic
def run_cancel(*, actor: Actor, organization: Organization, run: AgentRun) -> AgentRun:
    """Cancel now if no worker drives it; a running run stops before its next step."""
    _check_schema(organization)
    run = _locked(run)
    if run.finished:
        raise _finished_conflict(run, "cancel")
    if run.state == State.RUNNING:
        run.control = Control.CANCEL
        AgentRun.objects.filter(pk=run.pk).update(control=run.control)
    else:
        run_state_change(run, State.CANCELLED, f"Cancelled by {_who(actor)}")
        # No worker will end it: the end-of-run work (sandbox sessions, knowledge) is queued.
        run_id = str(run.pk)
        transaction.on_commit(lambda: _run_ended_send(run_id))
    audit_record(
        actor=actor,
        organization=organization,
        action="agents.run_cancelled",
        target=run,
        after={"state": run.state, "control": run.control},
    )
    return run


@transaction.atomic
def run_pause(*, actor: Actor, organization: Organization, run: AgentRun) -> AgentRun:
    """Pause: a queued run at once, a running one after its current step."""
    _check_schema(organization)
    run = _locked(run)
    if run.finished:
        raise _finished_conflict(run, "pause")
    if run.state == State.RUNNING:
        run.control = Control.PAUSE
        AgentRun.objects.filter(pk=run.pk).update(control=run.control)
    elif run.state == State.QUEUED:
        run_state_change(run, State.PAUSED, f"Paused by {_who(actor)}")
    else:
        raise Conflict(
            f"The run is {run.get_state_display().lower()}; only a queued or running run can be paused.",
            code="run_not_pausable",
            field="state",
        )
    audit_record(
        actor=actor,
        organization=organization,
        action="agents.run_paused",
        target=run,
        after={"state": run.state, "control": run.control},
    )
    return run


@transaction.atomic
def run_resume(*, actor: Actor, organization: Organization, run: AgentRun) -> AgentRun:
    """A paused run back in the pool's queue (or a pause not yet taken up, withdrawn)."""
    _check_schema(organization)
    run = _locked(run)
    if run.state == State.RUNNING and run.control == Control.PAUSE:
        run.control = Control.NONE
        AgentRun.objects.filter(pk=run.pk).update(control=run.control)
    elif run.state == State.PAUSED:
        run_state_change(run, State.QUEUED, f"Resumed by {_who(actor)}")
        transaction.on_commit(lambda: pool.submit(organization=organization, run=run))
    else:
        raise Conflict(
            f"The run is {run.get_state_display().lower()}, not paused.", code="run_not_paused", field="state"
        )
    audit_record(
        actor=actor,
        organization=organization,
        action="agents.run_resumed",
        target=run,
        after={"state": run.state},
    )
    return run


def pending_action(run: AgentRun) -> Event | None:
    """The action of the step in progress (recorded, not yet observed), if any."""
    step = run.steps + 1
    return Event.objects.filter(run_id=run.pk, step_key=f"step:{step}:action").first()


@transaction.atomic
def run_decide(
    *, actor: Actor, organization: Organization, run: AgentRun, approve: bool, note: str = ""
) -> AgentRun:
    """A member's answer to the action waiting for approval: approved, the run goes on and
    executes it; denied, the agent reads that it was denied (and why) and goes on."""
    _check_schema(organization)
    run = _locked(run)
    if run.state != State.WAITING:
        raise Conflict(
            f"The run is {run.get_state_display().lower()}; no action is waiting for approval.",
            code="run_not_waiting",
            field="state",
        )
    if len(note) > 2000:
        raise Invalid("The note is at most 2,000 characters.", field="note")
    action = pending_action(run)
    if action is None:  # pragma: no cover (a waiting run always has its action)
        raise Conflict("No action is waiting for approval.", code="run_not_waiting")
    step = action.step
    who = _who(actor)
    if approve:
        reason = f"Approved by {who}" + (f": {note}" if note else "")
        event_append(
            run=run,
            kind=Event.Kind.STATE,
            payload={"state": State.QUEUED, "reason": reason, "decision": "approve"},
            step=step,
            step_key=f"step:{step}:approved",
        )
        run.state, run.state_reason = State.QUEUED, reason
        AgentRun.objects.filter(pk=run.pk).update(state=run.state, state_reason=run.state_reason)
    else:
        payload = action.payload
        output = f"A member ({who}) denied this action; it was not run." + (
            f" Their note: {note}" if note else ""
        )
        event_append(
            run=run,
            kind=Event.Kind.OBSERVATION,
            payload={
                "tool": payload.get("tool", ""),
                "call_id": payload.get("call_id", ""),
                "output": output,
                "error": True,
                "data": {"denied": True},
            },
            step=step,
            step_key=f"step:{step}:observation",
        )
        run.steps = step
        AgentRun.objects.filter(pk=run.pk).update(steps=step)
        run_state_change(run, State.QUEUED, f"Denied by {who}" + (f": {note}" if note else ""), step=step)
    transaction.on_commit(lambda: pool.submit(organization=organization, run=run))
    audit_record(
        actor=actor,
        organization=organization,
        action="agents.run_decided",
        target=run,
        after={"step": step, "approve": approve, "note": note},
    )
    return run


def run_commit(*, actor: Actor, organization: Organization, run: AgentRun, message: str) -> AgentRun:
    """Commit the workspace repository's changes (git add --all, then commit) after the run
    ended; the commit's sha goes in the run's result. The plan must have the `git` feature."""
    from apps.agents.workspace_git import repository_path
    from apps.workspaces.git import git_commit

    _check_schema(organization)
    feature_check(organization=organization, key="git")
    run = AgentRun.objects.select_related("workspace").get(pk=run.pk)
    if not run.finished:
        raise Conflict("Wait until the run has ended to commit its changes.", code="run_not_finished")
    if not isinstance(message, str) or not message.strip():
        raise Invalid("Give a commit message.", field="message")
    if len(message) > 5000:
        raise Invalid("The commit message is at most 5,000 characters.", field="message")
    workspace = run.workspace
    if workspace is None:
        raise Conflict("The run's workspace no longer exists.", code="workspace_deleted")
    path = run.result.get("path") if isinstance(run.result.get("path"), str) else None
    if path is None:
        path = repository_path(actor=actor, workspace=workspace)
    if path is None:
        raise Conflict("The workspace holds no git repository to commit to.", code="not_a_repository")
    # The git work happens outside a transaction: it can take long and is not rolled back anyway.
    outcome = git_commit(actor=actor, workspace=workspace, path=path, message=message.strip())
    with transaction.atomic():
        run = _locked(run)
        run.result = {**run.result, "commit": outcome.commit, "path": path}
        AgentRun.objects.filter(pk=run.pk).update(result=run.result)
        audit_record(
            actor=actor,
            organization=organization,
            action="agents.run_committed",
            target=run,
            after={"commit": outcome.commit, "path": path},
        )
    return run
