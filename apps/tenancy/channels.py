"""Tenant resolution for WebSockets, which django-tenants does not do.

The middleware resolves the organization from the Host header the way the
HTTP middleware does and puts it in the scope. Consumers run their database
work through `tenant_database_sync_to_async`, which sets the schema for the
duration of each call on the thread that runs it.
"""

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

from channels.db import database_sync_to_async

from apps.tenancy.db import tenant_connection
from apps.tenancy.hosts import is_public_host, split_host
from apps.tenancy.models import Organization
from apps.tenancy.selectors import organization_for_host

P = ParamSpec("P")
R = TypeVar("R")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return ""


@database_sync_to_async
def _organization_for(hostname: str) -> Organization | None:
    tenant_connection().set_schema_to_public()
    organization = organization_for_host(hostname)
    if organization is None or organization.status != Organization.Status.ACTIVE:
        return None
    return organization


class TenantWebsocketMiddleware:
    """Puts scope["tenant"] (an active Organization, or None on the public host).

    Refuses the handshake (403) for unknown hosts, inactive organizations and
    cross-origin pages: a page on beta.<domain> may not open acme's sockets
    with the visitor's cookies.
    """

    def __init__(self, inner: Callable[..., Awaitable[None]]) -> None:
        self.inner = inner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hostname = split_host(_header(scope, b"host"))[0]
        origin = _header(scope, b"origin")
        if origin and split_host(urlsplit(origin).netloc)[0] != hostname:
            await _deny(send)
            return
        tenant = None
        if not is_public_host(hostname):
            tenant = await _organization_for(hostname)
            if tenant is None:
                await _deny(send)
                return
        await self.inner({**scope, "tenant": tenant}, receive, send)


async def _deny(send: Send) -> None:
    # Closing before accepting makes the ASGI server answer the handshake with 403.
    await send({"type": "websocket.close", "code": 4403})


def tenant_database_sync_to_async(func: Callable[..., R]) -> Callable[..., Awaitable[R]]:
    """Like database_sync_to_async, with the tenant (the first argument) as the schema."""

    @wraps(func)
    def in_tenant(tenant: Organization, *args: Any, **kwargs: Any) -> R:
        tenant_connection().set_tenant(tenant)
        try:
            return func(tenant, *args, **kwargs)
        finally:
            tenant_connection().set_schema_to_public()

    return database_sync_to_async(in_tenant)
