"""How many agent runs may be in flight: in the whole pool and per organization.

An organization's limit is its plan's concurrent_agent_runs (with staff's override,
apps/billing/quotas.py), never above AGENTS_ORG_CONCURRENCY, the platform's cap. This
is the one place the dispatcher and queue positions ask; runs over it wait in line,
they never fail."""

from __future__ import annotations

from django.conf import settings

from apps.billing.quotas import organization_limits
from apps.tenancy.models import Organization


def pool_size() -> int:
    return max(int(settings.AGENTS_POOL_SIZE), 0)


def organization_run_limit(organization: Organization) -> int:
    """The most runs of this organization in flight at once (0: none start; they wait)."""
    cap = max(int(settings.AGENTS_ORG_CONCURRENCY), 0)
    planned = organization_limits(organization)["concurrent_agent_runs"]
    return cap if planned is None else min(cap, max(int(planned), 0))
