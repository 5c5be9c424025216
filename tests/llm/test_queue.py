"""Fair queueing: one organization's burst does not starve another's calls; priorities
order waiting calls; per-organization limits hold."""

import asyncio
from collections.abc import Callable

import pytest
from asgiref.sync import async_to_sync

from apps.llm.gateway import gateway
from apps.llm.queue import FairQueue
from apps.llm.types import CallContext
from tests.conftest import World
from tests.fakes.llm_fake import Reply
from tests.fakes.openai_server import FakeOpenAI
from tests.llm.gateway_helpers import ask, sent_messages

pytestmark = pytest.mark.django_db


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("gave up waiting")
        await asyncio.sleep(0.005)


async def openai_queue(world: World, fake: FakeOpenAI) -> FairQueue:
    """The fake's queue in this event loop, with the organizations' settings loaded first
    (so calls reach the queue in the order they start)."""
    for organization in (world.alpha, world.beta):
        await gateway().models(organization_id=organization.pk)
    return gateway().queues.get(f"openai:{fake.base_url}", provider_kind="openai")


def test_a_burst_from_one_organization_does_not_starve_another(world, openai_platform, settings):
    settings.LLM_QUEUE_PROVIDER_CONCURRENCY = 1
    openai_platform.default = Reply.slow(0.15)

    async def scenario() -> None:
        queue = await openai_queue(world, openai_platform)
        alpha = CallContext(organization_id=world.alpha.pk, cache=False)
        beta = CallContext(organization_id=world.beta.pk, cache=False)
        burst = [
            asyncio.create_task(gateway().chat(ask("gpt-4o-mini", f"alpha {i}"), context=alpha))
            for i in range(6)
        ]
        await until(lambda: queue.waiting == 5)  # alpha's burst is queued first
        late = [
            asyncio.create_task(gateway().chat(ask("gpt-4o-mini", f"beta {i}"), context=beta))
            for i in range(2)
        ]
        await asyncio.gather(*burst, *late)

    async_to_sync(scenario)()
    order = sent_messages(openai_platform)
    assert len(order) == 8
    # First come first served would put beta's calls 7th and 8th; round robin serves them
    # as soon as each of alpha's calls ahead of them ends.
    assert order.index("beta 0") <= 2
    assert order.index("beta 1") <= 4
    alpha_order = [m for m in order if m.startswith("alpha")]
    assert alpha_order == [f"alpha {i}" for i in range(6)]  # each organization's own calls stay in order


def test_interactive_calls_overtake_queued_batch_work(world, openai_platform, settings):
    settings.LLM_QUEUE_PROVIDER_CONCURRENCY = 1
    openai_platform.default = Reply.slow(0.15)

    async def scenario() -> None:
        queue = await openai_queue(world, openai_platform)
        batch = CallContext(organization_id=world.alpha.pk, cache=False, priority="batch")
        agent = CallContext(organization_id=world.alpha.pk, cache=False, priority="agent")
        person = CallContext(organization_id=world.alpha.pk, cache=False, priority="interactive")
        tasks = [
            asyncio.create_task(gateway().chat(ask("gpt-4o-mini", f"batch {i}"), context=batch))
            for i in range(4)
        ]
        await until(lambda: queue.waiting == 3)
        tasks.append(asyncio.create_task(gateway().chat(ask("gpt-4o-mini", "agent"), context=agent)))
        await until(lambda: queue.waiting == 4)
        tasks.append(asyncio.create_task(gateway().chat(ask("gpt-4o-mini", "person"), context=person)))
        await asyncio.gather(*tasks)

    async_to_sync(scenario)()
    assert sent_messages(openai_platform) == ["batch 0", "person", "agent", "batch 1", "batch 2", "batch 3"]


def test_the_per_organization_limit_leaves_room_for_others():
    async def scenario() -> tuple[int, list[str]]:
        queue = FairQueue("test", concurrency=3, per_organization=2)
        most_alpha = 0
        started: list[str] = []

        async def call(organization_id: int, name: str) -> None:
            nonlocal most_alpha
            async with queue.slot(organization_id):
                started.append(name)
                most_alpha = max(most_alpha, queue.running_by_organization.get(1, 0))
                await asyncio.sleep(0.02)

        tasks = [asyncio.create_task(call(1, f"a{i}")) for i in range(6)]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(call(2, "b0")))
        await asyncio.gather(*tasks)
        return most_alpha, started

    most_alpha, started = async_to_sync(scenario)()
    assert most_alpha == 2  # never more than its limit, though a slot was free
    assert started.index("b0") == 2  # the third slot went to the other organization at once


def test_a_caller_that_gives_up_leaves_the_queue():
    async def scenario() -> tuple[int, int]:
        queue = FairQueue("test", concurrency=1, per_organization=1)
        release = asyncio.Event()

        async def hold() -> None:
            async with queue.slot(1):
                await release.wait()

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0)

        async def wait_for_slot() -> None:
            async with queue.slot(2):
                pass

        with pytest.raises(TimeoutError):
            await asyncio.wait_for(wait_for_slot(), timeout=0.05)
        waiting = queue.waiting
        release.set()
        await holder
        return waiting, queue.running

    waiting, running = async_to_sync(scenario)()
    assert waiting == 0
    assert running == 0


def test_a_stream_holds_its_slot_until_it_ends(world, openai_platform, settings):
    settings.LLM_QUEUE_PROVIDER_CONCURRENCY = 1
    openai_platform.script(Reply(text="a slow streamed answer", chunk_delay=0.05), Reply(text="quick"))

    async def scenario() -> tuple[float, float]:
        await openai_queue(world, openai_platform)
        loop = asyncio.get_running_loop()

        async def read_stream() -> float:
            context = CallContext(organization_id=world.alpha.pk, cache=False)
            async for _ in gateway().stream(ask("gpt-4o-mini", "stream"), context=context):
                pass
            return loop.time()

        async def quick_chat() -> float:
            await until(lambda: len(openai_platform.chat_requests) == 1)  # the stream is under way
            await gateway().chat(
                ask("gpt-4o-mini", "chat"), context=CallContext(organization_id=world.beta.pk)
            )
            return loop.time()

        stream_ended, chat_ended = await asyncio.gather(read_stream(), quick_chat())
        return stream_ended, chat_ended

    stream_ended, chat_ended = async_to_sync(scenario)()
    assert chat_ended >= stream_ended
    assert sent_messages(openai_platform) == ["stream", "chat"]
