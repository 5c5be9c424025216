"""Single sign-on: an organization's provider settings, what a login via a
provider changes (just-in-time membership, audit), and connected logins.

Writes are keyword-only service functions that audit in the same transaction."""

from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.db.models import CharField, Value
from django.db.models.functions import Cast, Concat, Lower
from social_django.models import UserSocialAuth

from apps.accounts.models import User, normalize_email
from apps.accounts.outbound import outbound_url_problem
from apps.billing.features import feature_check
from apps.billing.quotas import QuotaExceeded, members_count, quota_check, quota_lock
from apps.core.errors import Conflict, Invalid, NotFound
from apps.tenancy.audit import Actor, audit_record, summarize
from apps.tenancy.models import Membership, Organization, OrganizationSSO

SSO_FIELDS = ["issuer", "client_id", "verified_domain", "sso_required", "enabled"]


def email_domain(email: str) -> str:
    return normalize_email(email).rpartition("@")[2]


def sso_for_organization(*, organization: Organization) -> OrganizationSSO | None:
    return OrganizationSSO.objects.filter(organization=organization).first()


def sso_required_for_email(*, email: str) -> OrganizationSSO | None:
    """The organization whose SSO this person must use, if any: one that requires
    SSO for its domain and that the person with this address is a member of.

    The domain is only claimed by the organization's owner (no DNS proof yet),
    so it binds the organization's own members and nobody else: claiming
    someone else's domain must not lock strangers out of their password."""
    domain = email_domain(email)
    if not domain:
        return None
    return (
        OrganizationSSO.objects.select_related("organization")
        .annotate(domain=Lower("verified_domain"))
        .filter(domain=domain, sso_required=True, enabled=True)
        .filter(
            # Bound only once they have logged in by this organization's provider
            # (or been created by it): nobody is locked out of a password they
            # cannot replace.
            organization__memberships__user__email=normalize_email(email),
            organization__memberships__user__social_auth__provider="oidc",
            organization__memberships__user__social_auth__uid__startswith=Concat(
                Cast("organization_id", CharField()), Value(":")
            ),
        )
        .first()
    )


@transaction.atomic
def sso_settings_save(
    *,
    actor: Actor,
    organization: Organization,
    issuer: str,
    client_id: str,
    client_secret: str,
    verified_domain: str,
    sso_required: bool,
    enabled: bool,
) -> OrganizationSSO:
    """Create or change the organization's provider; an empty secret keeps the stored one."""
    # Also checked here, not only on the page: every path that turns SSO on needs the plan.
    feature_check(organization=organization, key="sso")
    sso = OrganizationSSO.objects.select_for_update().filter(organization=organization).first()
    before = summarize(sso, SSO_FIELDS) if sso else None
    if sso is None:
        sso = OrganizationSSO(organization=organization)
    problem = outbound_url_problem(issuer.strip())
    if problem:
        raise Invalid(problem, field="issuer")
    sso.issuer = issuer.strip().rstrip("/")
    sso.client_id = client_id.strip()
    sso.verified_domain = verified_domain.strip().lower().lstrip("@")
    sso.sso_required = sso_required
    sso.enabled = enabled
    if client_secret:
        sso.set_client_secret(client_secret)
    if not sso.client_secret_encrypted:
        raise Invalid("Enter the client secret your provider gave you.", field="client_secret")
    if sso.sso_required and not sso.verified_domain:
        raise Invalid(
            "Requiring SSO needs a verified domain: whose logins would it apply to?", field="sso_required"
        )
    try:
        with transaction.atomic():
            sso.save()
    except IntegrityError:
        raise Conflict(
            f"{sso.verified_domain} is already the verified domain of another organization.",
            code="domain_taken",
            field="verified_domain",
        ) from None
    after = summarize(sso, SSO_FIELDS)
    if client_secret:
        after["client_secret_changed"] = True
    audit_record(
        actor=actor,
        organization=organization,
        action="sso.updated" if before else "sso.configured",
        target=sso,
        before=before,
        after=after,
    )
    return sso


@dataclass(frozen=True)
class SSOLogin:
    user: User
    organization: Organization | None
    joined: bool


def _sso_join(*, actor: Actor, user: User, organization: Organization) -> bool:
    """Make the person a member, within the plan's member limit (counted under the billing
    account's lock). A full organization still lets them log in; they just do not join
    (audited)."""
    account = quota_lock(organization)
    if Membership.objects.filter(user=user, organization=organization).exists():
        return False  # a concurrent login joined while this one waited for the lock
    try:
        quota_check(
            account=account, organization=organization, limit="members", used=members_count(organization)
        )
    except QuotaExceeded as full:
        audit_record(
            actor=actor,
            organization=organization,
            action="member.join_via_sso_refused",
            target=user,
            after={"email": user.email, "reason": full.message},
        )
        return False
    membership = Membership.objects.create(user=user, organization=organization, role=Membership.Role.MEMBER)
    audit_record(
        actor=actor,
        organization=organization,
        action="member.joined_via_sso",
        target=membership,
        after=summarize(membership, ["role"]) | {"email": user.email},
    )
    return True


@transaction.atomic
def sso_login_record(
    *, actor: Actor, user: User, provider: str, organization: Organization | None, is_new_user: bool
) -> SSOLogin:
    """Audit a login by a provider and, for an organization's SSO with a verified
    email at its verified domain, make the person a member (role member)."""
    joined = False
    if organization is not None:
        sso = sso_for_organization(organization=organization)
        at_domain = (
            sso is not None and sso.verified_domain and email_domain(user.email) == sso.verified_domain
        )
        if at_domain and not Membership.objects.filter(user=user, organization=organization).exists():
            joined = _sso_join(actor=actor, user=user, organization=organization)
    audit_record(
        actor=actor,
        organization=organization,
        action="auth.sso_login",
        target=user,
        after={"provider": provider, "email": user.email, "new_user": is_new_user},
    )
    return SSOLogin(user=user, organization=organization, joined=joined)


def social_logins_of(*, user: User) -> list[UserSocialAuth]:
    return list(UserSocialAuth.objects.filter(user=user).order_by("provider", "pk"))


@transaction.atomic
def social_login_disconnect(*, actor: Actor, user: User, social_id: int) -> None:
    """Remove a connected login, unless it is the last way the person can log in."""
    User.objects.select_for_update().filter(pk=user.pk).first()  # one disconnect at a time per person
    logins = list(UserSocialAuth.objects.filter(user=user))
    login = next((entry for entry in logins if entry.pk == social_id), None)
    if login is None:
        raise NotFound("No such connected login.")
    if len(logins) == 1 and not user.has_usable_password():
        raise Conflict(
            "This is your only way to log in: set a password or connect another login first.",
            code="last_login_method",
        )
    audit_record(
        actor=actor,
        organization=None,
        action="auth.social_disconnected",
        target=user,
        before={"provider": login.provider, "uid": login.uid},
    )
    login.delete()
