"""Members, invitations, ownership and API keys: one function per change of state,
each checking the rules, writing, and auditing in one transaction."""

import hashlib
import secrets
from datetime import datetime, timedelta

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.accounts.models import User, normalize_email
from apps.billing.quotas import members_count, quota_check, quota_lock
from apps.core.errors import Conflict, Forbidden, Gone, Invalid, NotFound, Stale
from apps.tenancy.api_keys import key_forget, key_generate, key_hash
from apps.tenancy.audit import Actor, audit_record, summarize
from apps.tenancy.models import ApiKey, Invitation, Membership, Organization
from apps.tenancy.roles import ADMIN_SCOPE, SCOPES, role_allows

Role = Membership.Role
INVITATION_LIFETIME = timedelta(days=7)


def _is_owner(actor: Actor, organization: Organization) -> bool:
    if actor.user is None:
        return False
    return Membership.objects.filter(user=actor.user, organization=organization, role=Role.OWNER).exists()


def _lock_memberships(organization: Organization) -> list[Membership]:
    """Lock the organization's memberships, so two changes cannot both remove 'the other' owner."""
    return list(Membership.objects.select_for_update().filter(organization=organization).order_by("pk"))


def _owners_left_without(memberships: list[Membership], leaving: Membership) -> int:
    return sum(1 for m in memberships if m.role == Role.OWNER and m.pk != leaving.pk)


@transaction.atomic
def organization_update(
    *, actor: Actor, organization: Organization, name: str, if_unmodified_since: datetime | None = None
) -> Organization:
    locked = Organization.objects.select_for_update().get(pk=organization.pk)
    if if_unmodified_since is not None and locked.updated_at != if_unmodified_since:
        raise Stale("The organization changed since you read it; read it again and retry.")
    name = name.strip()
    if not name:
        raise Invalid("Give the organization a name.", field="name")
    before = summarize(locked, ["name"])
    Organization.objects.filter(pk=locked.pk).update(name=name, updated_at=timezone.now())
    locked.refresh_from_db()
    audit_record(
        actor=actor,
        organization=locked,
        action="organization.updated",
        target=locked,
        before=before,
        after=summarize(locked, ["name"]),
    )
    return locked


@transaction.atomic
def member_change_role(
    *, actor: Actor, membership: Membership, role: str, if_unmodified_since: datetime | None = None
) -> Membership:
    if role not in Role.values:
        raise Invalid(f"Unknown role {role!r}.", field="role")
    memberships = _lock_memberships(membership.organization)
    current = next((m for m in memberships if m.pk == membership.pk), None)
    if current is None:
        raise NotFound("No such member.")
    if if_unmodified_since is not None and current.updated_at != if_unmodified_since:
        raise Stale("The member changed since you read it; read it again and retry.")
    if Role.OWNER in (current.role, role) and not _is_owner(actor, current.organization):
        raise Forbidden("Only owners may grant or take away the owner role.", code="owner_only")
    if current.role == Role.OWNER and role != Role.OWNER and not _owners_left_without(memberships, current):
        raise Conflict("An organization needs an owner: make someone else owner first.", code="last_owner")
    before = summarize(current, ["role"])
    current.role = role
    current.save(update_fields=["role", "updated_at"])
    if not role_allows(role, "api_keys.manage"):
        _revoke_keys_created_by(actor=actor, membership=current, reason="creator no longer manages keys")
    audit_record(
        actor=actor,
        organization=current.organization,
        action="member.role_changed",
        target=current,
        before=before,
        after=summarize(current, ["role"]),
    )
    return current


@transaction.atomic
def member_remove(*, actor: Actor, membership: Membership) -> None:
    """Remove a member, or leave when the member is the actor."""
    memberships = _lock_memberships(membership.organization)
    current = next((m for m in memberships if m.pk == membership.pk), None)
    if current is None:
        raise NotFound("No such member.")
    leaving = actor.user is not None and current.user_id == actor.user.pk
    if current.role == Role.OWNER and not leaving and not _is_owner(actor, current.organization):
        raise Forbidden("Only owners may remove an owner.", code="owner_only")
    if current.role == Role.OWNER and not _owners_left_without(memberships, current):
        raise Conflict("An organization needs an owner: make someone else owner first.", code="last_owner")
    audit_record(
        actor=actor,
        organization=current.organization,
        action="member.left" if leaving else "member.removed",
        target=current,
        before=summarize(current, ["role"]) | {"email": current.user.email},
    )
    _revoke_keys_created_by(actor=actor, membership=current, reason="creator left the organization")
    current.delete()


@transaction.atomic
def ownership_transfer(*, actor: Actor, organization: Organization, to: Membership) -> Membership:
    """The actor (an owner) makes `to` an owner and becomes an admin."""
    memberships = _lock_memberships(organization)
    mine = next((m for m in memberships if actor.user and m.user_id == actor.user.pk), None)
    target = next((m for m in memberships if m.pk == to.pk), None)
    if mine is None or mine.role != Role.OWNER:
        raise Forbidden("Only an owner can hand over ownership.", code="owner_only")
    if target is None:
        raise NotFound("No such member.")
    if target.pk == mine.pk:
        raise Invalid("You are already an owner.", field="member_id")
    target.role = Role.OWNER
    target.save(update_fields=["role", "updated_at"])
    mine.role = Role.ADMIN
    mine.save(update_fields=["role", "updated_at"])
    audit_record(
        actor=actor,
        organization=organization,
        action="organization.ownership_transferred",
        target=target,
        before={"owner": mine.user.email},
        after={"owner": target.user.email},
    )
    return target


def _revoke_keys_created_by(*, actor: Actor, membership: Membership, reason: str) -> None:
    """A key acts with the rights its creator had; it must not outlive them."""
    keys = ApiKey.objects.select_for_update().filter(
        organization=membership.organization, created_by=membership.user, revoked_at__isnull=True
    )
    for api_key in keys:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
        key_forget(api_key)
        audit_record(
            actor=actor,
            organization=membership.organization,
            action="api_key.revoked",
            target=api_key,
            after={"reason": reason},
        )


def _invitation_token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@transaction.atomic
def invitation_create(
    *, actor: Actor, organization: Organization, email: str, role: str, accept_url_base: str
) -> tuple[Invitation, str]:
    """Invite `email`; returns the invitation and its link (also emailed)."""
    email = normalize_email(email)
    if role not in Role.values:
        raise Invalid(f"Unknown role {role!r}.", field="role")
    if role == Role.OWNER and not _is_owner(actor, organization):
        raise Forbidden("Only owners may invite owners.", code="owner_only")
    if Membership.objects.filter(organization=organization, user__email=email).exists():
        raise Conflict(f"{email} is already a member.", code="already_member", field="email")
    token = secrets.token_urlsafe(32)
    try:
        with transaction.atomic():
            invitation = Invitation.objects.create(
                organization=organization,
                email=email,
                role=role,
                token_hash=_invitation_token_hash(token),
                invited_by=actor.user,
                expires_at=timezone.now() + INVITATION_LIFETIME,
            )
    except IntegrityError:
        raise Conflict(
            f"{email} already has an open invitation.", code="already_invited", field="email"
        ) from None
    link = f"{accept_url_base}/invitations/{token}/"
    audit_record(
        actor=actor,
        organization=organization,
        action="invitation.created",
        target=invitation,
        after=summarize(invitation, ["email", "role"]),
    )
    inviter = actor.user.display_name if actor.user else organization.name
    transaction.on_commit(
        lambda: send_mail(
            subject=f"{inviter} invited you to {organization.name} on Agentyard",
            message=(
                f"{inviter} invited you to join {organization.name} on Agentyard as {role}.\n\n"
                f"Accept within 7 days: {link}\n"
            ),
            from_email=settings.DEFAULT_FROM_EMAIL,
            recipient_list=[email],
        )
    )
    return invitation, link


@transaction.atomic
def invitation_revoke(*, actor: Actor, invitation: Invitation) -> Invitation:
    locked = Invitation.objects.select_for_update().get(pk=invitation.pk)
    if locked.status != "pending":
        raise Conflict(f"This invitation is already {locked.status}.", code=f"invitation_{locked.status}")
    locked.revoked_at = timezone.now()
    locked.save(update_fields=["revoked_at"])
    audit_record(actor=actor, organization=locked.organization, action="invitation.revoked", target=locked)
    return locked


def invitation_for_token(token: str) -> Invitation | None:
    return (
        Invitation.objects.select_related("organization", "invited_by")
        .filter(token_hash=_invitation_token_hash(token))
        .first()
    )


@transaction.atomic
def invitation_accept(*, actor: Actor, token: str) -> Membership:
    user = actor.user
    if user is None:
        raise Forbidden("Log in to accept the invitation.", code="not_authenticated")
    found = invitation_for_token(token)
    if found is None:
        raise NotFound("This invitation link is not valid.")
    invitation = Invitation.objects.select_for_update().select_related("organization").get(pk=found.pk)
    if invitation.status in {"revoked", "expired"}:
        raise Gone(
            f"This invitation has {'been revoked' if invitation.status == 'revoked' else 'expired'}.",
            code=f"invitation_{invitation.status}",
        )
    if invitation.status == "accepted" and invitation.accepted_by_id != user.pk:
        raise Gone("This invitation was already used.", code="invitation_accepted")
    if normalize_email(user.email) != invitation.email:
        raise Forbidden(
            f"This invitation is for {invitation.email}; you are logged in as {user.email}.",
            code="wrong_account",
        )
    if invitation.accepted_at is not None:
        # Used already: opening the link again is harmless, but it never brings
        # back a membership that was removed since.
        existing = Membership.objects.filter(user=user, organization=invitation.organization).first()
        if existing is None:
            raise Gone("This invitation was already used.", code="invitation_accepted")
        return existing
    organization = invitation.organization
    membership = Membership.objects.filter(user=user, organization=organization).first()
    if membership is None:
        # The plan's member limit, counted under the billing account's lock so two
        # acceptances cannot both take the last seat.
        account = quota_lock(organization)
        quota_check(
            account=account, organization=organization, limit="members", used=members_count(organization)
        )
        membership = Membership.objects.create(user=user, organization=organization, role=invitation.role)
    if invitation.accepted_at is None:
        invitation.accepted_at = timezone.now()
        invitation.accepted_by = user
        invitation.save(update_fields=["accepted_at", "accepted_by"])
        audit_record(
            actor=actor,
            organization=invitation.organization,
            action="invitation.accepted",
            target=membership,
            after=summarize(membership, ["role"]) | {"email": user.email},
        )
    return membership


@transaction.atomic
def api_key_create(
    *,
    actor: Actor,
    organization: Organization,
    name: str,
    scopes: list[str],
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """A new key; the full secret is returned this once and never stored."""
    name = name.strip()
    if not name:
        raise Invalid("Name the key after what will use it.", field="name")
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise Invalid(f"Unknown scopes: {', '.join(unknown)}. Known: {', '.join(SCOPES)}.", field="scopes")
    if not scopes:
        raise Invalid("Give the key at least one scope.", field="scopes")
    if expires_at is not None and expires_at <= timezone.now():
        raise Invalid("The expiry must be in the future.", field="expires_at")
    key = actor.api_key
    if key is not None and ADMIN_SCOPE not in key.scopes and not set(scopes) <= set(key.scopes):
        raise Forbidden("A key may only create keys with scopes it has itself.", code="scope_escalation")
    prefix, raw = key_generate()
    api_key = ApiKey.objects.create(
        organization=organization,
        name=name,
        prefix=prefix,
        secret_hash=key_hash(raw),
        scopes=sorted(set(scopes)),
        created_by=actor.user,
        expires_at=expires_at,
    )
    audit_record(
        actor=actor,
        organization=organization,
        action="api_key.created",
        target=api_key,
        after=summarize(api_key, ["name", "scopes", "expires_at"]),
    )
    return api_key, raw


@transaction.atomic
def api_key_revoke(*, actor: Actor, api_key: ApiKey) -> ApiKey:
    locked = ApiKey.objects.select_for_update().get(pk=api_key.pk)
    if locked.revoked_at is not None:
        return locked  # revoking twice changes nothing
    locked.revoked_at = timezone.now()
    locked.save(update_fields=["revoked_at"])
    key_forget(locked)  # forgetting early is harmless even if this transaction rolls back
    audit_record(actor=actor, organization=locked.organization, action="api_key.revoked", target=locked)
    return locked


def user_for_email(email: str) -> User | None:
    return User.objects.filter(email=normalize_email(email)).first()
