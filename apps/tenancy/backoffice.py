"""What platform staff do to organizations from the back office.

Suspending an organization is enough to shut it off: the tenant middleware
answers its pages with 403, the API key resolver refuses its keys with
`organization_suspended`, and its WebSockets are refused, all from the status
column this module writes."""

from django.db import transaction
from django.utils import timezone

from apps.core.errors import Conflict, Invalid
from apps.tenancy.audit import Actor, audit_record, summarize
from apps.tenancy.models import Organization

Status = Organization.Status
REASON_MAX_LENGTH = Organization._meta.get_field("status_detail").max_length or 500


def _clean_reason(reason: str) -> str:
    reason = " ".join(reason.split())
    if not reason:
        raise Invalid("Give a reason; it is kept in the audit log.", field="reason")
    if len(reason) > REASON_MAX_LENGTH:
        raise Invalid(f"Keep the reason under {REASON_MAX_LENGTH} characters.", field="reason")
    return reason


def _set_status(
    *, actor: Actor, organization: Organization, reason: str, to: Status, allowed_from: Status, action: str
) -> Organization:
    reason = _clean_reason(reason)
    locked = Organization.objects.select_for_update().get(pk=organization.pk)
    if locked.status != allowed_from:
        verb = "suspended" if to == Status.SUSPENDED else "reactivated"
        raise Conflict(
            f"{locked.name} is {locked.get_status_display().lower()}; only an organization that is "
            f"{allowed_from.label.lower()} can be {verb}.",
            code=f"organization_{locked.status}",
        )
    before = summarize(locked, ["status", "status_detail"])
    # status_detail is what the organization's people are shown; a reactivation clears it.
    detail = reason if to == Status.SUSPENDED else ""
    Organization.objects.filter(pk=locked.pk).update(
        status=to, status_detail=detail, updated_at=timezone.now()
    )
    locked.refresh_from_db()
    audit_record(
        actor=actor,
        organization=locked,
        action=action,
        target=locked,
        before=before,
        after=summarize(locked, ["status", "status_detail"]) | {"reason": reason},
    )
    organization.status, organization.status_detail = locked.status, locked.status_detail
    return locked


@transaction.atomic
def organization_suspend(*, actor: Actor, organization: Organization, reason: str) -> Organization:
    """Shut an active organization off: its members get 403 pages, its API keys 403s."""
    return _set_status(
        actor=actor,
        organization=organization,
        reason=reason,
        to=Status.SUSPENDED,
        allowed_from=Status.ACTIVE,
        action="organization.suspended",
    )


@transaction.atomic
def organization_reactivate(*, actor: Actor, organization: Organization, reason: str) -> Organization:
    """Give a suspended organization back to its members and keys."""
    return _set_status(
        actor=actor,
        organization=organization,
        reason=reason,
        to=Status.ACTIVE,
        allowed_from=Status.SUSPENDED,
        action="organization.reactivated",
    )
