"""Writing the audit log. Services call `audit_record` inside their own transaction,
so an event exists exactly when the change it describes does."""

import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import models
from django.http import HttpRequest

from apps.accounts.models import User
from apps.tenancy.models import ApiKey, AuditEvent, Organization


@dataclass(frozen=True)
class Actor:
    """Who is acting and from where: a person, an API key, or the system."""

    user: User | None = None
    api_key: ApiKey | None = None
    ip: str | None = None
    user_agent: str = ""
    request_id: str = ""

    @classmethod
    def from_request(cls, request: HttpRequest) -> "Actor":
        user = request.user if request.user.is_authenticated else None
        return cls(
            user=user,
            api_key=getattr(request, "api_key", None),
            ip=client_ip(request),
            user_agent=request.headers.get("User-Agent", "")[:300],
            request_id=request_id(request),
        )

    @classmethod
    def system(cls) -> "Actor":
        return cls()


def client_ip(request: HttpRequest) -> str | None:
    """The client's address. Behind a proxy that appends to X-Forwarded-For
    (TRUST_X_FORWARDED_FOR, set by docker/compose.yaml for its nginx), the last
    entry, which that proxy wrote; the earlier ones are the client's own claims."""
    if settings.TRUST_X_FORWARDED_FOR:
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        if forwarded:
            return forwarded.rsplit(",", 1)[-1].strip() or None
    return request.META.get("REMOTE_ADDR") or None


def request_id(request: HttpRequest) -> str:
    existing = getattr(request, "request_id", None)
    if existing is None:
        existing = request.headers.get("X-Request-ID", "")[:64] or uuid.uuid4().hex
        request.request_id = existing  # type: ignore[attr-defined]
    return str(existing)


def summarize(instance: models.Model, fields: list[str]) -> dict[str, Any]:
    return {field: _plain(getattr(instance, field)) for field in fields}


def _plain(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return str(value)


def audit_record(
    *,
    actor: Actor,
    organization: Organization | None,
    action: str,
    target: models.Model | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> AuditEvent:
    changes: dict[str, Any] = {}
    if before is not None:
        changes["before"] = before
    if after is not None:
        changes["after"] = after
    return AuditEvent.objects.create(
        organization=organization,
        actor=actor.user,
        actor_email=actor.user.email
        if actor.user
        else (f"key:{actor.api_key.prefix}" if actor.api_key else ""),
        api_key=actor.api_key,
        action=action,
        target_type=target._meta.label if target is not None else "",
        target_id=str(target.pk) if target is not None else "",
        target_repr=str(target)[:200] if target is not None else "",
        changes=changes,
        ip=actor.ip,
        user_agent=actor.user_agent,
        request_id=actor.request_id,
    )
