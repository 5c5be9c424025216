"""Budgets hold across concurrent calls and processes: a call holds its least cost in a
ledger in Redis before it is sent and settles after, so a budget that allows N calls lets
exactly N through however many arrive at once, in however many processes."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import redis
from asgiref.sync import async_to_sync
from django.conf import settings as django_settings

from apps.llm import services
from apps.llm.budgets import budget_ledgers_clear
from apps.llm.errors import BudgetExceeded, ProviderFailed
from apps.llm.gateway import gateway
from apps.llm.metering import meter
from apps.llm.models import Budget, UsageDaily, UsageHourly
from apps.llm.types import CallContext, ChatRequest, StreamChunk
from apps.tenancy.audit import Actor
from tests.conftest import ROOT, World, _worker_env, free_port
from tests.fakes.llm_fake import Reply
from tests.fakes.openai_server import FakeOpenAI
from tests.llm.gateway_helpers import ask, chat

LIMIT = Decimal("0.0010")  # budgets keep 4 decimals
PROMPT = "word " * 900  # about 900 tokens: 0.000135 USD of input on gpt-4o-mini, 7 of them fit


def least_cost(request: ChatRequest, context: CallContext) -> tuple[float, int]:
    """What the gateway holds for this request (its prompt at the input price), and the prompt's tokens."""
    estimate = gateway().estimate_cost(request, context=context)
    return estimate["usd_low"], estimate["input_tokens"]


def calls_that_fit(limit: Decimal, cost: float) -> int:
    fit = float(limit) / cost
    assert 0.1 < fit - math.floor(fit) < 0.9, "the limit must not sit on a call's boundary"
    return math.floor(fit)


def room_for_one(cost: float) -> Decimal:
    limit = (Decimal(repr(cost)) * Decimal("1.5")).quantize(Decimal("0.0001"))
    assert calls_that_fit(limit, cost) == 1
    return limit


def answers_at_the_hold(fake: FakeOpenAI, tokens: int, **reply: Any) -> None:
    """Every call is billed exactly what it held (prompt tokens as estimated, no output), so
    how many fit does not depend on which calls settle first."""
    fake.default = Reply(usage=(tokens, 0, 0), **reply)


def concurrent_chats(request: ChatRequest, context: CallContext, count: int) -> list[BaseException | None]:
    async def one() -> BaseException | None:
        try:
            await gateway().chat(request, context=context)
        except BudgetExceeded as refused:
            return refused
        return None

    async def all_at_once() -> list[BaseException | None]:
        return list(await asyncio.gather(*(one() for _ in range(count))))

    return async_to_sync(all_at_once)()


def no_call_holds_budget() -> bool:
    client = redis.Redis.from_url(django_settings.REDIS_URL)
    try:
        ledgers = [key for key in client.scan_iter(match="llm:budget:v1:*") if not key.endswith(b":holds")]
        return all(int(client.hget(key, "held") or 0) == 0 for key in ledgers)
    finally:
        client.close()


def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.02)


@pytest.mark.django_db
def test_twenty_calls_at_once_on_a_budget_for_seven_send_exactly_seven(world, openai_platform):
    services.budget_set(
        organization=world.alpha, scope="organization", limit_usd=LIMIT, actor=Actor(user=world.alice)
    )
    context = CallContext(organization_id=world.alpha.pk, cache=False)
    request = ask("gpt-4o-mini", PROMPT)
    cost, tokens = least_cost(request, context)
    fit = calls_that_fit(LIMIT, cost)
    answers_at_the_hold(openai_platform, tokens, delay=0.2)

    outcomes = concurrent_chats(request, context, 20)

    assert len(openai_platform.chat_requests) == fit
    refused = [outcome for outcome in outcomes if outcome is not None]
    assert len(refused) == 20 - fit
    assert all("this month's budget of the organization: 0.001 USD" in str(r) for r in refused)
    # What was spent is what the calls cost, and not one more call fits.
    with pytest.raises(BudgetExceeded, match=re.escape(f"{fit * cost:.6g} USD spent")):
        chat(request, context)


@pytest.fixture
def run_budget(live_db: World) -> Iterator[CallContext]:
    """A budget for one run of Alpha's, committed so a second process sees it; removed after,
    with the usage both processes wrote for the run."""
    run_id = f"shared-{uuid.uuid4().hex[:8]}"
    budget = Budget.objects.create(organization=live_db.alpha, scope="run", run_id=run_id, limit_usd=LIMIT)
    try:
        yield CallContext(organization_id=live_db.alpha.pk, run_id=run_id, cache=False)
    finally:
        Budget.objects.filter(pk=budget.pk).delete()
        UsageHourly.objects.filter(organization=live_db.alpha, run_id=run_id).delete()
        UsageDaily.objects.filter(organization=live_db.alpha, run_id=run_id).delete()


def test_two_processes_share_one_budget(run_budget, openai_platform, tmp_path):
    context = run_budget
    request = ask("gpt-4o-mini", PROMPT)
    cost, tokens = least_cost(request, context)
    fit = calls_that_fit(LIMIT, cost)
    answers_at_the_hold(openai_platform, tokens, delay=0.3)
    env = {
        **_worker_env(),
        "OPENAI_API_KEY": "sk-platform-test",
        "OPENAI_BASE_URL": openai_platform.base_url,
        "ANTHROPIC_API_KEY": "",
        "GEMINI_API_KEY": "",
    }
    options = {
        "organization_id": context.organization_id,
        "run_id": context.run_id,
        "text": PROMPT,
        "calls": 10,
    }
    errors = tmp_path / "worker.err"
    with errors.open("w") as stderr:
        worker = subprocess.Popen(
            [sys.executable, "-m", "tests.llm.gateway_process", json.dumps(options)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        assert worker.stdout is not None
        assert worker.stdin is not None
        assert worker.stdout.readline().strip() == "ready", errors.read_text()
        worker.stdin.write("go\n")
        worker.stdin.flush()
        here = concurrent_chats(request, context, 10)  # at the same time as the other process's ten
        output, _ = worker.communicate(timeout=60)
        assert worker.returncode == 0, errors.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
    there = json.loads(output.strip().splitlines()[-1])

    # Each process alone would have sent all the calls that fit: together they send that many.
    assert len(openai_platform.chat_requests) == fit
    answered_here = sum(outcome is None for outcome in here)
    assert answered_here + there["answered"] == fit
    refused = [str(outcome) for outcome in here if outcome is not None] + there["refused"]
    assert len(refused) == 20 - fit
    assert all(f"budget of run {context.run_id}" in message for message in refused)


@pytest.mark.django_db
def test_a_call_in_flight_holds_its_cost_and_a_failed_one_gives_it_back(world, openai_platform):
    context = CallContext(organization_id=world.alpha.pk, cache=False)
    request = ask("gpt-4o-mini", PROMPT)
    cost, tokens = least_cost(request, context)
    services.budget_set(
        organization=world.alpha,
        scope="organization",
        limit_usd=room_for_one(cost),
        actor=Actor(user=world.alice),
    )
    openai_platform.script(Reply.error(400, "the provider refuses this one", delay=0.5))
    answers_at_the_hold(openai_platform, tokens)

    async def one_failing_while_another_is_tried() -> tuple[BudgetExceeded, ProviderFailed]:
        failing = asyncio.ensure_future(gateway().chat(request, context=context))
        while not openai_platform.chat_requests:  # the first call has its hold and is at the provider
            await asyncio.sleep(0.01)
        with pytest.raises(BudgetExceeded) as meanwhile:
            await gateway().chat(request, context=context)
        with pytest.raises(ProviderFailed) as failed:
            await failing
        return meanwhile.value, failed.value

    meanwhile, failed = async_to_sync(one_failing_while_another_is_tried)()
    assert "0 USD spent" in str(meanwhile)
    assert f"{cost:.6g} USD held by calls in progress" in str(meanwhile)
    assert failed.status == 400
    # The failed call cost nothing and holds nothing: the next one goes out.
    chat(request, context)
    assert len(openai_platform.chat_requests) == 2
    with pytest.raises(BudgetExceeded, match=re.escape(f"{cost:.6g} USD spent")):
        chat(request, context)
    assert len(openai_platform.chat_requests) == 2


def read_stream(
    request: ChatRequest, context: CallContext, *, stop_after: int | None = None
) -> list[StreamChunk]:
    """The stream's chunks, all of them or the first `stop_after` (then the consumer stops)."""

    async def collect() -> list[StreamChunk]:
        chunks: list[StreamChunk] = []
        iterator = gateway().stream(request, context=context)
        async for chunk in iterator:
            chunks.append(chunk)
            if stop_after is not None and len(chunks) >= stop_after:
                await iterator.aclose()  # type: ignore[attr-defined]
                break
        return chunks

    return async_to_sync(collect)()


@pytest.mark.django_db
def test_a_stream_is_billed_to_the_budget_when_it_ends(world, openai_platform):
    context = CallContext(organization_id=world.alpha.pk, cache=False)
    request = ask("gpt-4o-mini", PROMPT)
    cost, tokens = least_cost(request, context)
    services.budget_set(
        organization=world.alpha,
        scope="organization",
        limit_usd=room_for_one(cost),
        actor=Actor(user=world.alice),
    )
    answers_at_the_hold(openai_platform, tokens)
    chunks = read_stream(request, context)
    assert chunks[-1].usage is not None
    with pytest.raises(BudgetExceeded, match=re.escape(f"{cost:.6g} USD spent")):
        chat(request, context)
    assert len(openai_platform.chat_requests) == 1


@pytest.mark.django_db
def test_a_stream_its_reader_stops_early_still_counts_its_prompt(world, openai_platform):
    context = CallContext(organization_id=world.alpha.pk, cache=False)
    request = ask("gpt-4o-mini", PROMPT)
    cost, tokens = least_cost(request, context)
    services.budget_set(
        organization=world.alpha,
        scope="organization",
        limit_usd=room_for_one(cost),
        actor=Actor(user=world.alice),
    )
    openai_platform.script(Reply(text="a long answer " * 50, usage=(tokens, 700, 0), chunk_delay=0.02))
    assert len(read_stream(request, context, stop_after=2)) == 2
    wait_until(no_call_holds_budget)  # the stream ends as its consumer leaves
    with pytest.raises(BudgetExceeded, match=re.escape(f"{cost:.6g} USD spent")):
        chat(request, context)
    assert len(openai_platform.chat_requests) == 1


@pytest.mark.django_db
def test_a_lost_ledger_starts_again_from_the_written_spend(world, openai_platform):
    services.budget_set(
        organization=world.alpha, scope="organization", limit_usd="0.002", actor=Actor(user=world.alice)
    )
    context = CallContext(organization_id=world.alpha.pk)
    openai_platform.script(Reply(usage=(10_000, 1_000, 0)))  # 0.0021 USD on gpt-4o-mini
    chat(ask("gpt-4o-mini", "spend"), context)
    meter().flush()
    assert budget_ledgers_clear() > 0  # Redis restarted, or evicted the keys
    with pytest.raises(BudgetExceeded, match=re.escape("0.002 USD, 0.0021 USD spent")):
        chat(ask("gpt-4o-mini", "one more"), context)
    assert len(openai_platform.chat_requests) == 1


@pytest.mark.django_db
def test_with_redis_unreachable_budgets_are_checked_against_the_database(
    world, openai_platform, settings, caplog
):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    services.budget_set(
        organization=world.alpha, scope="organization", limit_usd="0.002", actor=Actor(user=world.alice)
    )
    context = CallContext(organization_id=world.alpha.pk)
    openai_platform.script(Reply(usage=(10_000, 1_000, 0)))
    with caplog.at_level(logging.WARNING, logger="apps.llm.budgets"):
        chat(ask("gpt-4o-mini", "spend"), context)
        with pytest.raises(BudgetExceeded, match=re.escape("0.0021 USD spent")):
            chat(ask("gpt-4o-mini", "one more"), context)
    assert len(openai_platform.chat_requests) == 1
    outage = [r for r in caplog.records if r.name == "apps.llm.budgets" and "unreachable" in r.getMessage()]
    assert len(outage) == 1
