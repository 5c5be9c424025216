"""Who watches a workspace's terminal and who drives it, shared by every web process.

Each open terminal socket is one *viewer* (a browser tab), named by a random id.
Exactly one viewer at a time may be the *driver*: only the driver's keystrokes
and resizes reach the shell; everyone else follows read-only. The rules:

- Joining: a viewer whose role may operate workspaces (`workspaces.operate`)
  becomes the driver when nobody drives. Others join as followers.
- Hand over: the driver gives control to a named viewer who may operate, or
  releases it (then nobody drives until someone takes control).
- Take control: a viewer who may operate gets it at once when nobody drives,
  when the driver is another tab of the same person, or when the driver has not
  typed for DRIVER_IDLE_SECONDS. Otherwise the driver keeps it and is told who
  asked (the page offers to hand over).
- Leaving: a driver who disconnects releases control; on reconnecting it takes
  it back if nobody took it meanwhile (the join rule).
- A web process that dies cannot say goodbye: every socket refreshes its entry
  every HEARTBEAT_SECONDS, and entries older than STALE_SECONDS are dropped (a
  stale driver included) the next time anyone reads the room.

State lives in Redis so every web process sees the same room, per workspace
(keys carry the organization's schema):

    terminal:<schema>:<workspace id>:seen    sorted set: viewer id -> last heartbeat
    terminal:<schema>:<workspace id>:info    hash: viewer id -> JSON (user, name, may drive, joined)
    terminal:<schema>:<workspace id>:driver  hash: viewer, user, active (time of its last input)
    terminal:<schema>:<workspace id>:version counter, incremented by every change

Every change is one Lua script, so two tabs taking control at once cannot both
win. Changes are announced to the sockets by the consumer through a Channels
group (`room_group`) with the room's version; a socket keeps the newest it has
seen, also as its own "may I type" flag, so a keystroke costs no Redis round
trip. The flag is only ever stale for the few milliseconds an announcement
takes, and only towards someone who just lost control by another's hand.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import weakref
from dataclasses import dataclass
from typing import Any, Final

import redis.asyncio as aioredis
from django.conf import settings
from redis.commands.core import AsyncScript

from apps.tenancy.groups import tenant_group

HEARTBEAT_SECONDS: Final = 15.0
STALE_SECONDS: Final = 45.0
DRIVER_IDLE_SECONDS: Final = 300.0
# A room nobody has touched for this long is removed from Redis altogether.
ROOM_TTL_SECONDS: Final = 24 * 3600
# The driver's last keystroke is noted in Redis at most this often (for DRIVER_IDLE_SECONDS).
ACTIVITY_NOTE_SECONDS: Final = 10.0

# Every script gets the same KEYS: seen, info, driver, version. A script that changes
# the room increments `version`, which every announcement carries, so a socket that
# receives two announcements out of order keeps the newer one.

_JOIN = """
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('INCR', KEYS[4])
local drives = 0
if ARGV[4] == '1' then
  local current = redis.call('HGET', KEYS[3], 'viewer')
  local seen = current and redis.call('ZSCORE', KEYS[1], current)
  if not seen or tonumber(seen) < tonumber(ARGV[6]) then
    redis.call('HSET', KEYS[3], 'viewer', ARGV[1], 'user', ARGV[5], 'active', ARGV[3])
    drives = 1
  end
end
for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[7]) end
return drives
"""

_HEARTBEAT = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
return 1
"""

_LEAVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('INCR', KEYS[4])
if redis.call('HGET', KEYS[3], 'viewer') == ARGV[1] then
  redis.call('DEL', KEYS[3])
  return 1
end
return 0
"""

# '' when the caller drives now, else the id of the driver who keeps control.
_TAKE = """
local current = redis.call('HGET', KEYS[3], 'viewer')
if current == ARGV[1] then return '' end
if current then
  local seen = redis.call('ZSCORE', KEYS[1], current)
  if seen and tonumber(seen) >= tonumber(ARGV[5]) then
    local user = redis.call('HGET', KEYS[3], 'user')
    local active = tonumber(redis.call('HGET', KEYS[3], 'active') or '0')
    if user ~= ARGV[2] and tonumber(ARGV[3]) - active < tonumber(ARGV[4]) then
      return current
    end
  end
end
redis.call('HSET', KEYS[3], 'viewer', ARGV[1], 'user', ARGV[2], 'active', ARGV[3])
redis.call('INCR', KEYS[4])
for i = 3, 4 do redis.call('EXPIRE', KEYS[i], ARGV[6]) end
return ''
"""

_HAND_OVER = """
if redis.call('HGET', KEYS[3], 'viewer') ~= ARGV[1] then return 'not_driver' end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[3])
  redis.call('INCR', KEYS[4])
  return 'released'
end
local seen = redis.call('ZSCORE', KEYS[1], ARGV[2])
local info = redis.call('HGET', KEYS[2], ARGV[2])
if not seen or not info or tonumber(seen) < tonumber(ARGV[4]) then return 'no_viewer' end
local viewer = cjson.decode(info)
if not viewer['can_drive'] then return 'cannot_drive' end
redis.call('HSET', KEYS[3], 'viewer', ARGV[2], 'user', viewer['user_id'], 'active', ARGV[3])
redis.call('INCR', KEYS[4])
return 'handed'
"""

# 1 when the viewer drives (and its activity is noted), else 0.
_ACTIVITY = """
if redis.call('HGET', KEYS[3], 'viewer') == ARGV[1] then
  redis.call('HSET', KEYS[3], 'active', ARGV[2])
  return 1
end
return 0
"""

_SNAPSHOT = """
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
for _, id in ipairs(stale) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
local driver = redis.call('HGET', KEYS[3], 'viewer')
if driver and not redis.call('ZSCORE', KEYS[1], driver) then
  redis.call('DEL', KEYS[3])
  driver = false
end
local version
if #stale > 0 then version = redis.call('INCR', KEYS[4]) else version = redis.call('GET', KEYS[4]) or 0 end
return {driver or '', #stale, redis.call('HVALS', KEYS[2]), tonumber(version)}
"""


@dataclass(frozen=True)
class Viewer:
    id: str
    user_id: int
    name: str
    can_drive: bool
    joined_at: float

    def payload(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "can_drive": self.can_drive}

    def to_json(self) -> str:
        return json.dumps(
            {
                "id": self.id,
                # A string: the Lua scripts compare it with the driver's `user` field.
                "user_id": str(self.user_id),
                "name": self.name,
                "can_drive": self.can_drive,
                "joined_at": self.joined_at,
            }
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> Viewer:
        data = json.loads(raw)
        return cls(
            id=str(data["id"]),
            user_id=int(data["user_id"]),
            name=str(data["name"]),
            can_drive=bool(data["can_drive"]),
            joined_at=float(data["joined_at"]),
        )


@dataclass(frozen=True)
class Room:
    """What every viewer sees: who is here (in the order they joined) and who drives."""

    viewers: list[Viewer]
    driver: str | None
    version: int = 0  # grows with every change; the newest announcement wins
    dropped: int = 0  # stale entries removed while reading

    def viewer(self, viewer_id: str) -> Viewer | None:
        return next((viewer for viewer in self.viewers if viewer.id == viewer_id), None)

    def payload(self) -> dict[str, Any]:
        return {
            "viewers": [viewer.payload() for viewer in self.viewers],
            "driver": self.driver,
            "version": self.version,
        }


@dataclass(frozen=True)
class TakeResult:
    taken: bool
    driver: str | None  # who drives after the attempt


HAND_OVER_OUTCOMES: Final = {"handed", "released", "not_driver", "no_viewer", "cannot_drive"}


class _Connection:
    def __init__(self) -> None:
        self.client = aioredis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=5)
        self.scripts: dict[str, AsyncScript] = {}

    def script(self, source: str) -> AsyncScript:
        # register_script hashes the source once; the script runs by its SHA (EVAL after a Redis restart).
        found = self.scripts.get(source)
        if found is None:
            found = self.scripts[source] = self.client.register_script(source)
        return found


_connections: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Connection] = weakref.WeakKeyDictionary()


def _connection() -> _Connection:
    """One client (and pool) per event loop: asyncio connections cannot move between loops."""
    loop = asyncio.get_running_loop()
    connection = _connections.get(loop)
    if connection is None:
        connection = _connections[loop] = _Connection()
    return connection


def new_viewer_id() -> str:
    return secrets.token_hex(6)


def room_group(schema_name: str, workspace_id: int) -> str:
    return tenant_group(f"workspace.{workspace_id}.terminal", schema_name)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class TerminalRoom:
    """The viewers and driver of one workspace's terminal."""

    def __init__(self, schema_name: str, workspace_id: int) -> None:
        prefix = f"terminal:{schema_name}:{workspace_id}"
        self.seen_key = f"{prefix}:seen"
        self.info_key = f"{prefix}:info"
        self.driver_key = f"{prefix}:driver"
        self.version_key = f"{prefix}:version"

    async def _run(self, script: str, *args: Any) -> Any:
        keys = [self.seen_key, self.info_key, self.driver_key, self.version_key]
        return await _connection().script(script)(keys=keys, args=list(args))

    async def join(self, viewer: Viewer) -> bool:
        """Adds the viewer; True when it became the driver."""
        now = time.time()
        drives = await self._run(
            _JOIN,
            viewer.id,
            viewer.to_json(),
            now,
            "1" if viewer.can_drive else "0",
            str(viewer.user_id),
            now - STALE_SECONDS,
            ROOM_TTL_SECONDS,
        )
        return bool(drives)

    async def heartbeat(self, viewer_id: str) -> bool:
        """False when the entry is gone (dropped as stale): the caller should join again."""
        return bool(await self._run(_HEARTBEAT, viewer_id, time.time(), ROOM_TTL_SECONDS))

    async def leave(self, viewer_id: str) -> bool:
        """Removes the viewer; True when it was the driver."""
        return bool(await self._run(_LEAVE, viewer_id))

    async def take(self, viewer: Viewer) -> TakeResult:
        if not viewer.can_drive:
            return TakeResult(taken=False, driver=(await self.snapshot()).driver)
        now = time.time()
        keeper = _text(
            await self._run(
                _TAKE,
                viewer.id,
                str(viewer.user_id),
                now,
                DRIVER_IDLE_SECONDS,
                now - STALE_SECONDS,
                ROOM_TTL_SECONDS,
            )
        )
        if keeper:
            return TakeResult(taken=False, driver=keeper)
        return TakeResult(taken=True, driver=viewer.id)

    async def hand_over(self, from_id: str, to_id: str | None) -> str:
        """One of HAND_OVER_OUTCOMES; `to_id` None releases control to nobody."""
        now = time.time()
        return _text(await self._run(_HAND_OVER, from_id, to_id or "", now, now - STALE_SECONDS))

    async def note_activity(self, viewer_id: str) -> bool:
        """Notes that the driver typed (for DRIVER_IDLE_SECONDS); False when it no longer drives."""
        return bool(await self._run(_ACTIVITY, viewer_id, time.time()))

    async def snapshot(self) -> Room:
        driver, dropped, infos, version = await self._run(_SNAPSHOT, time.time() - STALE_SECONDS)
        viewers = sorted((Viewer.from_json(raw) for raw in infos), key=lambda viewer: viewer.joined_at)
        return Room(viewers=viewers, driver=_text(driver) or None, version=int(version), dropped=int(dropped))
