"""Notices travel from a Celery task in one organization's schema to that
organization's open pages, over a real worker and real WebSockets, and nowhere else."""

import asyncio
import contextlib
import json
import subprocess
from typing import Any

import pytest
from django_tenants.utils import schema_context

from apps.notices.models import Notice
from apps.notices.tasks import notice_create_task
from apps.tenancy.groups import tenant_group
from tests.conftest import LiveServer, World
from tests.websocket import session_cookie_for, ws_connect


async def _next_message(socket: Any, timeout: float = 10) -> dict[str, Any]:
    return dict(json.loads(await asyncio.wait_for(socket.recv(), timeout)))


def test_a_task_sent_from_alpha_writes_in_alpha_and_reaches_only_alphas_pages(
    asgi_server: LiveServer, world: World, celery_worker: subprocess.Popen[bytes]
) -> None:
    amy_cookie = session_cookie_for(world.amy)
    ben_cookie = session_cookie_for(world.ben)

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
        async with (
            ws_connect(asgi_server, world.alpha, "/ws/notices/", cookie=amy_cookie) as alpha_socket,
            ws_connect(asgi_server, world.beta, "/ws/notices/", cookie=ben_cookie) as beta_socket,
        ):
            alpha_snapshot = await _next_message(alpha_socket)
            await _next_message(beta_socket)

            def send() -> None:
                with schema_context(world.alpha.schema_name):
                    notice_create_task.delay("Build finished", "main is green")

            await asyncio.to_thread(send)
            live = await _next_message(alpha_socket)
            beta_got = []
            with contextlib.suppress(TimeoutError):
                beta_got.append(await _next_message(beta_socket, timeout=1.5))
            return alpha_snapshot, live, beta_got

    try:
        snapshot, live, beta_got = asyncio.run(scenario())
        assert snapshot["type"] == "snapshot"
        assert "Welcome to Alpha" in [notice["title"] for notice in snapshot["notices"]]
        assert live["type"] == "notice"
        assert live["notice"]["title"] == "Build finished"
        assert beta_got == []
        with schema_context(world.alpha.schema_name):
            assert Notice.objects.filter(title="Build finished").exists()
        with schema_context(world.beta.schema_name):
            assert not Notice.objects.filter(title="Build finished").exists()
    finally:
        with schema_context(world.alpha.schema_name):
            Notice.objects.filter(title="Build finished").delete()


def test_a_page_on_another_origin_cannot_open_an_organizations_socket(
    asgi_server: LiveServer, world: World
) -> None:
    cookie = session_cookie_for(world.amy)
    beta_origin = f"http://beta.localhost:{asgi_server.port}"

    async def attempt() -> None:
        async with ws_connect(asgi_server, world.alpha, "/ws/notices/", cookie=cookie, origin=beta_origin):
            pass

    with pytest.raises(ConnectionRefusedError, match="403"):
        asyncio.run(attempt())


def test_a_socket_on_an_unknown_host_is_refused(asgi_server: LiveServer, world: World) -> None:
    from apps.tenancy.models import Organization

    ghost = Organization(slug="ghost", name="Ghost")

    async def attempt() -> None:
        async with ws_connect(asgi_server, ghost, "/ws/notices/"):
            pass

    with pytest.raises(ConnectionRefusedError, match="403"):
        asyncio.run(attempt())


def test_group_names_carry_the_schema(world: World, live_db: World) -> None:
    with schema_context(world.alpha.schema_name):
        assert tenant_group("notices") == "t.org_alpha.notices"
    with pytest.raises(RuntimeError, match="public"):
        tenant_group("notices")
