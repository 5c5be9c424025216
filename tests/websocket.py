"""A real WebSocket client (the `websockets` library) for the live ASGI server."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from django.test import Client
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from apps.accounts.models import User
from apps.tenancy.models import Organization
from tests.conftest import LiveServer, host


def session_cookie_for(user: User) -> str:
    """Log the user in for real (a committed session row) and return the cookie."""
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


@asynccontextmanager
async def ws_connect(
    server: LiveServer,
    organization: Organization | None,
    path: str,
    *,
    cookie: str | None = None,
    origin: str | None = "same",
) -> AsyncIterator[ClientConnection]:
    """Connect to `path` on the organization's host (resolved to loopback, as a
    browser resolves *.localhost). A refused handshake raises ConnectionRefusedError."""
    target = f"{host(organization)}:{server.port}"
    headers = {"Cookie": cookie} if cookie else {}
    if origin == "same":
        origin = f"http://{target}"
    try:
        async with connect(
            f"ws://{target}{path}",
            host="127.0.0.1",
            port=server.port,
            additional_headers=headers,
            origin=origin,  # type: ignore[arg-type]
            open_timeout=10,
        ) as socket:
            yield socket
    except InvalidStatus as exc:
        raise ConnectionRefusedError(f"handshake refused: {exc.response.status_code}") from exc
