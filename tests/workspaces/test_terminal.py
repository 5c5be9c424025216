"""The live terminal end to end: real WebSockets against the live ASGI server,
which reaches a real runtime process over gRPC, which runs a real shell in a
bubblewrap sandbox."""

import asyncio
import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.test import override_settings
from django_tenants.utils import schema_context
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from apps.accounts.models import User
from apps.tenancy.audit import Actor
from apps.tenancy.models import Membership
from apps.workspaces import services
from apps.workspaces.models import Workspace
from tests.conftest import LiveServer, World, free_port
from tests.factories import make_user
from tests.runtime_server import RuntimeServer
from tests.websocket import session_cookie_for, ws_connect

TIMEOUT = 15.0
ESCAPES = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|\][^\x07]*\x07|[()][A-Za-z0-9])")


@dataclass
class TerminalClient:
    """One browser tab's socket: everything it received, split the way terminal.js splits it."""

    socket: ClientConnection
    output: bytearray = field(default_factory=bytearray)
    controls: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None

    @property
    def me(self) -> str:
        return str(self.first("hello")["you"])

    def first(self, kind: str) -> dict[str, Any]:
        return next(message for message in self.controls if message["type"] == kind)

    def last(self, kind: str) -> dict[str, Any]:
        return [message for message in self.controls if message["type"] == kind][-1]

    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    def lines(self) -> list[str]:
        """The output as a person reads it: escape sequences and carriage returns gone."""
        plain = ESCAPES.sub("", self.text()).replace("\r", "")
        return [line.strip() for line in plain.split("\n")]

    async def until(self, done: Callable[["TerminalClient"], bool], timeout: float = TIMEOUT) -> None:
        """Reads until `done(self)`; fails with what arrived if it never is."""

        async def pump() -> None:
            while not done(self):
                try:
                    frame = await self.socket.recv()
                except ConnectionClosed as closed:
                    self.close_code = closed.rcvd.code if closed.rcvd else None
                    if done(self):
                        return
                    raise AssertionError(
                        f"socket closed ({self.close_code}) first; got {self.controls} and {self.text()!r}"
                    ) from None
                if isinstance(frame, bytes):
                    self.output += frame
                else:
                    self.controls.append(json.loads(frame))

        try:
            await asyncio.wait_for(pump(), timeout)
        except TimeoutError:
            raise AssertionError(f"gave up waiting; got {self.controls} and {self.text()!r}") from None

    async def until_control(
        self, kind: str, where: Callable[[dict[str, Any]], bool] = lambda _: True
    ) -> None:
        await self.until(lambda me: any(m["type"] == kind and where(m) for m in me.controls))

    async def until_output(self, needle: str) -> None:
        await self.until(lambda me: needle in me.text())

    async def until_line(self, line: str) -> None:
        """Until a whole line of output reads `line` (a command's output, not the typed command)."""
        await self.until(lambda me: line in me.lines())

    async def until_room(self, where: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Until the room as last announced satisfies `where`; returns it."""

        def latest_matches(me: "TerminalClient") -> bool:
            rooms = [message for message in me.controls if message["type"] == "room"]
            return bool(rooms) and where(rooms[-1])

        await self.until(latest_matches)
        return self.last("room")

    async def attached(self) -> "TerminalClient":
        await self.until_control("attached")
        return self

    async def type(self, text: str) -> None:
        await self.socket.send(text.encode())

    async def control(self, **message: Any) -> None:
        await self.socket.send(json.dumps(message))


def terminal_path(workspace: Workspace, query: str = "") -> str:
    return f"/ws/workspaces/{workspace.pk}/terminal/{query}"


@pytest.fixture
def workspace(asgi_server: LiveServer, runtime_server: RuntimeServer, world: World) -> Iterator[Workspace]:
    """A running workspace of Alpha, created by its owner; destroyed afterwards."""
    with schema_context(world.alpha.schema_name):
        created = services.workspace_create(
            actor=Actor(user=world.alice), organization=world.alpha, name=f"term-{uuid.uuid4().hex[:8]}"
        )
    yield created
    with schema_context(world.alpha.schema_name):
        services.workspace_destroy(
            actor=Actor(user=world.alice),
            organization=world.alpha,
            workspace=Workspace.objects.get(pk=created.pk),
        )
        Workspace.objects.filter(pk=created.pk).delete()


@pytest.fixture
def vic(live_db: World) -> Iterator[User]:
    """A member of Alpha with the viewer role: may watch terminals, not type in them."""
    user = make_user(f"vic-{uuid.uuid4().hex[:6]}@alpha.test", "Vic")
    Membership.objects.create(user=user, organization=live_db.alpha, role=Membership.Role.VIEWER)
    yield user
    user.delete()


def test_typing_echo_hello_shows_hello(asgi_server: LiveServer, world: World, workspace: Workspace) -> None:
    cookie = session_cookie_for(world.alice)

    async def scenario() -> TerminalClient:
        async with ws_connect(asgi_server, world.alpha, terminal_path(workspace), cookie=cookie) as socket:
            alice = await TerminalClient(socket).attached()
            await alice.until_room(lambda room: room["driver"] == alice.me)
            await alice.type("echo hello\r")
            await alice.until_line("hello")
            return alice

    alice = asyncio.run(scenario())
    assert alice.first("hello")["can_drive"] is True
    assert alice.first("attached")["created"] is True
    assert [viewer["name"] for viewer in alice.last("room")["viewers"]] == [world.alice.display_name]


def test_a_quiet_terminal_stays_open(asgi_server: LiveServer, world: World, workspace: Workspace) -> None:
    """Nobody types for a while (longer than Redis's read timeouts): the terminal still works."""
    cookie = session_cookie_for(world.alice)

    async def scenario() -> TerminalClient:
        async with ws_connect(asgi_server, world.alpha, terminal_path(workspace), cookie=cookie) as socket:
            alice = await TerminalClient(socket).attached()
            await asyncio.sleep(12)
            await alice.type("echo awake-$((2*3))\r")
            await alice.until_line("awake-6")
            return alice

    alice = asyncio.run(scenario())
    assert alice.close_code is None


def test_a_resize_reaches_the_shell(asgi_server: LiveServer, world: World, workspace: Workspace) -> None:
    cookie = session_cookie_for(world.alice)

    async def scenario() -> TerminalClient:
        path = terminal_path(workspace, "?rows=30&cols=90")
        async with ws_connect(asgi_server, world.alpha, path, cookie=cookie) as socket:
            alice = await TerminalClient(socket).attached()
            await alice.until_room(lambda room: room["driver"] == alice.me)
            await alice.type("stty size\r")
            await alice.until_output("30 90")
            await alice.control(type="resize", rows=33, cols=101)
            await alice.until_control("size", lambda message: message["rows"] == 33)
            await alice.type("stty size\r")
            await alice.until_output("33 101")
            return alice

    alice = asyncio.run(scenario())
    assert alice.last("size") == {"type": "size", "rows": 33, "cols": 101}


def test_a_size_too_small_to_be_a_real_screen_is_refused_and_not_applied(
    asgi_server: LiveServer, world: World, workspace: Workspace
) -> None:
    """A page measured before layout proposes a few columns; applied, bash would redraw its
    prompt over earlier output for everyone once the real size came."""
    cookie = session_cookie_for(world.alice)

    async def scenario() -> TerminalClient:
        path = terminal_path(workspace, "?rows=30&cols=90")
        async with ws_connect(asgi_server, world.alpha, path, cookie=cookie) as socket:
            alice = await TerminalClient(socket).attached()
            await alice.until_room(lambda room: room["driver"] == alice.me)
            await alice.control(type="resize", rows=30, cols=5)
            await alice.until_control("error")
            await alice.type("stty size\r")
            await alice.until_output("30 90")
            return alice

    alice = asyncio.run(scenario())
    assert alice.last("error") == {
        "type": "error",
        "code": "invalid",
        "message": "A resize needs whole rows (4-500) and cols (20-1000).",
    }


def test_a_reconnecting_page_gets_the_scrollback_once_and_the_same_shell(
    asgi_server: LiveServer, world: World, workspace: Workspace
) -> None:
    cookie = session_cookie_for(world.alice)

    async def scenario() -> TerminalClient:
        async with ws_connect(asgi_server, world.alpha, terminal_path(workspace), cookie=cookie) as socket:
            first = await TerminalClient(socket).attached()
            await first.until_room(lambda room: room["driver"] == first.me)
            # The shell computes the marker: only its output, not the typed line, contains "marker-42".
            await first.type("export SHELL_MARK=kept; echo marker-$((6*7))\r")
            await first.until_output("marker-42")
        async with ws_connect(asgi_server, world.alpha, terminal_path(workspace), cookie=cookie) as socket:
            again = await TerminalClient(socket).attached()
            await again.until_output("marker-42")
            await again.until_room(lambda room: room["driver"] == again.me)
            await again.type("echo still-$SHELL_MARK\r")
            await again.until_output("still-kept\r\n")
            return again

    again = asyncio.run(scenario())
    assert again.first("attached")["created"] is False
    assert again.text().count("marker-42") == 1


def test_two_viewers_one_driver_refused_keystrokes_and_a_hand_over(
    asgi_server: LiveServer, world: World, workspace: Workspace
) -> None:
    alice_cookie, amy_cookie = session_cookie_for(world.alice), session_cookie_for(world.amy)
    path = terminal_path(workspace)

    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with ws_connect(asgi_server, world.alpha, path, cookie=alice_cookie) as alice_socket:
            alice = await TerminalClient(alice_socket).attached()
            await alice.until_room(lambda room: room["driver"] == alice.me)
            async with ws_connect(asgi_server, world.alpha, path, cookie=amy_cookie) as amy_socket:
                amy = await TerminalClient(amy_socket).attached()
                both = await alice.until_room(lambda room: len(room["viewers"]) == 2)
                seen["viewers"] = [viewer["name"] for viewer in both["viewers"]]
                seen["amy sees driver"] = (await amy.until_room(lambda room: len(room["viewers"]) == 2))[
                    "driver"
                ]

                # Both see the driver's output.
                await alice.type("echo both-$((1+1))\r")
                await alice.until_output("both-2")
                await amy.until_output("both-2")

                # The follower's keystrokes are refused, visibly, and never reach the shell.
                await amy.type("echo amy-$((2+3))\r")
                await amy.until_control("refused")
                seen["refusal"] = amy.last("refused")["message"]
                await alice.type("echo alice-$((3+4))\r")
                await alice.until_output("alice-7")
                await amy.until_output("alice-7")
                seen["amy's typing reached the shell"] = "amy" in alice.text() or "amy" in amy.text()

                # Taking control from an active driver asks the driver instead.
                await amy.control(type="take_control")
                await alice.until_control("control_requested")
                seen["request"] = alice.last("control_requested")
                seen["amy me"] = amy.me

                # The driver hands over; everyone sees the new driver.
                await alice.control(type="hand_over", to=amy.me)
                await alice.until_room(lambda room: room["driver"] == amy.me)
                await amy.until_room(lambda room: room["driver"] == amy.me)
                await amy.type("echo amy-drives-$((4+5))\r")
                await alice.until_output("amy-drives-9")
                await alice.type("echo x\r")
                await alice.until_control("refused")
            # Amy left: the room shrinks and nobody drives.
            seen["after amy left"] = await alice.until_room(lambda room: len(room["viewers"]) == 1)
            seen["alice me"] = alice.me
        return seen

    seen = asyncio.run(scenario())
    assert seen["viewers"] == [world.alice.display_name, world.amy.display_name]
    assert seen["amy sees driver"] != seen["amy me"]
    assert "take control" in seen["refusal"]
    assert seen["amy's typing reached the shell"] is False
    assert seen["request"]["by"] == seen["amy me"]
    assert seen["request"]["name"] == world.amy.display_name
    assert seen["after amy left"]["driver"] is None
    assert [viewer["id"] for viewer in seen["after amy left"]["viewers"]] == [seen["alice me"]]


def test_a_viewer_role_member_watches_but_cannot_drive(
    asgi_server: LiveServer, world: World, workspace: Workspace, vic: User
) -> None:
    cookie = session_cookie_for(vic)

    async def scenario() -> TerminalClient:
        async with ws_connect(asgi_server, world.alpha, terminal_path(workspace), cookie=cookie) as socket:
            viewer = await TerminalClient(socket).attached()
            room = await viewer.until_room(lambda room: len(room["viewers"]) == 1)
            assert room["driver"] is None  # alone, and still not the driver
            await viewer.type("touch /workspace/vic-was-here\r")
            await viewer.until_control("refused")
            await viewer.control(type="take_control")
            await viewer.until(lambda me: len([m for m in me.controls if m["type"] == "refused"]) == 2)
            await viewer.control(type="hand_over", to=None)
            await viewer.until(lambda me: len([m for m in me.controls if m["type"] == "refused"]) == 3)
            return viewer

    viewer = asyncio.run(scenario())
    assert viewer.first("hello")["can_drive"] is False
    refusals = [message["message"] for message in viewer.controls if message["type"] == "refused"]
    assert refusals[0] == "Your role can watch this terminal but not type in it."
    assert refusals[1] == "Your role can watch this terminal but not type in it."
    assert refusals[2] == "Only the driver can hand over control."
    assert viewer.last("room")["driver"] is None
    with schema_context(world.alpha.schema_name):
        result = services.workspace_exec(
            actor=Actor(user=world.alice),
            workspace=Workspace.objects.get(pk=workspace.pk),
            command="ls -a",
        )
    assert result.exit_code == 0
    assert "vic-was-here" not in result.stdout


@pytest.fixture
def mo(live_db: World) -> Iterator[User]:
    """A member of Alpha whose role and membership the test changes."""
    user = make_user(f"mo-{uuid.uuid4().hex[:6]}@alpha.test", "Mo")
    Membership.objects.create(user=user, organization=live_db.alpha, role=Membership.Role.MEMBER)
    yield user
    user.delete()


def test_a_demoted_member_stops_driving_and_a_removed_one_is_cut_off(
    asgi_server: LiveServer, world: World, workspace: Workspace, mo: User
) -> None:
    cookie = session_cookie_for(mo)
    membership = Membership.objects.get(user=mo, organization=world.alpha)

    def demote() -> None:
        membership.role = Membership.Role.VIEWER
        membership.save()

    async def scenario() -> TerminalClient:
        async with ws_connect(asgi_server, world.alpha, terminal_path(workspace), cookie=cookie) as socket:
            client = await TerminalClient(socket).attached()
            await client.until_room(lambda room: room["driver"] == client.me)
            await asyncio.to_thread(demote)
            await client.until(lambda me: me.last("hello")["can_drive"] is False)
            await client.until_room(lambda room: room["driver"] is None)
            await client.type("echo still-typing\r")
            await client.until_control("refused")
            await asyncio.to_thread(membership.delete)
            await client.until(lambda me: me.close_code is not None)
            return client

    with override_settings(WORKSPACES_TERMINAL_HEARTBEAT_SECONDS=0.3):
        client = asyncio.run(scenario())
    assert client.last("refused")["message"] == "Your role can watch this terminal but not type in it."
    assert "still-typing" not in client.text()
    assert client.close_code == 4403
    assert client.last("error") == {
        "type": "error",
        "code": "forbidden",
        "message": "You no longer have access to this workspace.",
    }


@pytest.mark.parametrize("who", ["anonymous", "member of beta", "no organization"])
def test_people_outside_the_organization_are_refused_at_the_handshake(
    asgi_server: LiveServer, world: World, workspace: Workspace, who: str
) -> None:
    user = {"anonymous": None, "member of beta": world.ben, "no organization": world.olga}[who]
    cookie = session_cookie_for(user) if user else None

    async def attempt() -> None:
        async with ws_connect(asgi_server, world.alpha, terminal_path(workspace), cookie=cookie):
            pass

    with pytest.raises(ConnectionRefusedError, match="403"):
        asyncio.run(attempt())


def test_beta_cannot_reach_alphas_terminal_from_its_own_host(
    asgi_server: LiveServer, world: World, workspace: Workspace
) -> None:
    """On Beta's host the id names Beta's workspaces (none with this id), never Alpha's."""
    cookie = session_cookie_for(world.bob)

    async def attempt() -> None:
        async with ws_connect(asgi_server, world.beta, terminal_path(workspace), cookie=cookie):
            pass

    with pytest.raises(ConnectionRefusedError, match="403"):
        asyncio.run(attempt())


def test_an_unknown_workspace_is_refused(asgi_server: LiveServer, world: World) -> None:
    cookie = session_cookie_for(world.alice)

    async def attempt() -> None:
        async with ws_connect(asgi_server, world.alpha, "/ws/workspaces/987654/terminal/", cookie=cookie):
            pass

    with pytest.raises(ConnectionRefusedError, match="403"):
        asyncio.run(attempt())


def test_a_stopped_workspace_says_so_and_closes(
    asgi_server: LiveServer, world: World, workspace: Workspace
) -> None:
    with schema_context(world.alpha.schema_name):
        services.workspace_stop(actor=Actor(user=world.alice), organization=world.alpha, workspace=workspace)
    cookie = session_cookie_for(world.alice)

    async def scenario() -> TerminalClient:
        async with ws_connect(asgi_server, world.alpha, terminal_path(workspace), cookie=cookie) as socket:
            client = TerminalClient(socket)
            await client.until(lambda me: me.close_code is not None)
            return client

    client = asyncio.run(scenario())
    assert client.close_code == 4409
    assert client.last("error") == {
        "type": "error",
        "code": "stopped",
        "message": "This workspace is not running. Start it to use the terminal.",
    }


def test_stopping_the_workspace_under_an_open_terminal_tells_the_page(
    asgi_server: LiveServer, world: World, workspace: Workspace
) -> None:
    cookie = session_cookie_for(world.alice)

    def stop() -> None:
        with schema_context(world.alpha.schema_name):
            services.workspace_stop(
                actor=Actor(user=world.alice),
                organization=world.alpha,
                workspace=Workspace.objects.get(pk=workspace.pk),
            )

    async def scenario() -> TerminalClient:
        async with ws_connect(asgi_server, world.alpha, terminal_path(workspace), cookie=cookie) as socket:
            client = await TerminalClient(socket).attached()
            await asyncio.to_thread(stop)
            await client.until(lambda me: me.close_code is not None)
            return client

    client = asyncio.run(scenario())
    assert client.close_code == 4409
    assert client.last("error")["code"] == "stopped"


def test_a_runtime_that_cannot_be_reached_is_reported_and_the_page_may_retry(
    asgi_server: LiveServer, world: World, workspace: Workspace
) -> None:
    cookie = session_cookie_for(world.alice)

    async def scenario() -> TerminalClient:
        async with ws_connect(asgi_server, world.alpha, terminal_path(workspace), cookie=cookie) as socket:
            client = TerminalClient(socket)
            await client.until(lambda me: me.close_code is not None)
            return client

    with override_settings(RUNTIME_ADDRESS=f"127.0.0.1:{free_port()}"):  # nothing listens there
        client = asyncio.run(scenario())
    assert client.close_code == 4503
    assert client.last("error") == {
        "type": "error",
        "code": "unavailable",
        "message": "The workspace runtime is not reachable; reconnecting in a moment.",
    }


def test_exiting_the_shell_says_so_and_the_next_connection_gets_a_new_one(
    asgi_server: LiveServer, world: World, workspace: Workspace
) -> None:
    cookie = session_cookie_for(world.alice)

    async def scenario() -> tuple[TerminalClient, TerminalClient]:
        async with ws_connect(asgi_server, world.alpha, terminal_path(workspace), cookie=cookie) as socket:
            ended = await TerminalClient(socket).attached()
            await ended.until_room(lambda room: room["driver"] == ended.me)
            await ended.type("exit 3\r")
            await ended.until(lambda me: me.close_code is not None)
        async with ws_connect(asgi_server, world.alpha, terminal_path(workspace), cookie=cookie) as socket:
            fresh = await TerminalClient(socket).attached()
            await fresh.until_room(lambda room: room["driver"] == fresh.me)
            await fresh.type("echo new-$((5*5))\r")
            await fresh.until_line("new-25")
        return ended, fresh

    ended, fresh = asyncio.run(scenario())
    assert ended.last("exit") == {"type": "exit", "code": 3}
    assert ended.close_code == 4000
    assert fresh.first("attached")["created"] is True


def test_bad_control_messages_get_a_clear_error_and_the_terminal_stays(
    asgi_server: LiveServer, world: World, workspace: Workspace
) -> None:
    cookie = session_cookie_for(world.alice)

    async def scenario() -> TerminalClient:
        async with ws_connect(asgi_server, world.alpha, terminal_path(workspace), cookie=cookie) as socket:
            client = await TerminalClient(socket).attached()
            await client.until_room(lambda room: room["driver"] == client.me)
            await socket.send("not json")
            await client.control(type="resize", rows=0, cols=80)
            await client.control(type="resize", rows="24", cols=80)
            await client.control(type="launch_missiles")
            await client.control(type="hand_over", to=42)
            await client.until(lambda me: len([m for m in me.controls if m["type"] == "error"]) == 5)
            await client.type("echo still-$((10+1))\r")
            await client.until_output("still-11")
            return client

    client = asyncio.run(scenario())
    errors = [message for message in client.controls if message["type"] == "error"]
    assert {error["code"] for error in errors} == {"invalid"}
    assert errors[0]["message"] == "Expected a JSON object."
    assert "rows (4-500)" in errors[1]["message"]
    assert errors[3]["message"] == "Unknown message type 'launch_missiles'."
