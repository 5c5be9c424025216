"""Confirming that a person receives mail at their account's address.

A confirmation link carries a signed, timestamped (user, email) pair: it works
for MAX_AGE, and only while the account still has that address, so a link sent
to an old address cannot confirm a new one. Opening the link shows a button;
only the POST confirms, so mail scanners that prefetch links confirm nothing.

Nothing is refused to unconfirmed accounts yet: this proves, shows and records."""

import dataclasses
from typing import Any

from django.conf import settings
from django.core import signing
from django.core.cache import cache
from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone

from apps.accounts.models import User
from apps.core.errors import Invalid
from apps.tenancy.audit import Actor, audit_record

SALT = "apps.accounts.email-confirmation"
MAX_AGE = 3 * 24 * 3600  # seconds a link works
RESEND_INTERVAL = 60  # seconds between two mails to one person


def confirmation_token(user: User) -> str:
    return signing.dumps({"user": user.pk, "email": user.email}, salt=SALT)


def confirmation_path(token: str) -> str:
    return f"/account/confirm/{token}/"


def _throttle_key(user: User) -> str:
    return f"email-confirmation-sent:{user.pk}"


def email_confirmation_send(*, user: User, url_base: str) -> None:
    """Mail `user` a link to confirm their current address once the transaction commits.

    `url_base` is the public site's scheme and host, e.g. "https://agentyard.example"."""
    email = user.email
    link = url_base.rstrip("/") + confirmation_path(confirmation_token(user))
    days = MAX_AGE // (24 * 3600)

    def send() -> None:
        send_mail(
            subject="Confirm your email address for Agentyard",
            message=(
                f"Confirm that {email} is your address on Agentyard by opening this link "
                f"within {days} days and pressing the button:\n\n{link}\n\n"
                "If you did not sign up or change your email on Agentyard, ignore this message.\n"
            ),
            from_email=settings.DEFAULT_FROM_EMAIL,
            recipient_list=[email],
        )
        cache.set(_throttle_key(user), 1, timeout=RESEND_INTERVAL)

    transaction.on_commit(send)


def email_confirmation_resend(*, user: User, url_base: str) -> bool:
    """Send another link unless one went out in the last RESEND_INTERVAL seconds; True if sent."""
    if user.email_verified_at is not None:
        return False
    if not cache.add(_throttle_key(user), 1, timeout=RESEND_INTERVAL):
        return False
    email_confirmation_send(user=user, url_base=url_base)
    return True


def _payload(token: str) -> dict[str, Any]:
    try:
        payload = signing.loads(token, salt=SALT, max_age=MAX_AGE)
    except signing.SignatureExpired:
        raise Invalid(
            "This confirmation link has expired. Log in and send yourself a new one.", code="link_expired"
        ) from None
    except signing.BadSignature:
        raise Invalid(
            "This confirmation link is not valid. Check that you copied all of it.", code="link_invalid"
        ) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("user"), int):
        raise Invalid("This confirmation link is not valid.", code="link_invalid")
    return payload


def _user_for(token: str, *, lock: bool = False) -> User:
    payload = _payload(token)
    users = User.objects.select_for_update() if lock else User.objects.all()
    user = users.filter(pk=payload["user"], is_active=True).first()
    if user is None or user.email != payload.get("email"):
        raise Invalid(
            "This confirmation link is for an address this account no longer has. "
            "Use the link in the most recent email we sent.",
            code="link_stale",
        )
    return user


def user_for_confirmation_token(token: str) -> User:
    """The account a valid, current link confirms; Invalid when the link is expired, forged or stale."""
    return _user_for(token)


@transaction.atomic
def email_confirm(*, actor: Actor, token: str) -> User:
    """Mark the account's address confirmed (once) and audit it."""
    user = _user_for(token, lock=True)
    if user.email_verified_at is None:
        user.email_verified_at = timezone.now()
        user.save(update_fields=["email_verified_at"])
        # Opened anonymously (another browser, a phone): the link's holder reads the mailbox.
        confirmer = actor if actor.user is not None else dataclasses.replace(actor, user=user)
        audit_record(
            actor=confirmer,
            organization=None,
            action="account.email_confirmed",
            target=user,
            after={"email": user.email},
        )
    return user
