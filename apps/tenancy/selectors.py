from django.db.models import QuerySet

from apps.accounts.models import User
from apps.tenancy.models import Domain, Membership, Organization


def organization_for_host(hostname: str) -> Organization | None:
    domain = Domain.objects.select_related("tenant").filter(domain=hostname).first()
    return domain.tenant if domain else None


def membership_get(*, user: User, organization: Organization) -> Membership | None:
    if not user.is_authenticated:
        return None
    return Membership.objects.filter(user=user, organization=organization).first()


def organizations_of_user(*, user: User) -> QuerySet[Organization]:
    return Organization.objects.filter(memberships__user=user).order_by("name")


def member_of_organization(*, organization: Organization, member_id: int) -> Membership | None:
    """A membership by id, only within this organization: another's ids find nothing."""
    return (
        Membership.objects.select_related("user", "organization")
        .filter(organization=organization, pk=member_id)
        .first()
    )
