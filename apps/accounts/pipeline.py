"""Our steps of the social-auth pipeline (SOCIAL_AUTH_PIPELINE in settings).

A login by a provider needs an email the provider has verified; only then may
it sign in an existing account with that email, or create one. Nothing is
written before these checks pass, and the view runs the whole pipeline in one
transaction, so a refusal leaves nothing behind."""

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from social_core.backends.base import BaseAuth
from social_core.exceptions import AuthPolicyError

from apps.accounts.models import User, normalize_email
from apps.accounts.sso import sso_login_record, sso_required_for_email
from apps.accounts.sso_backends import GithubBackend, OrganizationOIDCBackend
from apps.tenancy.audit import Actor, client_ip, request_id

Backend = BaseAuth[HttpResponse]


class LoginRefused(AuthPolicyError):
    """A refusal with a message for the person trying to log in."""

    def __init__(self, backend: Backend, message: str, *, code: str) -> None:
        super().__init__(backend, code=code, stage="pipeline")
        self.user_message = message


def _claims_say_verified(value: object) -> bool:
    # Some providers send the claim as a string.
    return value is True or (isinstance(value, str) and value.lower() == "true")


def require_verified_email(
    backend: Backend, details: dict[str, Any], response: dict[str, Any], *args: Any, **kwargs: Any
) -> dict[str, Any]:
    email = ""
    if isinstance(backend, GithubBackend):
        emails = response.get("emails") or []
        verified = [
            entry["email"]
            for entry in emails
            if isinstance(entry, dict) and entry.get("primary") and entry.get("verified")
        ]
        email = verified[0] if verified else ""
    else:
        claims: dict[str, Any] = {}
        if isinstance(backend, OrganizationOIDCBackend) and backend.id_token:
            claims = backend.id_token
        verified_flag = response.get("email_verified", claims.get("email_verified"))
        if _claims_say_verified(verified_flag):
            email = str(details.get("email") or "")
    if not email or "@" not in email:
        raise LoginRefused(
            backend,
            f"{backend.title} has not verified your email address, so we cannot tell it is yours. "
            f"Verify it with {backend.title}, then log in again.",
            code="email_not_verified",
        )
    return {"details": {**details, "email": normalize_email(email)}}


def associate_by_verified_email(
    backend: Backend, details: dict[str, Any], *args: Any, user: User | None = None, **kwargs: Any
) -> dict[str, Any] | None:
    """Never link a provider to an existing account just because the emails match.

    Our own accounts' addresses may be unconfirmed (older accounts and fresh
    sign-ups are), and an organization's domain is claimed, not proven by DNS: linking by
    email would let whoever registered an address first, or an owner's own
    provider, take over the account. A person links a provider by logging in
    first and connecting it (then `user` is set and this step is skipped)."""
    if user is not None:
        _refuse_where_sso_is_required(backend, user.email)
        return None
    email = details["email"]
    existing = User.objects.filter(email=normalize_email(email)).first()
    if existing is None:
        _refuse_where_sso_is_required(backend, email)
        return None
    raise LoginRefused(
        backend,
        f"An Agentyard account already uses {email}. Log in to it first, then connect "
        f"{backend.title} from your account's connected logins.",
        code="email_in_use",
    )


def _refuse_where_sso_is_required(backend: Backend, email: str) -> None:
    """Members bound to their organization's SSO may not use GitHub or Google instead."""
    if isinstance(backend, OrganizationOIDCBackend):
        return
    sso = sso_required_for_email(email=email)
    if sso is not None:
        raise LoginRefused(
            backend,
            f"{sso.organization.name} requires its single sign-on for {email}; log in with it instead.",
            code="sso_required",
        )


def create_user(
    backend: Backend, details: dict[str, Any], *args: Any, user: User | None = None, **kwargs: Any
) -> dict[str, Any]:
    if user is not None:
        return {"is_new": False}
    # No password: the person logs in by this provider until they set one. The
    # provider verified the address (require_verified_email ran before this step).
    created = User.objects.create_user(
        details["email"],
        None,
        name=str(details.get("fullname") or "")[:150],
        email_verified_at=timezone.now(),
    )
    return {"user": created, "is_new": True}


def record_login(
    backend: Backend, *args: Any, user: User | None = None, is_new: bool = False, **kwargs: Any
) -> None:
    if user is None:
        return
    organization = (
        backend.organization_sso().organization if isinstance(backend, OrganizationOIDCBackend) else None
    )
    request: HttpRequest = backend.strategy.request  # type: ignore[attr-defined]  # DjangoStrategy's
    actor = Actor(
        user=user,
        ip=client_ip(request),
        user_agent=request.headers.get("User-Agent", "")[:300],
        request_id=request_id(request),
    )
    sso_login_record(
        actor=actor, user=user, provider=backend.name, organization=organization, is_new_user=is_new
    )
