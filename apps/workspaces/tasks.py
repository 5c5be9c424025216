"""On Celery beat's schedule (CELERY_BEAT_SCHEDULE): first reconcile our records with the
runtime (running workspaces whose sandbox it reports stopped or missing, after a restart
say, become stopped), then stop idle workspaces. Safe to run twice; when the runtime
cannot be reached, nothing changes and one warning is logged."""

import logging
from datetime import UTC, datetime, timedelta

from celery import shared_task
from django.utils import timezone
from django_tenants.utils import schema_context

from apps.core.errors import ServiceError
from apps.tenancy.audit import Actor
from apps.tenancy.models import Organization
from apps.workspaces.models import Workspace
from apps.workspaces.runtime import runtime_client, tenant
from apps.workspaces.services import workspace_reconcile, workspace_stop
from runtime.client import RuntimeServiceError, RuntimeUnavailable

logger = logging.getLogger(__name__)


def _last_activity(workspace: Workspace) -> datetime | None:
    """The later of ours (exec, files, start) and the runtime's (the terminal's keystrokes too)."""
    ours = workspace.last_activity_at or workspace.started_at
    try:
        info = runtime_client().get_sandbox(tenant(), workspace.sandbox_id)
    except RuntimeServiceError:
        return ours  # unreachable or gone: judge by what we know
    if info.last_activity_at > 0:
        theirs = datetime.fromtimestamp(info.last_activity_at, tz=UTC)
        return max(ours, theirs) if ours else theirs
    return ours


def stop_idle_in_current_organization(
    organization: Organization, *, now: datetime | None = None
) -> list[int]:
    """Stop the running workspaces of this organization idle past their timeout; their ids."""
    now = now or timezone.now()
    stopped = []
    for workspace in Workspace.objects.filter(state=Workspace.State.RUNNING):
        last = _last_activity(workspace)
        if last is not None and now - last < timedelta(seconds=workspace.idle_timeout_seconds):
            continue
        try:
            workspace_stop(
                actor=Actor.system(), organization=organization, workspace=workspace, reason="idle"
            )
        except ServiceError as exc:
            logger.warning("Could not stop idle workspace %s of %s: %s", workspace.pk, organization.slug, exc)
            continue
        stopped.append(workspace.pk)
    return stopped


def reconcile_current_organization(organization: Organization) -> list[int]:
    """Running workspaces of this organization whose sandbox the runtime reports stopped or
    missing, recorded stopped; their ids. Raises RuntimeServiceError when the runtime
    cannot be asked, having changed nothing."""
    running = list(Workspace.objects.filter(state=Workspace.State.RUNNING))
    if not running:
        return []
    asked_at = timezone.now()
    states = {info.sandbox_id: info.state for info in runtime_client().list_sandboxes(tenant())}
    reconciled = []
    for workspace in running:
        state = states.get(workspace.sandbox_id)
        found = "missing" if state is None else None if state == "running" else "stopped"
        if found and workspace_reconcile(
            workspace=workspace, found=found, asked_at=asked_at, organization=organization
        ):
            reconciled.append(workspace.pk)
    return reconciled


def _active_organizations() -> list[Organization]:
    return list(Organization.objects.filter(status=Organization.Status.ACTIVE).order_by("pk"))


def reconcile_workspaces() -> dict[str, list[int]]:
    """For every active organization: ids of the workspaces recorded stopped, by slug.
    The runtime unreachable: nothing changes, one warning."""
    result: dict[str, list[int]] = {}
    for organization in _active_organizations():
        with schema_context(organization.schema_name):
            try:
                reconciled = reconcile_current_organization(organization)
            except RuntimeUnavailable as exc:
                logger.warning("Not reconciling workspaces with the runtime: it is not reachable (%s)", exc)
                return result
            except RuntimeServiceError as exc:
                logger.warning("Could not reconcile the workspaces of %s: %s", organization.slug, exc)
                continue
        if reconciled:
            result[organization.slug] = reconciled
    return result


def stop_idle_workspaces(*, now: datetime | None = None) -> dict[str, list[int]]:
    """For every active organization; safe to run twice (stopping a stopped one does nothing)."""
    result: dict[str, list[int]] = {}
    for organization in _active_organizations():
        with schema_context(organization.schema_name):
            stopped = stop_idle_in_current_organization(organization, now=now)
        if stopped:
            result[organization.slug] = stopped
    return result


@shared_task(name="workspaces.stop_idle")
def stop_idle_workspaces_task() -> dict[str, dict[str, list[int]]]:
    """Reconcile, then stop the idle; with the runtime down, nothing changes and one warning."""
    try:
        runtime_client().health()
    except RuntimeServiceError as exc:
        logger.warning("Workspaces not checked: the runtime is not reachable (%s)", exc)
        return {"reconciled": {}, "stopped": {}}
    return {"reconciled": reconcile_workspaces(), "stopped": stop_idle_workspaces()}
