"""Reads of the agents app, in the current organization's schema."""

from __future__ import annotations

import uuid

from django.db.models import QuerySet

from apps.agents.models import AgentProfile, AgentRun, Event
from apps.core.errors import Invalid, NotFound

MAX_EVENTS_PAGE = 1000


def runs_list(
    *, state: str | None = None, workspace_id: int | None = None, profile_id: int | None = None
) -> QuerySet[AgentRun]:
    """The organization's runs, newest first, filtered by state, workspace and profile."""
    runs = AgentRun.objects.select_related("workspace", "profile")
    if state:
        if state not in AgentRun.State.values:
            raise Invalid(
                f"Unknown state {state!r}; one of: {', '.join(AgentRun.State.values)}.", field="state"
            )
        runs = runs.filter(state=state)
    if workspace_id is not None:
        runs = runs.filter(workspace_id=workspace_id)
    if profile_id is not None:
        runs = runs.filter(profile_id=profile_id)
    return runs.order_by("-created_at")


def run_get(*, run_id: uuid.UUID | str) -> AgentRun:
    try:
        return AgentRun.objects.select_related("workspace", "profile").get(pk=uuid.UUID(str(run_id)))
    except (ValueError, AgentRun.DoesNotExist):
        raise NotFound("No such run.", code="run_not_found") from None


def events_after(*, run: AgentRun, after: int = 0, limit: int = 200) -> list[Event]:
    """The run's events with seq > after, in order, at most `limit` (1 to 1000)."""
    if after < 0:
        raise Invalid("after is a sequence number, 0 or more.", field="after")
    if not 1 <= limit <= MAX_EVENTS_PAGE:
        raise Invalid(f"limit is from 1 to {MAX_EVENTS_PAGE}.", field="limit")
    return list(Event.objects.filter(run_id=run.pk, seq__gt=after).order_by("seq")[:limit])


def run_history(*, run: AgentRun) -> list[Event]:
    """Every event of the run, in order (what the loop rebuilds the conversation from)."""
    return list(Event.objects.filter(run_id=run.pk).order_by("seq"))


def profiles_list() -> QuerySet[AgentProfile]:
    return AgentProfile.objects.order_by("name")


def profile_get(*, profile_id: int) -> AgentProfile:
    try:
        return AgentProfile.objects.get(pk=profile_id)
    except AgentProfile.DoesNotExist:
        raise NotFound("No such agent profile.", code="profile_not_found") from None
