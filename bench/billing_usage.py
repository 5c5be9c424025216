"""The usage-recording section of bench/billing.py: what the billing ledger costs.

    python -m bench.billing --section usage-recording [--calls 4000] [--rows 100000]

(a) Added latency per metered LLM call (goal: p50 <= 0.2 ms): `gateway().chat` in
    this process against the loopback fake OpenAI API in a process of its own
    (it answers at once), cache off, with the gateway's real meter (record on every
    call; the flush, with its ledger rows and roll-ups, inline in the call that finds
    it due, as in production) and with a meter that records nothing, alternating
    call by call, concurrency 1, p50/p99 of each and the difference. Beside it, the parts
    measured alone: Meter.record per call, and a flush of a full batch
    (LLM_METERING_BATCH_SIZE calls over a realistic spread of runs and users) divided
    by its calls.
(b) Ledger rows written per second: usage_record_many in batches of --batch rows
    (one statement each, roll-ups included, a transaction per batch) spread over 20
    organizations, 48 hours and 200 sources; then the same batches again (every key
    there: nothing written, the replay's rate); then usage_record one row at a time
    for comparison.

Runs against its own database, agentyard_bench_billing_usage (dropped at the end
unless --keep-ledger-db), and Redis database 7, unless another section has set Django up
already, in which case it adds its organizations to that database.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.api import percentile
from bench.provisioning import progress

ROOT = Path(__file__).resolve().parent.parent
BENCH_DATABASE = "agentyard_bench_billing_usage"
BENCH_REDIS_DB = 7
MODEL = "gpt-4o-mini"
GOAL_ADDED_P50_MS = 0.2
ORGANIZATIONS = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--calls", type=int, default=4000, help="usage-recording: timed gateway calls per contender"
    )
    parser.add_argument("--rows", type=int, default=100_000, help="usage-recording: ledger rows to write")
    parser.add_argument("--batch", type=int, default=1000, help="usage-recording: rows per usage_record_many")
    parser.add_argument(
        "--keep-ledger-db",
        action="store_true",
        help=f"usage-recording: leave the {BENCH_DATABASE} database behind",
    )


# Set-up -------------------------------------------------------------------------------------------


@contextmanager
def django_database(keep: bool) -> Iterator[None]:
    """Django set up on a fresh bench database, unless it is set up already."""
    from django.conf import settings

    if settings.configured:
        yield
        return
    from bench.provisioning import DEFAULT_DATABASE_URL, database_recreate, database_url, quiet

    server_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    redis_url = urlsplit(os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")._replace(
        path=f"/{BENCH_REDIS_DB}"
    )
    database_recreate(server_url, BENCH_DATABASE)
    os.environ.update(
        {
            "DATABASE_URL": database_url(server_url, BENCH_DATABASE),
            "REDIS_URL": redis_url.geturl(),
            "DJANGO_SETTINGS_MODULE": "config.settings.dev",
            "DEBUG": "false",
            "LOG_LEVEL": "WARNING",
            "OPENAI_API_KEY": "",
            "OPENAI_BASE_URL": "",
        }
    )
    try:
        import django

        django.setup()
        from django.core.management import call_command

        with quiet():
            call_command("migrate", interactive=False, verbosity=0)
        yield
    finally:
        from django.db import connections

        connections.close_all()
        if not keep:
            database_recreate(server_url, BENCH_DATABASE, create=False)


FAKE_SCRIPT = """
import sys
from socketserver import StreamRequestHandler
from tests.fakes.openai_server import openai_server
# The fake writes headers and body apart: without TCP_NODELAY, Nagle and delayed ACKs add 40 ms.
StreamRequestHandler.disable_nagle_algorithm = True
with openai_server() as fake:
    print(fake.base_url, flush=True)
    sys.stdin.read()
"""


@contextmanager
def fake_openai() -> Iterator[str]:
    """The fake in a process of its own, so it does not share this one's interpreter lock."""
    process = subprocess.Popen(
        [sys.executable, "-c", FAKE_SCRIPT],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        if not base_url:
            raise RuntimeError("the fake OpenAI server did not start")
        yield base_url
    finally:
        if process.stdin is not None:
            process.stdin.close()
        process.terminate()
        process.wait(timeout=10)


def organizations_create(base_url: str) -> list[int]:
    """ORGANIZATIONS organizations (public-schema rows only: the ledger needs no schema),
    the first with OpenAI credentials pointing at the fake."""
    from apps.llm.credentials import api_key_encrypt
    from apps.llm.models import ProviderCredential
    from apps.tenancy.models import Organization

    suffix = uuid.uuid4().hex[:8]
    ids = []
    for number in range(ORGANIZATIONS):
        organization = Organization.objects.create(
            name=f"Ledger bench {number}",
            slug=f"ledger-bench-{suffix}-{number}",
            schema_name=f"ledger_bench_{suffix}_{number}",
            status=Organization.Status.ACTIVE,
        )
        ids.append(organization.pk)
    ProviderCredential.objects.create(
        organization_id=ids[0],
        provider="openai",
        api_key_encrypted=api_key_encrypt("sk-bench"),
        base_url=base_url,
    )
    return ids


# (a) added latency per metered call ---------------------------------------------------------------


def _null_meter() -> Any:
    from apps.llm.metering import Meter

    class NullMeter(Meter):
        """Records nothing: the gateway without metering, for the comparison only."""

        def record(self, **_: Any) -> None:
            return None

        def due(self) -> bool:
            return False

    return NullMeter()


async def gateway_latencies(organization_id: int, calls: int) -> dict[str, list[float]]:
    """Metered and unmetered calls alternate one by one, so the drift of a machine whose
    cores other work shares hits both alike."""
    from apps.llm.gateway import gateway
    from apps.llm.metering import meter
    from apps.llm.types import CallContext, ChatRequest, Message

    request = ChatRequest(model=MODEL, messages=(Message(role="user", content="Say hello."),))
    context = CallContext(organization_id=organization_id, run_id="bench-run", cache=False)
    real, null = meter(), _null_meter()

    async def call() -> Any:
        return await gateway().chat(request, context=context)

    for _ in range(200):  # warm-up: connections, snapshots, the first flush
        await call()
    samples: dict[str, list[float]] = {"unmetered": [], "metered": []}
    for _ in range(calls):
        for name, chosen in (("unmetered", null), ("metered", real)):
            gateway().meter = chosen
            started = time.perf_counter()
            await call()
            samples[name].append((time.perf_counter() - started) * 1000)
    gateway().meter = real
    return samples


def record_cost_us(organization_id: int, calls: int = 100_000) -> float:
    """Meter.record alone, µs per call, on a meter of its own (never flushed)."""
    from apps.llm.metering import Meter
    from apps.llm.types import CallContext, Usage

    meter = Meter()
    context = CallContext(organization_id=organization_id, user_id=7, run_id="bench-run")
    usage = Usage(input_tokens=900, output_tokens=120, cached_tokens=300)
    started = time.perf_counter()
    for _ in range(calls):
        meter.record(
            context=context, model=MODEL, provider="openai", usage=usage, cost_usd=0.00021, latency_ms=3.0
        )
    return (time.perf_counter() - started) / calls * 1e6


def flush_cost(organization_ids: list[int], batch: int, rounds: int = 20) -> tuple[float, float, int, int]:
    """A flush of `batch` calls spread over 50 runs, 10 users and the organizations: ms
    per flush (median), ms of its ledger part alone (the same batch's ledger rows and
    roll-ups, written by themselves), roll-up keys and ledger rows per flush."""
    from django.db import transaction

    from apps.billing.ledger import usage_record_many
    from apps.billing.models import UsageRecord
    from apps.llm.metering import Meter, ledger_lines
    from apps.llm.types import CallContext, Usage

    usage = Usage(input_tokens=900, output_tokens=120, cached_tokens=300)

    def filled() -> Meter:
        meter = Meter()
        for number in range(batch):
            context = CallContext(
                organization_id=organization_ids[number % len(organization_ids)],
                user_id=number % 10 + 1,
                run_id=f"run-{number % 50}",
            )
            meter.record(context=context, model=MODEL, provider="openai", usage=usage, cost_usd=0.00021)
        return meter

    flushes: list[float] = []
    ledger_parts: list[float] = []
    keys = rows = 0
    for _ in range(rounds):
        meter = filled()
        before = UsageRecord.objects.count()
        started = time.perf_counter()
        keys = meter.flush()
        flushes.append((time.perf_counter() - started) * 1000)
        rows = UsageRecord.objects.count() - before
        pending = filled()._pending  # the bench reads the sums a flush would write
        started = time.perf_counter()
        with transaction.atomic():
            usage_record_many(ledger_lines(flush_id=uuid.uuid4().hex, pending=pending))
        ledger_parts.append((time.perf_counter() - started) * 1000)
    return statistics.median(flushes), statistics.median(ledger_parts), keys, rows


# (b) ledger rows per second -----------------------------------------------------------------------


def ledger_lines(organization_ids: list[int], count: int, prefix: str) -> list[Any]:
    from django.utils import timezone

    from apps.billing.ledger import UsageLine

    start = timezone.now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=48)
    kinds = ("llm_input_tokens", "llm_output_tokens", "sandbox_seconds")
    return [
        UsageLine(
            organization_id=organization_ids[number % len(organization_ids)],
            kind=kinds[number % 3],
            quantity=Decimal(number % 997 + 1),
            unit_price=None if kinds[number % 3] == "sandbox_seconds" else Decimal("0.00000015"),
            model="" if kinds[number % 3] == "sandbox_seconds" else MODEL,
            source_type="agent_run",
            source_id=f"run-{number % 200}",
            idempotency_key=f"{prefix}:{number}",
            occurred_at=start + timedelta(minutes=number % (48 * 60)),
        )
        for number in range(count)
    ]


def rows_per_second(lines: list[Any], batch: int) -> tuple[float, int]:
    from django.db import transaction

    from apps.billing.ledger import usage_record_many

    written = 0
    started = time.perf_counter()
    for start in range(0, len(lines), batch):
        with transaction.atomic():
            written += usage_record_many(lines[start : start + batch])
    return len(lines) / (time.perf_counter() - started), written


def single_rows_per_second(lines: list[Any]) -> float:
    from django.db import transaction

    from apps.billing.ledger import usage_record

    started = time.perf_counter()
    for line in lines:
        with transaction.atomic():
            usage_record(
                organization_id=line.organization_id,
                kind=line.kind,
                quantity=line.quantity,
                unit_price=line.unit_price,
                model=line.model,
                source_type=line.source_type,
                source_id=line.source_id,
                idempotency_key=line.idempotency_key,
                occurred_at=line.occurred_at,
            )
    return len(lines) / (time.perf_counter() - started)


def row(label: str, *values: float, digits: int = 3) -> str:
    return f"{label:<56}" + "".join(f"{value:>10.{digits}f}" for value in values)


# The section --------------------------------------------------------------------------------------


def usage_recording(options: argparse.Namespace) -> str:
    calls = max(int(getattr(options, "calls", 4000)), 80)
    total_rows = max(int(getattr(options, "rows", 100_000)), 1000)
    batch = max(int(getattr(options, "batch", 1000)), 1)
    with (
        tempfile.TemporaryDirectory(prefix="agentyard-bench-ledger-"),
        django_database(bool(getattr(options, "keep_ledger_db", False))),
    ):
        from django.conf import settings

        with fake_openai() as base_url:
            organization_ids = organizations_create(base_url)
            progress(f"bench: {calls} gateway calls each, metered and unmetered, interleaved")
            latencies = asyncio.run(gateway_latencies(organization_ids[0], calls))
        from apps.llm.metering import meter

        meter().flush()
        record_us = record_cost_us(organization_ids[0])
        metering_batch = int(settings.LLM_METERING_BATCH_SIZE)
        progress(f"bench: flushes of {metering_batch} calls")
        flush_ms, ledger_ms, flush_keys, flush_rows = flush_cost(organization_ids, metering_batch)
        progress(f"bench: {total_rows} ledger rows in batches of {batch}")
        lines = ledger_lines(organization_ids, total_rows, f"bench-{uuid.uuid4().hex[:8]}")
        many_rate, written = rows_per_second(lines, batch)
        replay_rate, replayed = rows_per_second(lines, batch)
        single_lines = ledger_lines(
            organization_ids, min(2000, total_rows), f"bench-one-{uuid.uuid4().hex[:8]}"
        )
        single_rate = single_rows_per_second(single_lines)

    metered, unmetered = latencies["metered"], latencies["unmetered"]
    added_p50 = statistics.median(metered) - statistics.median(unmetered)
    added_p99 = percentile(metered, 0.99) - percentile(unmetered, 0.99)
    amortized_ms = flush_ms / metering_batch
    goal = "met" if added_p50 <= GOAL_ADDED_P50_MS else "NOT met"
    flush_label = f"  flush of {metering_batch} calls ({flush_keys} keys, {flush_rows} ledger rows)"
    lines_out = [
        f"(a) added latency per metered LLM call (fake OpenAI answering at once, {len(metered)} calls each)",
        f"{'':<56}{'p50 ms':>10}{'p99 ms':>10}",
        row("gateway call, no metering", statistics.median(unmetered), percentile(unmetered, 0.99)),
        row(
            "gateway call, metered (ledger in the flush)",
            statistics.median(metered),
            percentile(metered, 0.99),
        ),
        row("added by metering", added_p50, added_p99) + f"   goal p50 <= {GOAL_ADDED_P50_MS} ms: {goal}",
        row("  Meter.record alone, per call", record_us / 1000),
        row(flush_label, flush_ms),
        row("    of which the ledger's rows and roll-ups", ledger_ms),
        row("  that flush per call (amortized)", amortized_ms),
        "",
        f"(b) ledger rows written per second ({total_rows} rows, {ORGANIZATIONS} organizations,"
        " roll-ups included)",
        f"{'':<56}{'rows/s':>10}",
        row(f"usage_record_many, {batch} rows per call", many_rate, digits=0) + f"   ({written} written)",
        row("the same again (every key there: nothing written)", replay_rate, digits=0)
        + f"   ({replayed} written)",
        row(f"usage_record, one row per transaction ({len(single_lines)})", single_rate, digits=0),
    ]
    return "\n".join(lines_out)
