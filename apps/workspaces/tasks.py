"""Stopping idle workspaces, on Celery beat's schedule (CELERY_BEAT_SCHEDULE)."""

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
from apps.workspaces.services import workspace_stop
from runtime.client import RuntimeServiceError

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


def stop_idle_workspaces(*, now: datetime | None = None) -> dict[str, list[int]]:
    """For every active organization; safe to run twice (stopping a stopped one does nothing)."""
    result: dict[str, list[int]] = {}
    for organization in Organization.objects.filter(status=Organization.Status.ACTIVE).order_by("pk"):
        with schema_context(organization.schema_name):
            stopped = stop_idle_in_current_organization(organization, now=now)
        if stopped:
            result[organization.slug] = stopped
    return result


@shared_task(name="workspaces.stop_idle")
def stop_idle_workspaces_task() -> dict[str, list[int]]:
    return stop_idle_workspaces()
