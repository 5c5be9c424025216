"""The live terminal: a browser's WebSocket <-> the PTY session "main" of the
workspace's sandbox in the runtime (a separate process, over gRPC).

    ws(s)://<org host>/ws/workspaces/<workspace id>/terminal/?rows=24&cols=80

Every socket attaches its own stream to the one shell (the runtime fans the
output out and replays the scrollback to each new attachment), so output never
passes through Redis. Who watches and who drives is shared state in Redis
(apps/workspaces/terminals.py, where the hand-over rules are), announced to
every socket of the workspace through a Channels group.

Protocol. Binary frames carry terminal bytes both ways; text frames carry JSON
control messages, each with a "type".

Browser -> server:
  binary                         keystrokes (UTF-8). Reach the shell only from
                                 the driver; anyone else gets "refused".
  {"type": "resize", "rows": R, "cols": C}
                                 the driver's screen size (1..500 x 1..1000);
                                 ignored from followers.
  {"type": "take_control"}       see terminals.py for when it succeeds; when
                                 not, the driver gets "control_requested".
  {"type": "hand_over", "to": "<viewer id>"}   the driver gives control away;
  {"type": "hand_over", "to": null}            or releases it to nobody.

Server -> browser:
  {"type": "hello", "you": "<viewer id>", "can_drive": bool}
                                 first, and again if the person's role changes.
  {"type": "room", "viewers": [{"id", "name", "can_drive"}], "driver": id|null}
                                 whenever someone joins, leaves, takes or hands over.
  {"type": "attached", "rows": R, "cols": C, "created": bool}
                                 the shell is attached; its scrollback follows as
                                 binary frames, then live output. A reconnecting
                                 page clears its screen here, so nothing repeats.
  binary                         terminal output.
  {"type": "size", "rows": R, "cols": C}    the driver resized; followers match.
  {"type": "control_requested", "by": id, "name": str}    to the driver only.
  {"type": "refused", "message": str}       input or an action was not allowed.
  {"type": "error", "code": str, "message": str}
                                 "invalid" (a bad message; the socket stays), or
                                 before closing: "stopped", "unavailable",
                                 "forbidden" (the person's membership ended),
                                 "feature_not_in_plan" (the plan lacks the
                                 terminal; also "feature" and "plans"),
                                 "behind" (this socket fell behind the output),
                                 "runtime".
  {"type": "exit", "code": N}    the shell exited (then close 4000).

Membership and role are checked again every heartbeat (15 s): a removed member
is cut off (4403), one who lost `workspaces.operate` stops driving. The plan's
`terminal` feature is checked at connect (a member whose organization lacks it gets
the socket, an error "feature_not_in_plan" naming the plans that have it, then
4403) and again every heartbeat.

Close codes: 4000 the shell exited (the page offers a new one), 4403 access
ended (the page stops retrying), 4409 the workspace is not running (the page
offers Start), 4503 the runtime is not reachable (the page retries). People
outside the organization, anonymous visitors and unknown workspaces are refused
at the handshake (HTTP 403).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import weakref
from dataclasses import dataclass, replace
from typing import Any, Final
from urllib.parse import parse_qs

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from apps.accounts.models import User
from apps.billing.features import FeatureNotInPlan, feature_refusal
from apps.tenancy.channels import tenant_database_sync_to_async
from apps.tenancy.models import Membership, Organization
from apps.tenancy.roles import role_allows
from apps.workspaces.models import Workspace
from apps.workspaces.terminals import (
    ACTIVITY_NOTE_SECONDS,
    HEARTBEAT_SECONDS,
    Room,
    TerminalRoom,
    Viewer,
    new_viewer_id,
    room_group,
)
from runtime.client import (
    AsyncRuntimeClient,
    LimitExceeded,
    PtyExited,
    PtyOpened,
    PtyStream,
    RuntimeServiceError,
    RuntimeUnavailable,
    SandboxNotFound,
    SandboxNotRunning,
)

logger = logging.getLogger(__name__)

SESSION: Final = "main"
MAX_INPUT_BYTES: Final = 64 * 1024
MAX_ROWS: Final = 500
MAX_COLS: Final = 1000
# Below these, the screen was measured before the page was laid out: applied, bash redraws
# its prompt over the line above once the real size comes (static/js/terminal.js agrees).
MIN_ROWS: Final = 4
MIN_COLS: Final = 20
# At most one "refused" message a second: a follower typing gets told, not flooded.
REFUSAL_INTERVAL_SECONDS: Final = 1.0
STOP_SETTLE_SECONDS: Final = 3.0

CLOSE_EXITED: Final = 4000
CLOSE_FORBIDDEN: Final = 4403
CLOSE_NOT_RUNNING: Final = 4409
CLOSE_UNAVAILABLE: Final = 4503

STOPPED_MESSAGE: Final = "This workspace is not running. Start it to use the terminal."
UNAVAILABLE_MESSAGE: Final = "The workspace runtime is not reachable; reconnecting in a moment."
FORBIDDEN_MESSAGE: Final = "You no longer have access to this workspace."
BEHIND_MESSAGE: Final = "The terminal fell behind its output; reconnecting."


@dataclass(frozen=True)
class TerminalAccess:
    user_id: int
    name: str
    can_drive: bool
    running: bool
    sandbox_id: str
    # The plan lacks the terminal: said to the member, then the socket closes (4403).
    refusal: FeatureNotInPlan | None = None


@tenant_database_sync_to_async
def _terminal_access(tenant: Organization, user: User, workspace_id: int) -> TerminalAccess | None:
    """What this person may do with this workspace's terminal; None: refuse the socket."""
    if not user.is_authenticated:
        return None
    membership = (
        Membership.objects.filter(user=user, user__is_active=True, organization=tenant).only("role").first()
    )
    if membership is None or not role_allows(membership.role, "workspaces.view"):
        return None
    workspace = Workspace.objects.filter(pk=workspace_id).exclude(state=Workspace.State.DELETED).first()
    if workspace is None:
        return None
    refusal = feature_refusal(organization=tenant, key="terminal")
    return TerminalAccess(
        user_id=user.pk,
        name=user.display_name,
        can_drive=role_allows(membership.role, "workspaces.operate"),
        running=workspace.is_running,
        sandbox_id=workspace.sandbox_id,
        refusal=refusal,
    )


_runtime_clients: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[str, str], AsyncRuntimeClient]
] = weakref.WeakKeyDictionary()


def _runtime() -> AsyncRuntimeClient:
    """One gRPC channel per event loop (and settings), shared by its sockets."""
    per_loop = _runtime_clients.setdefault(asyncio.get_running_loop(), {})
    key = (str(settings.RUNTIME_ADDRESS), str(settings.RUNTIME_SECRET))
    client = per_loop.get(key)
    if client is None:
        client = per_loop[key] = AsyncRuntimeClient(*key)
    return client


def _size(query: dict[str, list[str]], name: str, default: int, least: int, most: int) -> int:
    try:
        value = int(query.get(name, [str(default)])[0])
    except ValueError:
        return default
    return value if least <= value <= most else default


class TerminalConsumer(AsyncWebsocketConsumer):
    tenant: Organization
    workspace_id: int
    sandbox_id: str
    viewer: Viewer
    room: TerminalRoom
    group = ""  # the room's Channels group, once joined
    stream: PtyStream | None = None
    relay_task: asyncio.Task[None] | None = None
    heartbeat_task: asyncio.Task[None] | None = None
    joined = False
    # Whether this socket drives, kept from the room's announcements (newest version wins).
    driving = False
    room_version = -1
    last_refusal = 0.0
    last_activity_note = 0.0

    async def connect(self) -> None:
        tenant = self.scope.get("tenant")
        if tenant is None:
            await self.close(code=4404)
            return
        workspace_id = int(self.scope["url_route"]["kwargs"]["workspace_id"])
        access = await _terminal_access(tenant, self.scope["user"], workspace_id)
        if access is None:
            await self.close(code=4403)
            return
        self.tenant = tenant
        self.workspace_id = workspace_id
        self.sandbox_id = access.sandbox_id
        self.viewer = Viewer(
            id=new_viewer_id(),
            user_id=access.user_id,
            name=access.name,
            can_drive=access.can_drive,
            joined_at=time.time(),
        )
        await self.accept()
        if access.refusal is not None:
            # Accepted first so the page can show why; a refused handshake tells it nothing.
            await self._refuse_feature(access.refusal)
            return
        await self._send_json({"type": "hello", "you": self.viewer.id, "can_drive": self.viewer.can_drive})
        if not access.running:
            await self._fail("stopped", STOPPED_MESSAGE, CLOSE_NOT_RUNNING)
            return
        self.room = TerminalRoom(tenant.schema_name, workspace_id)
        self.group = room_group(tenant.schema_name, workspace_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        self.driving = await self.room.join(self.viewer)
        self.joined = True
        await self._announce_room()
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        rows = _size(query, "rows", 24, MIN_ROWS, MAX_ROWS)
        cols = _size(query, "cols", 80, MIN_COLS, MAX_COLS)
        self.stream = await _runtime().open_pty(
            tenant.schema_name, self.sandbox_id, SESSION, rows=rows, cols=cols, replay=True
        )
        self.relay_task = asyncio.create_task(self._relay(self.stream))
        self.heartbeat_task = asyncio.create_task(self._heartbeat())
        for task in (self.relay_task, self.heartbeat_task):
            task.add_done_callback(self._task_done)

    async def disconnect(self, code: int) -> None:
        for task in (self.relay_task, self.heartbeat_task):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        if self.stream is not None:
            stream, self.stream = self.stream, None
            with contextlib.suppress(Exception):
                await stream.close()
        if self.joined:
            self.joined = False
            await self.room.leave(self.viewer.id)
            await self._announce_room()
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    # -- browser -> server ------------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if bytes_data is not None:
            await self._input(bytes_data)
            return
        try:
            message = json.loads(text_data or "")
        except ValueError:
            message = None
        if not isinstance(message, dict):
            await self._send_json({"type": "error", "code": "invalid", "message": "Expected a JSON object."})
            return
        kind = message.get("type")
        if kind == "resize":
            await self._resize(message)
        elif kind == "take_control":
            await self._take_control()
        elif kind == "hand_over":
            await self._hand_over(message.get("to"))
        else:
            await self._send_json(
                {"type": "error", "code": "invalid", "message": f"Unknown message type {kind!r}."}
            )

    async def _input(self, data: bytes) -> None:
        if self.stream is None:
            return
        if len(data) > MAX_INPUT_BYTES:
            await self._refuse(
                f"Input of more than {MAX_INPUT_BYTES // 1024} KiB at once was not sent.", force=True
            )
            return
        if not self.viewer.can_drive:
            await self._refuse("Your role can watch this terminal but not type in it.")
            return
        if not self.driving:
            await self._refuse("You are following; take control to type.")
            return
        await self.stream.write(data)
        now = time.monotonic()
        if now - self.last_activity_note > ACTIVITY_NOTE_SECONDS:
            self.last_activity_note = now
            if not await self.room.note_activity(self.viewer.id):
                self.driving = False  # someone took over a moment ago; the announcement is on its way

    async def _resize(self, message: dict[str, Any]) -> None:
        rows, cols = message.get("rows"), message.get("cols")
        if not (
            isinstance(rows, int)
            and isinstance(cols, int)
            and MIN_ROWS <= rows <= MAX_ROWS
            and MIN_COLS <= cols <= MAX_COLS
        ):
            await self._send_json(
                {
                    "type": "error",
                    "code": "invalid",
                    "message": (
                        f"A resize needs whole rows ({MIN_ROWS}-{MAX_ROWS}) and cols ({MIN_COLS}-{MAX_COLS})."
                    ),
                }
            )
            return
        if self.stream is None or not self.driving:
            return  # a follower's window size does not change the shared screen
        await self.stream.resize(rows, cols)
        await self.channel_layer.group_send(self.group, {"type": "terminal.size", "rows": rows, "cols": cols})

    async def _take_control(self) -> None:
        if not self.joined:
            return
        if not self.viewer.can_drive:
            await self._refuse("Your role can watch this terminal but not type in it.", force=True)
            return
        result = await self.room.take(self.viewer)
        if result.taken:
            self.driving = True
            await self._announce_room()
            return
        await self._refuse("Someone else is driving; they have been asked to hand over.", force=True)
        await self.channel_layer.group_send(
            self.group,
            {
                "type": "terminal.request",
                "to": result.driver or "",
                "by": self.viewer.id,
                "name": self.viewer.name,
            },
        )

    async def _hand_over(self, target: Any) -> None:
        if not self.joined:
            return
        if target is not None and not isinstance(target, str):
            await self._send_json(
                {"type": "error", "code": "invalid", "message": "hand_over needs a viewer id or null."}
            )
            return
        outcome = await self.room.hand_over(self.viewer.id, target or None)
        if outcome in {"handed", "released"}:
            self.driving = False
            await self._announce_room()
            return
        messages = {
            "not_driver": "Only the driver can hand over control.",
            "no_viewer": "That viewer has left.",
            "cannot_drive": "That viewer's role cannot type in terminals.",
        }
        await self._refuse(messages.get(outcome, "Control was not handed over."), force=True)

    # -- runtime -> browser -----------------------------------------------------------------------

    async def _relay(self, stream: PtyStream) -> None:
        try:
            async for item in stream:
                if isinstance(item, bytes):
                    await self.send(bytes_data=item)
                elif isinstance(item, PtyOpened):
                    await self._send_json(
                        {"type": "attached", "rows": item.rows, "cols": item.cols, "created": item.created}
                    )
                elif isinstance(item, PtyExited):
                    if await self._sandbox_stopping(killed=item.exit_code < 0):
                        break  # the workspace was stopped, which ended the shell
                    await self._send_json({"type": "exit", "code": item.exit_code})
                    await self.close(code=CLOSE_EXITED)
                    return
            # The stream ended without the shell exiting: the sandbox stopped under us.
            await self._fail("stopped", STOPPED_MESSAGE, CLOSE_NOT_RUNNING)
        except (SandboxNotRunning, SandboxNotFound):
            await self._fail("stopped", STOPPED_MESSAGE, CLOSE_NOT_RUNNING)
        except RuntimeUnavailable:
            await self._fail("unavailable", UNAVAILABLE_MESSAGE, CLOSE_UNAVAILABLE)
        except LimitExceeded:
            # This socket fell too far behind the output (a slow network); attaching again catches up.
            await self._fail("behind", BEHIND_MESSAGE, CLOSE_UNAVAILABLE)
        except RuntimeServiceError as exc:
            logger.warning("terminal of %s failed: %s", self.viewer.id, exc)
            await self._fail("runtime", f"The terminal failed: {exc}", CLOSE_UNAVAILABLE)
        except OSError:
            pass  # the browser went away while we were sending to it; disconnect() cleans up

    async def _sandbox_stopping(self, *, killed: bool) -> bool:
        """Whether the shell ended because its sandbox stops. A stop kills the shell first and
        says "stopped" a moment later, so a killed shell gets a few looks."""
        deadline = time.monotonic() + (STOP_SETTLE_SECONDS if killed else 0)
        while True:
            try:
                if not (await _runtime().get_sandbox(self.tenant.schema_name, self.sandbox_id)).running:
                    return True
            except RuntimeServiceError:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.1)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(getattr(settings, "WORKSPACES_TERMINAL_HEARTBEAT_SECONDS", HEARTBEAT_SECONDS))
            # Membership and role are checked again: a removed member is cut off, a demoted one stops driving.
            access = await _terminal_access(self.tenant, self.scope["user"], self.workspace_id)
            if access is None:
                await self._fail("forbidden", FORBIDDEN_MESSAGE, CLOSE_FORBIDDEN)
                return
            if access.refusal is not None:
                await self._refuse_feature(access.refusal)
                return
            if access.can_drive != self.viewer.can_drive:
                await self._role_changed(can_drive=access.can_drive)
                continue
            if not await self.room.heartbeat(self.viewer.id):
                await self.room.join(self.viewer)  # dropped as stale (a long pause): back in
                await self._announce_room()
                continue
            room = await self.room.snapshot()
            if room.dropped:
                await self._announce_room(room)  # someone's web process died; show them gone
            else:
                self._learn(room.driver, room.version)  # in case an announcement was lost

    async def _role_changed(self, *, can_drive: bool) -> None:
        if self.driving and not can_drive:
            await self.room.hand_over(self.viewer.id, None)
            self.driving = False
        self.viewer = replace(self.viewer, can_drive=can_drive)
        self.driving = await self.room.join(self.viewer) or self.driving  # refreshes what others see
        await self._send_json({"type": "hello", "you": self.viewer.id, "can_drive": can_drive})
        await self._announce_room()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.error("terminal task %s of %s failed", task.get_coro(), self.viewer.id, exc_info=error)

    # -- group events -----------------------------------------------------------------------------

    async def terminal_room(self, event: dict[str, Any]) -> None:
        if self._learn(event["driver"], event["version"]):
            await self._send_json({"type": "room", "viewers": event["viewers"], "driver": event["driver"]})

    async def terminal_size(self, event: dict[str, Any]) -> None:
        await self._send_json({"type": "size", "rows": event["rows"], "cols": event["cols"]})

    async def terminal_request(self, event: dict[str, Any]) -> None:
        if event["to"] == self.viewer.id:
            await self._send_json({"type": "control_requested", "by": event["by"], "name": event["name"]})

    # -- helpers ----------------------------------------------------------------------------------

    async def _announce_room(self, room: Room | None = None) -> None:
        room = room or await self.room.snapshot()
        message = {"type": "terminal.room", **room.payload()}
        await self.channel_layer.group_send(self.group, message)
        # This socket learns it directly too: a pub/sub group message can pass a subscription
        # made a moment before (the socket's own join). The room is versioned: a second copy
        # changes nothing.
        await self.terminal_room(message)

    def _learn(self, driver: str | None, version: int) -> bool:
        """Takes the room's state if it is newer than what this socket knows; True if it was."""
        if version < self.room_version:
            return False
        self.room_version = version
        self.driving = driver == self.viewer.id
        return True

    async def _send_json(self, message: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(message))

    async def _refuse(self, message: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_refusal < REFUSAL_INTERVAL_SECONDS:
            return
        self.last_refusal = now
        await self._send_json({"type": "refused", "message": message})

    async def _fail(self, code: str, message: str, close_code: int, **extra: Any) -> None:
        await self._send_json({"type": "error", "code": code, "message": message, **extra})
        await self.close(code=close_code)

    async def _refuse_feature(self, error: FeatureNotInPlan) -> None:
        await self._fail(error.code, error.message, CLOSE_FORBIDDEN, feature=error.feature, plans=error.plans)
