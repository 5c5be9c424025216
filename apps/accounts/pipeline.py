"""Our steps of the social-auth pipeline (SOCIAL_AUTH_PIPELINE in settings).

A login by a provider needs an email the provider has verified; only then may
it sign in an existing account with that email, or create one. Nothing is
written before these checks pass, and the view runs the whole pipeline in one
transaction, so a refusal leaves nothing behind."""

from typing import Any

from django.http import HttpRequest, HttpResponse
from social_core.backends.base import BaseAuth
from social_core.exceptions import AuthPolicyError

from apps.accounts.models import User, normalize_email
from apps.accounts.sso import email_domain, sso_login_record
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
    if user is not None:
        return None
    email = details["email"]
    existing = User.objects.filter(email=normalize_email(email)).first()
    if existing is None:
        return None
    if isinstance(backend, OrganizationOIDCBackend):
        # An organization's provider vouches only for its own people: addresses at
        # the domain it claims, of accounts that are already its members. The
        # domain is claimed, not proven (no DNS check yet), so an owner could
        # claim someone else's; without the membership rule their provider could
        # then sign in to any existing account at that domain.
        sso = backend.organization_sso()
        at_domain = bool(sso.verified_domain) and email_domain(email) == sso.verified_domain
        member = existing.memberships.filter(organization=sso.organization).exists()
        if not (at_domain and member):
            raise LoginRefused(
                backend,
                f"An Agentyard account already uses {email}, and {sso.organization.name}'s single "
                "sign-on may only log in its own members' accounts at its domain. Log in with your "
                "password instead.",
                code="email_in_use",
            )
    if not existing.is_active:
        raise LoginRefused(backend, "This account is deactivated.", code="authentication_disallowed")
    return {"user": existing, "is_new": False}


def create_user(
    backend: Backend, details: dict[str, Any], *args: Any, user: User | None = None, **kwargs: Any
) -> dict[str, Any]:
    if user is not None:
        return {"is_new": False}
    # No password: the person logs in by this provider until they set one.
    created = User.objects.create_user(details["email"], None, name=str(details.get("fullname") or "")[:150])
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
