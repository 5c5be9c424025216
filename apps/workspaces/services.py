"""Workspace lifecycle, exec, files and secrets: one function per state change, each
audited. The runtime is reached only through apps/workspaces/runtime.py; when it
fails, the transaction rolls back and the workspace keeps the state it had."""

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from apps.billing.ledger import sandbox_usage_record
from apps.billing.models import BillingAccount
from apps.billing.quotas import platform_cap_then_plan, quota_check, quota_lock, sandbox_hours_used
from apps.core.errors import Conflict, Invalid, NotFound, ServiceError
from apps.tenancy.audit import Actor, audit_record
from apps.tenancy.models import Organization
from apps.workspaces import crypto
from apps.workspaces.models import Secret, Workspace
from apps.workspaces.runtime import runtime_client, runtime_errors, tenant
from apps.workspaces.validation import (
    validate_env,
    validate_name,
    validate_network_allow,
    validate_path,
    validate_resources,
    validate_secret_name,
    validate_template,
)
from runtime.client import (
    FileEntry,
    RuntimeServiceError,
    SandboxExists,
    SandboxNotFound,
    SandboxNotRunning,
    SandboxSpec,
)

logger = logging.getLogger(__name__)

State = Workspace.State
MIB = 1024 * 1024
MAX_EXEC_TIMEOUT = 3600.0


def _quota_lock(organization: Organization) -> BillingAccount:
    """Quota checks of one organization run one at a time (its billing account row is
    locked until the transaction ends), so two requests cannot both take its last slot."""
    return quota_lock(organization)


def _user_id(actor: Actor) -> int | None:
    return actor.user.pk if actor.user is not None else None


def sandbox_spec(workspace: Workspace) -> SandboxSpec:
    return SandboxSpec(
        tenant=tenant(),
        sandbox_id=workspace.sandbox_id,
        template=workspace.template,
        cpus=workspace.cpus,
        memory_bytes=workspace.memory_mb * MIB,
        disk_bytes=workspace.disk_mb * MIB,
        pids=workspace.pids,
        allow=tuple(workspace.network_allow),
        env=crypto.decrypt_env(workspace.env_encrypted),
    )


def _sandbox_create(workspace: Workspace) -> None:
    client = runtime_client()
    spec = sandbox_spec(workspace)
    try:
        client.create_sandbox(spec)
    except SandboxExists:
        # Left behind by a row that no longer exists (ids are never reused): start afresh.
        client.destroy_sandbox(spec.tenant, spec.sandbox_id)
        client.create_sandbox(spec)


def _sandbox_destroy_quietly(workspace: Workspace) -> None:
    try:
        runtime_client().destroy_sandbox(tenant(), workspace.sandbox_id)
    except RuntimeServiceError:
        logger.exception("Could not destroy sandbox %s of %s after a failure", workspace.sandbox_id, tenant())


def _running_quota_check(
    *, account: BillingAccount, organization: Organization, exclude_pk: int | None = None
) -> None:
    """Room for one more running sandbox: the plan's concurrent_sandboxes and, above it,
    WORKSPACES_MAX_RUNNING_PER_ORGANIZATION, the platform's cap; and sandbox hours left
    this month. Call under _quota_lock."""
    limit = settings.WORKSPACES_MAX_RUNNING_PER_ORGANIZATION
    running_workspaces = Workspace.objects.filter(state=State.RUNNING)
    if exclude_pk is not None:
        running_workspaces = running_workspaces.exclude(pk=exclude_pk)
    running = running_workspaces.count()
    platform_cap_then_plan(
        account=account,
        organization=organization,
        limit="concurrent_sandboxes",
        used=running,
        cap=limit,
        cap_error=Conflict(
            f"This organization already runs {running} workspaces, its limit ({limit}); stop one first.",
            code="running_quota_exceeded",
        ),
        verb="runs",
    )
    quota_check(
        account=account,
        organization=organization,
        limit="sandbox_hours",
        used=sandbox_hours_used(organization),
        adding=0,
    )


def _sandbox_usage(organization: Organization | None, workspace: Workspace, until: datetime) -> None:
    """The sandbox stopped at `until`: its seconds since it started (or since the periodic
    accounting last counted it) go to the ledger, in the transaction of the stop."""
    if organization is None:
        logger.warning(
            "Sandbox seconds of workspace %s not recorded: no organization for %s", workspace.pk, tenant()
        )
        return
    sandbox_usage_record(
        organization_id=organization.pk,
        workspace_id=workspace.pk,
        started_at=workspace.started_at,
        until=until,
        user_id=workspace.created_by_id,
    )


def _conflict_unless_alive(workspace: Workspace) -> None:
    if workspace.state == State.DELETED:
        raise Conflict("This workspace was destroyed.", code="workspace_deleted")
    if workspace.state == State.ARCHIVED:
        raise Conflict("This workspace is archived and read-only.", code="workspace_archived")


@transaction.atomic
def workspace_create(
    *,
    actor: Actor,
    organization: Organization,
    name: str,
    template: str = "base",
    repo_url: str = "",
    cpus: float = 1.0,
    memory_mb: int = 1024,
    disk_mb: int = 2048,
    pids: int = 256,
    idle_timeout_seconds: int = 3600,
    network_allow: list[str] | None = None,
    env: dict[str, str] | None = None,
    start: bool = True,
    provision: bool = True,
) -> Workspace:
    """A workspace and its sandbox, started unless `start` is False. With `provision`
    False only the row is made (state provisioning); the first start makes the sandbox.
    If the runtime fails, nothing stays: the row rolls back and the sandbox is destroyed."""
    name = validate_name(name)
    template = validate_template(template)
    validate_resources(
        cpus=cpus, memory_mb=memory_mb, disk_mb=disk_mb, pids=pids, idle_timeout_seconds=idle_timeout_seconds
    )
    allow = validate_network_allow(list(network_allow or []))
    env = validate_env(env or {})
    repo_url = repo_url.strip()
    if len(repo_url) > 500 or any(ord(char) < 32 for char in repo_url):
        raise Invalid("Give a repository URL of at most 500 characters, on one line.", field="repo_url")

    account = _quota_lock(organization)
    alive = Workspace.objects.exclude(state=State.DELETED)
    limit = settings.WORKSPACES_MAX_PER_ORGANIZATION
    platform_cap_then_plan(
        account=account,
        organization=organization,
        limit="workspaces",
        used=alive.count(),
        cap=limit,
        cap_error=Conflict(
            f"This organization has {limit} workspaces, its limit; destroy one first.",
            code="workspace_quota_exceeded",
        ),
    )
    if alive.filter(name=name).exists():
        raise Conflict("A workspace with this name exists; choose another.", code="name_taken", field="name")
    allocated_mb = alive.aggregate(total=Sum("disk_mb"))["total"] or 0
    quota_check(
        account=account,
        organization=organization,
        limit="storage_gb",
        used=allocated_mb / 1024,
        adding=disk_mb / 1024,
        verb="has allocated",
    )
    if start and provision:
        _running_quota_check(account=account, organization=organization)
    workspace = Workspace.objects.create(
        name=name,
        repo_url=repo_url,
        template=template,
        cpus=float(cpus),
        memory_mb=memory_mb,
        disk_mb=disk_mb,
        pids=pids,
        idle_timeout_seconds=idle_timeout_seconds,
        network_allow=allow,
        env_encrypted=crypto.encrypt_env(env),
        state=State.PROVISIONING,
        created_by_id=_user_id(actor),
    )
    if provision:
        created = False
        try:
            with runtime_errors():
                _sandbox_create(workspace)
                created = True
                now = timezone.now()
                if start:
                    runtime_client().start_sandbox(tenant(), workspace.sandbox_id)
                    workspace.state, workspace.started_at = State.RUNNING, now
                else:
                    workspace.state, workspace.stopped_at = State.STOPPED, now
                workspace.last_activity_at = now
                workspace.save(update_fields=["state", "started_at", "stopped_at", "last_activity_at"])
        except ServiceError:
            if created:
                _sandbox_destroy_quietly(workspace)
            raise
    audit_record(
        actor=actor,
        organization=organization,
        action="workspace.created",
        target=workspace,
        after={**workspace.summary(), "env": sorted(env)},
    )
    return workspace


def _locked(workspace: Workspace) -> Workspace:
    try:
        return Workspace.objects.select_for_update().get(pk=workspace.pk)
    except Workspace.DoesNotExist:
        raise NotFound("No such workspace.") from None


@transaction.atomic
def workspace_start(*, actor: Actor, organization: Organization, workspace: Workspace) -> Workspace:
    """Start it (making its sandbox first if the runtime has none), within the
    organization's limit of running workspaces."""
    account = _quota_lock(organization)
    workspace = _locked(workspace)
    _conflict_unless_alive(workspace)
    before = workspace.state
    if before != State.RUNNING:
        _running_quota_check(account=account, organization=organization, exclude_pk=workspace.pk)
    client = runtime_client()
    with runtime_errors():
        try:
            client.start_sandbox(tenant(), workspace.sandbox_id)
        except SandboxNotFound:
            _sandbox_create(workspace)
            client.start_sandbox(tenant(), workspace.sandbox_id)
    now = timezone.now()
    workspace.state, workspace.last_activity_at = State.RUNNING, now
    if before != State.RUNNING:
        workspace.started_at = now
    workspace.save(update_fields=["state", "started_at", "last_activity_at", "updated_at"])
    if before != State.RUNNING:
        audit_record(
            actor=actor,
            organization=organization,
            action="workspace.started",
            target=workspace,
            before={"state": before},
            after={"state": workspace.state},
        )
    return workspace


@transaction.atomic
def workspace_stop(
    *, actor: Actor, organization: Organization, workspace: Workspace, reason: str = ""
) -> Workspace:
    """Stop every process of it; its files stay. Stopping a stopped workspace does nothing."""
    workspace = _locked(workspace)
    if workspace.state != State.RUNNING:
        return workspace
    # SandboxNotFound: nothing of it runs anywhere, stopped already.
    with runtime_errors(), contextlib.suppress(SandboxNotFound):
        runtime_client().stop_sandbox(tenant(), workspace.sandbox_id)
    workspace.state, workspace.stopped_at = State.STOPPED, timezone.now()
    workspace.save(update_fields=["state", "stopped_at", "updated_at"])
    _sandbox_usage(organization, workspace, workspace.stopped_at)
    audit_record(
        actor=actor,
        organization=organization,
        action="workspace.stopped",
        target=workspace,
        before={"state": State.RUNNING},
        after={"state": workspace.state, **({"reason": reason} if reason else {})},
    )
    return workspace


@transaction.atomic
def workspace_archive(*, actor: Actor, organization: Organization, workspace: Workspace) -> Workspace:
    """Stopped for good, files kept and readable, nothing writable."""
    workspace = _locked(workspace)
    if workspace.state == State.ARCHIVED:
        return workspace
    if workspace.state == State.DELETED:
        raise Conflict("This workspace was destroyed.", code="workspace_deleted")
    before = workspace.state
    if before == State.RUNNING:
        with runtime_errors(), contextlib.suppress(SandboxNotFound):
            runtime_client().stop_sandbox(tenant(), workspace.sandbox_id)
        workspace.stopped_at = timezone.now()
    workspace.state, workspace.archived_at = State.ARCHIVED, timezone.now()
    workspace.save(update_fields=["state", "stopped_at", "archived_at", "updated_at"])
    if before == State.RUNNING and workspace.stopped_at is not None:
        _sandbox_usage(organization, workspace, workspace.stopped_at)
    audit_record(
        actor=actor,
        organization=organization,
        action="workspace.archived",
        target=workspace,
        before={"state": before},
        after={"state": workspace.state},
    )
    return workspace


@transaction.atomic
def workspace_destroy(*, actor: Actor, organization: Organization, workspace: Workspace) -> Workspace:
    """Remove its sandbox and files from the runtime; the row stays, deleted, for the audit trail."""
    workspace = _locked(workspace)
    if workspace.state == State.DELETED:
        return workspace
    before = workspace.state
    with runtime_errors():
        runtime_client().destroy_sandbox(tenant(), workspace.sandbox_id)
    workspace.state, workspace.deleted_at = State.DELETED, timezone.now()
    workspace.save(update_fields=["state", "deleted_at", "updated_at"])
    if before == State.RUNNING:
        _sandbox_usage(organization, workspace, workspace.deleted_at)
    audit_record(
        actor=actor,
        organization=organization,
        action="workspace.destroyed",
        target=workspace,
        before={"state": before},
        after={"state": workspace.state},
    )
    return workspace


# Reconciliation: the runtime is the truth about sandboxes -------------------------------------

# What a person is told when a call finds the sandbox of a workspace gone (by `found`).
SANDBOX_GONE = {
    "stopped": "The workspace's sandbox stopped (the runtime restarted or stopped it), so the workspace"
    " is stopped now; start it again. Its files are kept.",
    "missing": "The workspace's sandbox is missing on the runtime, so the workspace is stopped now;"
    " start it again to make a new sandbox.",
}


def sandbox_found(workspace: Workspace) -> str | None:
    """ "stopped" or "missing" when the runtime says so of the workspace's sandbox; None when
    it runs, or when the runtime cannot be asked."""
    try:
        info = runtime_client().get_sandbox(tenant(), workspace.sandbox_id)
    except SandboxNotFound:
        return "missing"
    except RuntimeServiceError:
        return None
    return None if info.running else "stopped"


def _current_organization() -> Organization | None:
    return Organization.objects.filter(schema_name=tenant()).first()


def workspace_reconcile(
    *, workspace: Workspace, found: str, asked_at: datetime, organization: Organization | None = None
) -> bool:
    """Record that the runtime no longer runs the sandbox of a workspace we record as
    running (`found`: "stopped" or "missing", as the runtime said when asked at `asked_at`):
    stopped now, audited as the system's doing. Its own transaction, so it stays when the
    caller then fails. A start recorded after `asked_at` wins. True if it changed it."""
    now = timezone.now()
    with transaction.atomic():
        locked = Workspace.objects.select_for_update().filter(pk=workspace.pk).first()
        if locked is None or locked.state != State.RUNNING:
            return False
        if locked.started_at is not None and locked.started_at > asked_at:
            return False
        locked.state, locked.stopped_at = State.STOPPED, now
        locked.save(update_fields=["state", "stopped_at", "updated_at"])
        organization = organization or _current_organization()
        # When the sandbox really stopped is not known: it is counted until now, when we found out.
        _sandbox_usage(organization, locked, now)
        audit_record(
            actor=Actor.system(),
            organization=organization,
            action="workspace.stopped",
            target=locked,
            before={"state": State.RUNNING},
            after={"state": State.STOPPED, "reason": f"sandbox {found} on the runtime"},
        )
    workspace.state, workspace.stopped_at = locked.state, locked.stopped_at
    logger.info("Workspace %s of %s: its sandbox is %s; recorded stopped", workspace.pk, tenant(), found)
    return True


@contextlib.contextmanager
def reconciling(workspace: Workspace) -> Iterator[None]:
    """Around a runtime call on a workspace's sandbox (inside `runtime_errors`): when the
    call is refused because the sandbox is not running or does not exist (not a path of
    it), record the truth and answer 409 saying so. Other refusals pass through as they were."""
    try:
        yield
    except (SandboxNotRunning, SandboxNotFound):
        asked_at = timezone.now()
        found = sandbox_found(workspace)
        if found is None:
            raise  # about a path, or the runtime cannot say: the call's own error
        workspace_reconcile(workspace=workspace, found=found, asked_at=asked_at)
        raise Conflict(
            SANDBOX_GONE[found],
            code="workspace_not_running" if found == "stopped" else "sandbox_missing",
        ) from None


# Idle timeouts are minutes long; an agent's commands a few milliseconds apart need not each
# write the row (the runtime also keeps its own activity clock, which the idle check reads).
TOUCH_RESOLUTION = timedelta(seconds=5)


def workspace_touch(*, workspace: Workspace) -> None:
    """Someone used it now (exec, a file write, the terminal): the idle clock restarts."""
    now = timezone.now()
    seen = workspace.last_activity_at
    if seen is not None and timedelta(0) <= now - seen < TOUCH_RESOLUTION:
        return
    Workspace.objects.filter(pk=workspace.pk).update(last_activity_at=now)
    workspace.last_activity_at = now


# Exec -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExecOutcome:
    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool
    stdout_truncated: bool
    stderr_truncated: bool
    oom_killed: bool
    duration_seconds: float


def truncation_marker(limit: int) -> str:
    size = f"{limit // MIB} MiB" if limit % MIB == 0 else f"{limit} bytes"
    return f"\n[output truncated: limit {size}]\n"


def _decoded(data: bytes, truncated: bool, limit: int) -> str:
    text = data.decode("utf-8", errors="replace")
    return text + truncation_marker(limit) if truncated else text


def _require_running(workspace: Workspace) -> None:
    _conflict_unless_alive(workspace)
    if workspace.state != State.RUNNING:
        raise Conflict(
            f"The workspace is {workspace.get_state_display().lower()}; start it to run commands.",
            code="workspace_not_running",
        )


def workspace_exec(
    *,
    actor: Actor,
    workspace: Workspace,
    command: str | None = None,
    argv: list[str] | None = None,
    cwd: str = "",
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
    stdin: bytes = b"",
) -> ExecOutcome:
    """Run one command to its end in the running workspace; output beyond
    WORKSPACES_EXEC_MAX_OUTPUT_BYTES per stream is dropped, with a marker line."""
    _require_running(workspace)
    if (command is None) == (argv is None):
        raise Invalid("Give either command (a shell line) or argv (a list), not both.", field="command")
    if command is not None and (not command.strip() or "\x00" in command):
        raise Invalid("The command is empty or not valid.", field="command")
    if argv is not None and (not argv or any("\x00" in arg for arg in argv)):
        raise Invalid("argv must be a non-empty list of strings.", field="argv")
    cwd = validate_path(cwd, field="cwd")
    env = validate_env(env or {})
    if not 0 < timeout <= MAX_EXEC_TIMEOUT:
        raise Invalid(f"timeout must be between 0 and {MAX_EXEC_TIMEOUT:g} seconds.", field="timeout")
    limit = int(settings.WORKSPACES_EXEC_MAX_OUTPUT_BYTES)
    with (
        runtime_errors(path_field="cwd", missing="No such directory in the workspace."),
        reconciling(workspace),
    ):
        result = runtime_client().exec(
            tenant(),
            workspace.sandbox_id,
            command=command,
            argv=argv,
            cwd=cwd,
            env=env,
            timeout=timeout,
            max_output_bytes=limit,
            stdin=stdin,
        )
    workspace_touch(workspace=workspace)
    return ExecOutcome(
        exit_code=result.exit_code,
        stdout=_decoded(result.stdout, result.stdout_truncated, limit),
        stderr=_decoded(result.stderr, result.stderr_truncated, limit),
        timed_out=result.timed_out,
        stdout_truncated=result.stdout_truncated,
        stderr_truncated=result.stderr_truncated,
        oom_killed=result.oom_killed,
        duration_seconds=result.duration_seconds,
    )


# Files ------------------------------------------------------------------------------------------


def require_files(workspace: Workspace) -> None:
    if workspace.state == State.DELETED:
        raise Conflict("This workspace was destroyed; its files are gone.", code="workspace_deleted")
    if workspace.state == State.PROVISIONING:
        raise Conflict("This workspace has no files yet; start it first.", code="workspace_not_provisioned")


def _require_writable(workspace: Workspace) -> None:
    require_files(workspace)
    if workspace.state == State.ARCHIVED:
        raise Conflict("This workspace is archived and read-only.", code="workspace_archived")


def workspace_file_write(
    *, actor: Actor, workspace: Workspace, path: str, data: bytes, make_parents: bool = True
) -> FileEntry:
    _require_writable(workspace)
    path = validate_path(path, allow_root=False)
    with (
        runtime_errors(path_field="path", missing="No such directory in the workspace."),
        reconciling(workspace),
    ):
        entry = runtime_client().write_file(
            tenant(), workspace.sandbox_id, path, data, make_parents=make_parents
        )
    workspace_touch(workspace=workspace)
    return entry


def workspace_path_delete(*, actor: Actor, workspace: Workspace, path: str, recursive: bool = False) -> None:
    _require_writable(workspace)
    path = validate_path(path, allow_root=False)
    with runtime_errors(path_field="path"), reconciling(workspace):
        existed = runtime_client().delete_path(tenant(), workspace.sandbox_id, path, recursive=recursive)
    if not existed:
        raise NotFound(f"No such file or directory: {path}")
    workspace_touch(workspace=workspace)


# Secrets ----------------------------------------------------------------------------------------


@transaction.atomic
def secret_set(*, actor: Actor, organization: Organization, name: str, value: str) -> Secret:
    """Create the secret, or replace its value. The value is never shown back."""
    name = validate_secret_name(name)
    if not value or len(value) > 16 * 1024 or "\x00" in value:
        raise Invalid("Give a value of 1 to 16384 characters.", field="value")
    secret = Secret.objects.select_for_update().filter(name=name).first()
    created = secret is None
    if secret is None:
        secret = Secret(name=name, created_by_id=_user_id(actor))
    secret.value_encrypted = crypto.encrypt_text(value)
    secret.save()
    audit_record(
        actor=actor,
        organization=organization,
        action="secret.created" if created else "secret.updated",
        target=secret,
        after={"name": name},
    )
    return secret


@transaction.atomic
def secret_delete(*, actor: Actor, organization: Organization, name: str) -> None:
    secret = Secret.objects.select_for_update().filter(name=name).first()
    if secret is None:
        raise NotFound("No such secret.")
    audit_record(
        actor=actor, organization=organization, action="secret.deleted", target=secret, before={"name": name}
    )
    secret.delete()


def secret_value(*, name: str) -> str:
    """The decrypted value, for the server's own use (git over https); never for display."""
    secret = Secret.objects.filter(name=name).first()
    if secret is None:
        raise Invalid(f"No secret named {name!r} in this organization.", field="secret")
    return crypto.decrypt_text(secret.value_encrypted, what=f"secret {name}")


def workspace_env(workspace: Workspace) -> dict[str, Any]:
    return crypto.decrypt_env(workspace.env_encrypted)
