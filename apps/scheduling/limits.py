"""How many agent runs may be in flight: in the whole pool and per organization.

Settings for now; plans (the billing issue) will decide an organization's limit here,
the one place the dispatcher and queue positions ask."""

from __future__ import annotations

from django.conf import settings

from apps.tenancy.models import Organization


def pool_size() -> int:
    return max(int(settings.AGENTS_POOL_SIZE), 0)


def organization_run_limit(organization: Organization) -> int:
    """The most runs of this organization in flight at once (0: none start; they wait)."""
    return max(int(settings.AGENTS_ORG_CONCURRENCY), 0)
