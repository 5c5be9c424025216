"""A run's live event stream over a WebSocket, resumable without gap or duplicate.

    ws(s)://<org host>/ws/runs/<run id>/?after=<seq>

Browsers authenticate with their session on the organization's host; API clients send
`Authorization: Bearer ayk_...` (a key with the `agents:read` scope), on the organization's
host or on the bare domain, where the key selects its organization. Either way the
person or key needs `agents.view`.

The table is the truth and the broadcast only a hint (apps/agents/events.py). So the socket
joins the run's Channels group first, then reads the stored events after `after` from the
table and sends them, and only then forwards broadcasts: a broadcast of an event already
sent is dropped, and one that skips ahead makes the socket read the gap from the table.
Channels hands this consumer one message at a time, so broadcasts that arrive during the
replay wait in the channel until it is done.

Server -> client (JSON text frames):
  {"type": "hello", "run": {"id", "state", "state_reason", "last_seq", ...totals}}
                                   first, on every connection.
  {"type": "event", "event": {...}}   one per event, in seq order, each seq once (the wire
                                   shape of apps.agents.events.event_payload).
  {"type": "caught_up", "seq": n}  the stored events are all sent; live ones follow.
  {"type": "error", "code", "message"}   before closing, or for a bad message ("invalid",
                                   and the socket stays).

Client -> server:
  {"type": "resume", "after": n}   send again everything after n (a client that lost its
                                   place without reconnecting), then live ones.

Every heartbeat (15 s) the membership, role or key is checked again, and events the table
has beyond the last one sent (a broadcast lost on the way) are sent.

Close codes: 4400 a bad `after`, 4403 access ended, 4404 no such run in this organization
(another organization's run is indistinguishable from none). People outside the
organization, anonymous visitors and keys of another organization are refused at the
handshake (HTTP 403).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.utils import timezone

from apps.accounts.models import User
from apps.agents.events import event_payload, run_group
from apps.agents.models import AgentRun, Event
from apps.tenancy.api_keys import key_check
from apps.tenancy.channels import tenant_database_sync_to_async
from apps.tenancy.db import tenant_connection
from apps.tenancy.models import ApiKey, Membership, Organization
from apps.tenancy.roles import key_allows, role_allows

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS: Final = 15.0
# Stored events are read and sent in pages of this many, so a long run's history never sits
# in memory at once.
REPLAY_PAGE: Final = 500

CLOSE_INVALID: Final = 4400
CLOSE_FORBIDDEN: Final = 4403
CLOSE_NOT_FOUND: Final = 4404

NOT_FOUND_MESSAGE: Final = "There is no such run in this organization."
FORBIDDEN_MESSAGE: Final = "You no longer have access to this organization's agent runs."


@dataclass(frozen=True)
class Principal:
    """Who is watching: a member (user_id) or an API key (api_key_id)."""

    organization: Organization
    user_id: int | None = None
    api_key_id: int | None = None


def _header(scope: dict[str, Any], name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return ""


@database_sync_to_async
def _key_principal(raw: str, tenant: Organization | None) -> Principal | None:
    """The key's organization if the key may watch runs there; None: refuse."""
    tenant_connection().set_schema_to_public()
    check = key_check(raw)
    api_key = check.api_key
    if api_key is None or check.error_code or not key_allows(api_key, "agents.view"):
        return None
    organization = api_key.organization
    # On an organization's host a key of another organization is refused, as on /api/v1/.
    if tenant is not None and tenant.pk != organization.pk:
        return None
    return Principal(organization=organization, api_key_id=api_key.pk)


@database_sync_to_async
def _session_principal(tenant: Organization, user: User) -> Principal | None:
    tenant_connection().set_schema_to_public()
    if not user.is_authenticated:
        return None
    role = (
        Membership.objects.filter(user=user, user__is_active=True, organization=tenant)
        .values_list("role", flat=True)
        .first()
    )
    if role is None or not role_allows(role, "agents.view"):
        return None
    return Principal(organization=tenant, user_id=user.pk)


@database_sync_to_async
def _still_allowed(principal: Principal) -> bool:
    tenant_connection().set_schema_to_public()
    if principal.api_key_id is not None:
        api_key = ApiKey.objects.select_related("organization").filter(pk=principal.api_key_id).first()
        return (
            api_key is not None
            and api_key.revoked_at is None
            and (api_key.expires_at is None or api_key.expires_at > timezone.now())
            and api_key.organization.status == Organization.Status.ACTIVE
            and key_allows(api_key, "agents.view")
        )
    if principal.user_id is None:
        return False
    role = (
        Membership.objects.filter(
            user_id=principal.user_id, user__is_active=True, organization=principal.organization
        )
        .values_list("role", flat=True)
        .first()
    )
    return role is not None and role_allows(role, "agents.view")


def run_summary(run: AgentRun) -> dict[str, Any]:
    """What a watcher needs before the events: the run's state and totals now."""
    return {
        "id": str(run.pk),
        "state": run.state,
        "state_reason": run.state_reason,
        "last_seq": run.last_seq,
        "steps": run.steps,
        "input_tokens": run.input_tokens,
        "output_tokens": run.output_tokens,
        "cost": str(run.cost),
    }


@tenant_database_sync_to_async
def _run_summary(tenant: Organization, run_id: uuid.UUID) -> dict[str, Any] | None:
    run = AgentRun.objects.filter(pk=run_id).first()
    return None if run is None else run_summary(run)


@tenant_database_sync_to_async
def _last_seq(tenant: Organization, run_id: uuid.UUID) -> int:
    return AgentRun.objects.filter(pk=run_id).values_list("last_seq", flat=True).first() or 0


@tenant_database_sync_to_async
def _events_between(tenant: Organization, run_id: uuid.UUID, after: int, limit: int) -> list[dict[str, Any]]:
    events = Event.objects.filter(run_id=run_id, seq__gt=after).order_by("seq")[:limit]
    return [event_payload(event) for event in events]


def _after(value: Any) -> int | None:
    """A non-negative whole seq, or None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = value.strip()
        if not value.isdigit():
            return None
    if not isinstance(value, (int, str)):
        return None
    number = int(value)
    return number if 0 <= number < 2**31 else None


class RunEventsConsumer(AsyncWebsocketConsumer):
    principal: Principal
    run_id: uuid.UUID
    group = ""
    # The highest seq this socket has sent; everything up to it was sent, once.
    sent_seq = 0
    heartbeat_task: asyncio.Task[None] | None = None
    # Broadcasts, replays and the heartbeat's catch-up all send events; one at a time, so
    # sent_seq is never read by one while another is sending.
    sending: asyncio.Lock

    async def connect(self) -> None:
        tenant: Organization | None = self.scope.get("tenant")
        authorization = _header(self.scope, b"authorization")
        principal: Principal | None
        if authorization.lower().startswith("bearer "):
            principal = await _key_principal(authorization[7:].strip(), tenant)
        elif tenant is not None:
            principal = await _session_principal(tenant, self.scope["user"])
        else:
            principal = None
        if principal is None:
            await self.close(code=CLOSE_FORBIDDEN)  # before accepting: the handshake gets a 403
            return
        self.principal = principal
        self.sending = asyncio.Lock()
        self.run_id = self.scope["url_route"]["kwargs"]["run_id"]
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        after = _after(query.get("after", ["0"])[0])
        # Joined before anything is read, so no event committed from here on can be missed.
        self.group = run_group(self.run_id, principal.organization.schema_name)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        summary = await _run_summary(principal.organization, self.run_id)
        if summary is None:
            await self._fail("not_found", NOT_FOUND_MESSAGE, CLOSE_NOT_FOUND)
            return
        if after is None:
            await self._fail("invalid", "after must be a whole number of 0 or more.", CLOSE_INVALID)
            return
        await self._send_json({"type": "hello", "run": summary})
        await self._replay(after)
        self.heartbeat_task = asyncio.create_task(self._heartbeat())

    async def disconnect(self, code: int) -> None:
        if self.heartbeat_task is not None and self.heartbeat_task is not asyncio.current_task():
            self.heartbeat_task.cancel()
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            message = json.loads(text_data or "")
        except ValueError:
            message = None
        if not isinstance(message, dict):
            await self._invalid("Expected a JSON object.")
            return
        if message.get("type") != "resume":
            await self._invalid(f"Unknown message type {message.get('type')!r}.")
            return
        after = _after(message.get("after", 0))
        if after is None:
            await self._invalid("after must be a whole number of 0 or more.")
            return
        await self._replay(after)

    async def run_event(self, message: dict[str, Any]) -> None:
        """A broadcast from event_append: sent unless already sent; a gap before it is read
        from the table first."""
        seq = int(message["event"]["seq"])
        async with self.sending:
            if seq <= self.sent_seq:
                return
            if seq > self.sent_seq + 1:
                # Missed broadcasts (or a replay still catching up): the table has them all,
                # this one included, since it was broadcast after its commit.
                await self._send_stored(self.sent_seq, until=seq)
                return
            await self._send_json({"type": "event", "event": message["event"]})
            self.sent_seq = seq

    async def _replay(self, after: int) -> None:
        async with self.sending:
            self.sent_seq = after
            await self._send_stored(after)
            await self._send_json({"type": "caught_up", "seq": self.sent_seq})

    async def _send_stored(self, after: int, until: int | None = None) -> None:
        """Sends the stored events after `after` (up to `until`), in order."""
        while until is None or after < until:
            limit = REPLAY_PAGE if until is None else min(REPLAY_PAGE, until - after)
            events = await _events_between(self.principal.organization, self.run_id, after, limit)
            for event in events:
                await self._send_json({"type": "event", "event": event})
                after = self.sent_seq = int(event["seq"])
            if len(events) < limit:
                return

    async def _heartbeat(self) -> None:
        interval = float(getattr(settings, "AGENTS_STREAM_HEARTBEAT_SECONDS", HEARTBEAT_SECONDS))
        while True:
            await asyncio.sleep(interval)
            if not await _still_allowed(self.principal):
                await self._fail("forbidden", FORBIDDEN_MESSAGE, CLOSE_FORBIDDEN)
                return
            # A broadcast can be lost (the channel was full while this socket replayed a long
            # history); with no later one to reveal the gap, the table is read here.
            async with self.sending:
                if await _last_seq(self.principal.organization, self.run_id) > self.sent_seq:
                    await self._send_stored(self.sent_seq)

    async def _invalid(self, message: str) -> None:
        await self._send_json({"type": "error", "code": "invalid", "message": message})

    async def _send_json(self, message: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(message))

    async def _fail(self, code: str, message: str, close_code: int) -> None:
        with contextlib.suppress(Exception):
            await self._send_json({"type": "error", "code": code, "message": message})
        await self.close(code=close_code)
