"""Who drives a workspace's terminal: the rules of apps/workspaces/terminals.py
against the real Redis (the state every web process shares)."""

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from django.conf import settings

from apps.workspaces.terminals import DRIVER_IDLE_SECONDS, STALE_SECONDS, TerminalRoom, Viewer, new_viewer_id

T = TypeVar("T")


def viewer(user_id: int, name: str, *, can_drive: bool = True) -> Viewer:
    return Viewer(id=new_viewer_id(), user_id=user_id, name=name, can_drive=can_drive, joined_at=time.time())


def run(scenario: Callable[[TerminalRoom], Awaitable[T]]) -> T:
    """Runs a scenario on a fresh room (a workspace id no other test uses) and removes it after."""
    room = TerminalRoom("org_roomtest", uuid.uuid4().int % 10**9)

    async def wrapped() -> T:
        try:
            return await scenario(room)
        finally:
            client = aioredis.Redis.from_url(settings.REDIS_URL)
            await client.delete(room.seen_key, room.info_key, room.driver_key, room.version_key)
            await client.aclose()

    return asyncio.run(wrapped())


def test_the_first_person_who_may_type_drives_and_the_next_follow() -> None:
    alice, amy = viewer(1, "Alice"), viewer(2, "Amy")

    async def scenario(room: TerminalRoom) -> tuple[bool, bool, list[str], str | None]:
        first, second = await room.join(alice), await room.join(amy)
        snapshot = await room.snapshot()
        return first, second, [v.name for v in snapshot.viewers], snapshot.driver

    assert run(scenario) == (True, False, ["Alice", "Amy"], alice.id)


def test_a_watch_only_role_never_drives_even_when_nobody_does() -> None:
    vera = viewer(3, "Vera", can_drive=False)

    async def scenario(room: TerminalRoom) -> tuple[bool, bool, str | None, bool]:
        joined = await room.join(vera)
        took = (await room.take(vera)).taken
        return joined, took, (await room.snapshot()).driver, await room.note_activity(vera.id)

    assert run(scenario) == (False, False, None, False)


def test_every_change_gets_a_newer_version_so_late_announcements_lose() -> None:
    alice, amy = viewer(1, "Alice"), viewer(2, "Amy")

    async def scenario(room: TerminalRoom) -> list[int]:
        versions = []
        for change in (
            room.join(alice),
            room.join(amy),
            room.hand_over(alice.id, amy.id),
            room.take(alice),  # refused: Amy is active
            room.leave(amy.id),
        ):
            await change
            versions.append((await room.snapshot()).version)
        return versions

    first, second, handed, refused, left = run(scenario)
    assert first < second < handed < left
    assert refused == handed


def test_only_the_driver_counts_as_typing() -> None:
    alice, amy = viewer(1, "Alice"), viewer(2, "Amy")

    async def scenario(room: TerminalRoom) -> tuple[bool, bool]:
        await room.join(alice)
        await room.join(amy)
        return await room.note_activity(alice.id), await room.note_activity(amy.id)

    assert run(scenario) == (True, False)


def test_taking_control_from_an_active_driver_is_refused_and_names_the_driver() -> None:
    alice, amy = viewer(1, "Alice"), viewer(2, "Amy")

    async def scenario(room: TerminalRoom) -> tuple[bool, str | None]:
        await room.join(alice)
        await room.join(amy)
        result = await room.take(amy)
        return result.taken, result.driver

    assert run(scenario) == (False, alice.id)


def test_a_second_tab_of_the_driver_takes_control_at_once() -> None:
    tab_one, tab_two = viewer(1, "Alice"), viewer(1, "Alice")

    async def scenario(room: TerminalRoom) -> tuple[bool, str | None]:
        await room.join(tab_one)
        await room.join(tab_two)
        result = await room.take(tab_two)
        return result.taken, (await room.snapshot()).driver

    assert run(scenario) == (True, tab_two.id)


def test_a_driver_idle_for_too_long_loses_control_to_whoever_takes_it() -> None:
    alice, amy = viewer(1, "Alice"), viewer(2, "Amy")

    async def scenario(room: TerminalRoom) -> tuple[bool, str | None]:
        await room.join(alice)
        await room.join(amy)
        # Alice last typed longer ago than the idle limit.
        client = aioredis.Redis.from_url(settings.REDIS_URL)
        await client.hset(room.driver_key, "active", time.time() - DRIVER_IDLE_SECONDS - 1)
        await client.aclose()
        result = await room.take(amy)
        return result.taken, (await room.snapshot()).driver

    assert run(scenario) == (True, amy.id)


def test_the_driver_hands_over_to_a_named_viewer_or_releases() -> None:
    alice, amy, vera = viewer(1, "Alice"), viewer(2, "Amy"), viewer(3, "Vera", can_drive=False)

    async def scenario(room: TerminalRoom) -> list[object]:
        for person in (alice, amy, vera):
            await room.join(person)
        steps: list[object] = [
            await room.hand_over(amy.id, alice.id),  # Amy does not drive
            await room.hand_over(alice.id, vera.id),  # Vera may not type
            await room.hand_over(alice.id, "nobody-here"),
            await room.hand_over(alice.id, amy.id),
            (await room.snapshot()).driver,
            await room.note_activity(alice.id),
            await room.note_activity(amy.id),
            await room.hand_over(amy.id, None),
            (await room.snapshot()).driver,
        ]
        return steps

    assert run(scenario) == [
        "not_driver",
        "cannot_drive",
        "no_viewer",
        "handed",
        amy.id,
        False,
        True,
        "released",
        None,
    ]


def test_a_driver_who_leaves_frees_control_and_gets_it_back_on_returning() -> None:
    alice, amy = viewer(1, "Alice"), viewer(2, "Amy")

    async def scenario(room: TerminalRoom) -> tuple[bool, str | None, list[str], bool]:
        await room.join(alice)
        await room.join(amy)
        was_driver = await room.leave(alice.id)
        after = await room.snapshot()
        back = viewer(1, "Alice")
        return was_driver, after.driver, [v.name for v in after.viewers], await room.join(back)

    assert run(scenario) == (True, None, ["Amy"], True)


def test_viewers_of_a_dead_web_process_fade_away_driver_included() -> None:
    alice, amy = viewer(1, "Alice"), viewer(2, "Amy")

    async def scenario(room: TerminalRoom) -> tuple[int, list[str], str | None, bool, bool]:
        await room.join(alice)
        await room.join(amy)
        # Alice's process died: her heartbeat stopped long ago.
        client = aioredis.Redis.from_url(settings.REDIS_URL)
        await client.zadd(room.seen_key, {alice.id: time.time() - STALE_SECONDS - 1})
        await client.aclose()
        snapshot = await room.snapshot()
        return (
            snapshot.dropped,
            [v.name for v in snapshot.viewers],
            snapshot.driver,
            await room.heartbeat(alice.id),
            (await room.take(amy)).taken,
        )

    assert run(scenario) == (1, ["Amy"], None, False, True)


def test_two_people_taking_a_free_seat_at_once_cannot_both_win() -> None:
    people = [viewer(index, f"Person {index}") for index in range(1, 9)]

    async def scenario(room: TerminalRoom) -> tuple[int, str | None, set[str]]:
        for person in people:
            await room.join(person)
        holder = (await room.snapshot()).driver
        assert holder is not None
        await room.hand_over(holder, None)
        results = await asyncio.gather(*(room.take(person) for person in people))
        winners = {person.id for person, result in zip(people, results, strict=True) if result.taken}
        return len(winners), (await room.snapshot()).driver, winners

    count, driver, winners = run(scenario)
    assert count == 1
    assert driver in winners


def test_names_survive_the_trip_through_redis() -> None:
    zoe = viewer(1, "Zo\u00eb \u201cthe admin\u201d")

    async def scenario(room: TerminalRoom) -> list[str]:
        await room.join(zoe)
        return [v.name for v in (await room.snapshot()).viewers]

    assert run(scenario) == [zoe.name]
