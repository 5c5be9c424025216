"""A person's own account: name, email and password, each change audited with it."""

from django.contrib.auth.forms import SetPasswordForm
from django.db import IntegrityError, transaction

from apps.accounts.email_confirmation import email_confirmation_send
from apps.accounts.models import User, normalize_email
from apps.core.errors import Conflict, Invalid
from apps.tenancy.audit import Actor, audit_record


def email_taken(*, email: str, by_other_than: User) -> bool:
    return User.objects.filter(email__iexact=normalize_email(email)).exclude(pk=by_other_than.pk).exists()


@transaction.atomic
def account_update(*, actor: Actor, user: User, name: str, email: str, confirm_url_base: str) -> User:
    """Change the name and email; the caller has checked the current password for an email change.

    A new email is unconfirmed until the person opens the link mailed to it
    (`confirm_url_base`: the public site's scheme and host)."""
    locked = User.objects.select_for_update().get(pk=user.pk)
    name, email = name.strip(), normalize_email(email)
    if not email:
        raise Invalid("Enter an email address.", field="email")
    if email_taken(email=email, by_other_than=locked):
        raise Conflict("Another account uses this email.", code="email_taken", field="email")
    old_name, old_email = locked.name, locked.email
    locked.name, locked.email = name, email
    if old_email != email:
        locked.email_verified_at = None
    try:
        with transaction.atomic():
            locked.save(update_fields=["name", "email", "email_verified_at"])
    except IntegrityError:  # taken a moment ago
        raise Conflict("Another account uses this email.", code="email_taken", field="email") from None
    if old_email != email:
        audit_record(
            actor=actor,
            organization=None,
            action="account.email_changed",
            target=locked,
            before={"email": old_email},
            after={"email": email},
        )
        email_confirmation_send(user=locked, url_base=confirm_url_base)
    if old_name != name:
        audit_record(
            actor=actor,
            organization=None,
            action="account.name_changed",
            target=locked,
            before={"name": old_name},
            after={"name": name},
        )
    user.name, user.email, user.email_verified_at = locked.name, locked.email, locked.email_verified_at
    return locked


@transaction.atomic
def account_password_change(*, actor: Actor, form: "SetPasswordForm[User]") -> User:
    """Save a valid (Set)PasswordChangeForm; the caller keeps the session with update_session_auth_hash."""
    user = form.save()
    audit_record(actor=actor, organization=None, action="account.password_changed", target=user)
    return user
