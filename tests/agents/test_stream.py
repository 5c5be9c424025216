"""A run's live stream end to end: real WebSockets against the live ASGI server, events
appended through apps.agents.events.event_append (persisted, then broadcast over the real
Redis channel layer), read back from the table by seq on (re)connect."""

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.test import override_settings
from django_tenants.utils import schema_context
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from apps.accounts.models import User
from apps.agents.events import event_append
from apps.agents.models import AgentRun
from apps.tenancy import identity
from apps.tenancy.audit import Actor
from apps.tenancy.models import Membership, Organization
from tests.conftest import LiveServer, World, host
from tests.factories import make_user
from tests.websocket import session_cookie_for, ws_connect

TIMEOUT = 15.0


@dataclass
class Watcher:
    """One client's socket and everything it received."""

    socket: ClientConnection
    messages: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None

    def seqs(self) -> list[int]:
        return [message["event"]["seq"] for message in self.messages if message["type"] == "event"]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [message for message in self.messages if message["type"] == kind]

    async def until(self, done: Callable[["Watcher"], bool], timeout: float = TIMEOUT) -> "Watcher":
        async def pump() -> None:
            while not done(self):
                try:
                    self.messages.append(json.loads(await self.socket.recv()))
                except ConnectionClosed as closed:
                    self.close_code = closed.rcvd.code if closed.rcvd else None
                    if done(self):
                        return
                    raise AssertionError(f"closed ({self.close_code}) first; got {self.messages}") from None

        try:
            await asyncio.wait_for(pump(), timeout)
        except TimeoutError:
            raise AssertionError(f"gave up waiting; got {self.messages}") from None
        return self

    async def until_seq(self, seq: int) -> "Watcher":
        return await self.until(lambda me: seq in me.seqs())

    async def until_closed(self) -> "Watcher":
        return await self.until(lambda me: me.close_code is not None)


def run_path(run: AgentRun, query: str = "") -> str:
    return f"/ws/runs/{run.pk}/{query}"


def append(organization: Organization, run: AgentRun, count: int, text: str = "line") -> None:
    """Appends `count` assistant messages to the run, as the worker does (committed, broadcast)."""
    with schema_context(organization.schema_name):
        for number in range(count):
            event_append(
                run=run,
                kind="message",
                payload={"role": "assistant", "text": f"{text} {number}"},
                input_tokens=10,
                output_tokens=2,
            )


def make_run(organization: Organization, task: str) -> AgentRun:
    with schema_context(organization.schema_name):
        run = AgentRun.objects.create(task=task, state=AgentRun.State.RUNNING)
        event_append(run=run, kind="message", payload={"role": "user", "text": task})
    return run


@pytest.fixture
def runs(live_db: World) -> Iterator[list[AgentRun]]:
    """Runs a test makes (committed: the server's threads read them); deleted afterwards."""
    made: list[AgentRun] = []
    yield made
    for run in made:
        organization = live_db.alpha if run.task.startswith("alpha") else live_db.beta
        with schema_context(organization.schema_name):
            AgentRun.objects.filter(pk=run.pk).delete()


@pytest.fixture
def alpha_run(runs: list[AgentRun], world: World) -> AgentRun:
    run = make_run(world.alpha, "alpha: make the failing test pass")
    runs.append(run)
    return run


def test_a_watcher_gets_the_stored_events_then_the_live_ones(
    asgi_server: LiveServer, world: World, alpha_run: AgentRun
) -> None:
    append(world.alpha, alpha_run, 2)

    async def scenario() -> Watcher:
        cookie = await asyncio.to_thread(session_cookie_for, world.amy)
        async with ws_connect(asgi_server, world.alpha, run_path(alpha_run), cookie=cookie) as socket:
            watcher = await Watcher(socket).until(lambda me: bool(me.of_type("caught_up")))
            assert watcher.seqs() == [1, 2, 3]
            await asyncio.to_thread(append, world.alpha, alpha_run, 2, "live")
            return await watcher.until_seq(5)

    watcher = asyncio.run(scenario())
    assert watcher.messages[0]["type"] == "hello"
    assert watcher.messages[0]["run"]["state"] == "running"
    assert watcher.seqs() == [1, 2, 3, 4, 5]
    events = [message["event"] for message in watcher.of_type("event")]
    assert events[0]["payload"] == {"role": "user", "text": "alpha: make the failing test pass"}
    assert events[3]["payload"]["text"] == "live 0"
    assert events[3]["input_tokens"] == 10
    assert watcher.of_type("caught_up") == [{"type": "caught_up", "seq": 3}]


def test_reconnecting_with_after_resumes_with_no_gap_and_no_duplicate(
    asgi_server: LiveServer, world: World, alpha_run: AgentRun
) -> None:
    append(world.alpha, alpha_run, 2)

    async def scenario() -> tuple[Watcher, Watcher]:
        cookie = await asyncio.to_thread(session_cookie_for, world.amy)
        async with ws_connect(asgi_server, world.alpha, run_path(alpha_run), cookie=cookie) as socket:
            first = await Watcher(socket).until_seq(3)
        # Events the worker wrote while the browser was away.
        await asyncio.to_thread(append, world.alpha, alpha_run, 3, "while away")
        last_seen = max(first.seqs())
        path = run_path(alpha_run, f"?after={last_seen}")
        async with ws_connect(asgi_server, world.alpha, path, cookie=cookie) as socket:
            second = await Watcher(socket).until(lambda me: bool(me.of_type("caught_up")))
            await asyncio.to_thread(append, world.alpha, alpha_run, 1, "after return")
            await second.until_seq(7)
        return first, second

    first, second = asyncio.run(scenario())
    assert first.seqs() == [1, 2, 3]
    assert second.seqs() == [4, 5, 6, 7]
    texts = [message["event"]["payload"]["text"] for message in second.of_type("event")]
    assert texts == ["while away 0", "while away 1", "while away 2", "after return 0"]


def test_events_written_while_a_watcher_connects_arrive_once_each_in_order(
    asgi_server: LiveServer, world: World, alpha_run: AgentRun
) -> None:
    """The worker keeps writing while the socket reads the stored events: whatever lands
    between the table read and the live broadcasts appears exactly once."""
    total = 1 + 60
    writer = threading.Thread(target=append, args=(world.alpha, alpha_run, 60, "busy"))

    async def scenario() -> Watcher:
        cookie = await asyncio.to_thread(session_cookie_for, world.amy)
        writer.start()
        async with ws_connect(asgi_server, world.alpha, run_path(alpha_run), cookie=cookie) as socket:
            return await Watcher(socket).until_seq(total)

    watcher = asyncio.run(scenario())
    writer.join()
    assert watcher.seqs() == list(range(1, total + 1))


def test_a_resume_message_sends_everything_after_the_cursor_again(
    asgi_server: LiveServer, world: World, alpha_run: AgentRun
) -> None:
    append(world.alpha, alpha_run, 3)

    async def scenario() -> Watcher:
        cookie = await asyncio.to_thread(session_cookie_for, world.amy)
        async with ws_connect(asgi_server, world.alpha, run_path(alpha_run), cookie=cookie) as socket:
            watcher = await Watcher(socket).until(lambda me: len(me.of_type("caught_up")) == 1)
            await socket.send(json.dumps({"type": "resume", "after": 2}))
            await watcher.until(lambda me: len(me.of_type("caught_up")) == 2)
            await asyncio.to_thread(append, world.alpha, alpha_run, 1, "then live")
            return await watcher.until(lambda me: me.seqs().count(5) == 1 and len(me.seqs()) == 7)

    watcher = asyncio.run(scenario())
    assert watcher.seqs() == [1, 2, 3, 4, 3, 4, 5]


def test_a_bad_cursor_or_message_gets_a_clear_error(
    asgi_server: LiveServer, world: World, alpha_run: AgentRun
) -> None:
    async def scenario() -> tuple[Watcher, Watcher]:
        cookie = await asyncio.to_thread(session_cookie_for, world.amy)
        async with ws_connect(asgi_server, world.alpha, run_path(alpha_run), cookie=cookie) as socket:
            chatty = await Watcher(socket).until(lambda me: bool(me.of_type("caught_up")))
            await socket.send("not json")
            await socket.send(json.dumps({"type": "resume", "after": -1}))
            await chatty.until(lambda me: len(me.of_type("error")) == 2)
        path = run_path(alpha_run, "?after=soon")
        async with ws_connect(asgi_server, world.alpha, path, cookie=cookie) as socket:
            refused = await Watcher(socket).until_closed()
        return chatty, refused

    chatty, refused = asyncio.run(scenario())
    assert [error["code"] for error in chatty.of_type("error")] == ["invalid", "invalid"]
    assert "0 or more" in chatty.of_type("error")[1]["message"]
    assert refused.close_code == 4400
    assert refused.of_type("error")[0]["code"] == "invalid"
    assert refused.seqs() == []


def test_another_organizations_run_is_not_found_from_this_one(
    asgi_server: LiveServer, world: World, runs: list[AgentRun]
) -> None:
    beta_run = make_run(world.beta, "beta: a secret of beta")
    runs.append(beta_run)

    async def scenario() -> Watcher:
        cookie = await asyncio.to_thread(session_cookie_for, world.amy)
        async with ws_connect(asgi_server, world.alpha, run_path(beta_run), cookie=cookie) as socket:
            return await Watcher(socket).until_closed()

    watcher = asyncio.run(scenario())
    assert watcher.close_code == 4404
    assert watcher.of_type("error") == [
        {"type": "error", "code": "not_found", "message": "There is no such run in this organization."}
    ]
    assert "secret" not in json.dumps(watcher.messages)


def _key(organization: Organization, owner: User, scopes: list[str]) -> str:
    _, raw = identity.api_key_create(
        actor=Actor(user=owner), organization=organization, name="stream test", scopes=scopes
    )
    return raw


async def _key_watch(server: LiveServer, organization: Organization | None, path: str, key: str) -> Watcher:
    target = f"{host(organization)}:{server.port}"
    async with connect(
        f"ws://{target}{path}",
        host="127.0.0.1",
        port=server.port,
        additional_headers={"Authorization": f"Bearer {key}"},
        open_timeout=10,
    ) as socket:
        return await Watcher(socket).until(
            lambda me: bool(me.of_type("caught_up")) or me.close_code is not None
        )


def test_an_api_key_watches_its_organizations_runs_from_any_host(
    asgi_server: LiveServer, world: World, alpha_run: AgentRun
) -> None:
    key = _key(world.alpha, world.alice, ["agents:read"])
    on_public = asyncio.run(_key_watch(asgi_server, None, run_path(alpha_run), key))
    on_own_host = asyncio.run(_key_watch(asgi_server, world.alpha, run_path(alpha_run), key))
    assert on_public.seqs() == [1]
    assert on_own_host.seqs() == [1]


def test_keys_of_another_organization_or_without_the_scope_are_refused(
    asgi_server: LiveServer, world: World, alpha_run: AgentRun
) -> None:
    beta_key = _key(world.beta, world.bob, ["admin"])
    alpha_key_without_scope = _key(world.alpha, world.alice, ["workspaces:read"])
    refusals = [
        (world.alpha, beta_key),
        (None, alpha_key_without_scope),
        (None, "ayk_nothing_real"),
    ]
    for organization, key in refusals:
        with pytest.raises(InvalidStatus) as refused:
            asyncio.run(_key_watch(asgi_server, organization, run_path(alpha_run), key))
        assert refused.value.response.status_code == 403
    # On the bare domain Beta's key selects Beta, where Alpha's run does not exist.
    in_beta = asyncio.run(_key_watch(asgi_server, None, run_path(alpha_run), beta_key))
    assert in_beta.close_code == 4404
    assert in_beta.seqs() == []


@pytest.fixture
def temp_member(live_db: World) -> Iterator[User]:
    user = make_user("stream-watcher@alpha.test", "Wanda")
    Membership.objects.create(user=user, organization=live_db.alpha, role=Membership.Role.VIEWER)
    yield user
    Membership.objects.filter(user=user).delete()
    user.delete()


def test_a_member_removed_while_watching_is_cut_off(
    asgi_server: LiveServer, world: World, alpha_run: AgentRun, temp_member: User
) -> None:
    async def scenario() -> Watcher:
        cookie = await asyncio.to_thread(session_cookie_for, temp_member)
        async with ws_connect(asgi_server, world.alpha, run_path(alpha_run), cookie=cookie) as socket:
            watcher = await Watcher(socket).until(lambda me: bool(me.of_type("caught_up")))
            await asyncio.to_thread(Membership.objects.filter(user=temp_member).delete)
            return await watcher.until_closed()

    with override_settings(AGENTS_STREAM_HEARTBEAT_SECONDS=0.2):
        watcher = asyncio.run(scenario())
    assert watcher.close_code == 4403
    assert watcher.of_type("error")[-1]["code"] == "forbidden"


def _store_without_broadcast(organization: Organization, run: AgentRun, text: str) -> None:
    """An event in the table whose broadcast never arrived (a full channel drops it): the
    row and the run's counter as event_append writes them, with no message sent."""
    from django.db import transaction
    from django.db.models import F

    from apps.agents.models import Event

    with schema_context(organization.schema_name), transaction.atomic():
        seq = AgentRun.objects.select_for_update().values_list("last_seq", flat=True).get(pk=run.pk) + 1
        Event.objects.create(
            run_id=run.pk, seq=seq, kind="message", payload={"role": "assistant", "text": text}
        )
        AgentRun.objects.filter(pk=run.pk).update(last_seq=F("last_seq") + 1)


def test_an_event_whose_broadcast_was_lost_still_arrives_with_no_later_event(
    asgi_server: LiveServer, world: World, alpha_run: AgentRun
) -> None:
    async def scenario() -> Watcher:
        cookie = await asyncio.to_thread(session_cookie_for, world.amy)
        async with ws_connect(asgi_server, world.alpha, run_path(alpha_run), cookie=cookie) as socket:
            watcher = await Watcher(socket).until(lambda me: bool(me.of_type("caught_up")))
            await asyncio.to_thread(_store_without_broadcast, world.alpha, alpha_run, "the last word")
            return await watcher.until_seq(2)

    with override_settings(AGENTS_STREAM_HEARTBEAT_SECONDS=0.2):
        watcher = asyncio.run(scenario())
    assert watcher.seqs() == [1, 2]
    assert watcher.of_type("event")[1]["event"]["payload"]["text"] == "the last word"
