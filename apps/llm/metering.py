"""Metering: every call's tokens, cost and latency, summed in process and written in
batches into hourly and daily roll-ups (UsageHourly, UsageDaily).

Why roll-ups and no per-call table: a call's row would be written on the hot path
and grow without bound; the pages, the API and budgets only ever ask for sums per
hour or day, model, user, API key and run. Calls are summed in memory under that
key, and a flush writes one multi-row INSERT ... ON CONFLICT DO UPDATE (adding to
the existing sums) per table. A flush happens when LLM_METERING_BATCH_SIZE calls
(default 500) are pending, when the oldest pending call is LLM_METERING_FLUSH_SECONDS
old (default 5; checked after each call), and at interpreter exit. Hourly rows are
pruned after LLM_USAGE_HOURLY_RETENTION_DAYS (default 14) by a beat task; daily
rows stay. A failed write keeps the sums for the next flush.

The same transaction writes the billing ledger (apps/billing/ledger.py): one UsageRecord
per (organization, hour, model, source, user, kind) summed in the flush, source being the
agent run, else the API key, else the user. Each flush has an id, and its rows'
idempotency keys derive from it: a flush whose write failed is retried as the same batch
with the same id (never merged into newer sums), so when the failure came after PostgreSQL
had committed (a connection lost on COMMIT), the retry finds its ledger rows there, writes
none, and skips these roll-ups too. A batch with nothing billable (only failures or cache
hits) has no ledger rows to tell by; its counts could then be added twice, never a cost.
The hot path (record) is unchanged: a dict update under a lock.

Failed calls count in `failures` and cost nothing; cache hits count in `requests`
and `cache_hits` with no tokens billed.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from apps.billing.ledger import UsageLine, idempotency_key, llm_unit_prices, usage_record_many
from apps.llm.models import UsageDaily, UsageHourly
from apps.llm.types import CallContext, Usage
from apps.tenancy.models import Organization

logger = logging.getLogger(__name__)

# (organization, hour, model, provider, user, api key, run)
Key = tuple[int, datetime, str, str, int, int, str]
COUNTERS = (
    "requests",
    "cache_hits",
    "failures",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "latency_ms_total",
)


@dataclass
class Sums:
    requests: int = 0
    cache_hits: int = 0
    failures: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    latency_ms_total: int = 0
    cost_usd: Decimal = Decimal(0)

    def add(self, other: Sums) -> None:
        for name in COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.cost_usd += other.cost_usd


class Meter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._pending: dict[Key, Sums] = {}
        # Batches whose write failed, oldest first, each with its flush id: retried as they were.
        self._unwritten: list[tuple[str, dict[Key, Sums]]] = []
        self._calls = 0
        self._oldest: float | None = None

    @property
    def batch_size(self) -> int:
        return int(getattr(settings, "LLM_METERING_BATCH_SIZE", 500))

    @property
    def flush_seconds(self) -> float:
        return float(getattr(settings, "LLM_METERING_FLUSH_SECONDS", 5))

    def record(
        self,
        *,
        context: CallContext,
        model: str,
        provider: str,
        usage: Usage | None = None,
        cost_usd: float = 0.0,
        latency_ms: float = 0.0,
        cache_hit: bool = False,
        failed: bool = False,
    ) -> None:
        hour = timezone.now().replace(minute=0, second=0, microsecond=0)
        key: Key = (
            context.organization_id,
            hour,
            model,
            provider,
            context.user_id or 0,
            context.api_key_id or 0,
            (context.run_id or "")[:64],
        )
        sums = Sums(latency_ms_total=round(latency_ms))
        if failed:
            sums.failures = 1
        else:
            sums.requests = 1
            sums.cache_hits = int(cache_hit)
            if usage is not None and not cache_hit:
                sums.input_tokens = usage.input_tokens
                sums.output_tokens = usage.output_tokens
                sums.cached_tokens = usage.cached_tokens
                sums.cost_usd = Decimal(repr(cost_usd)).quantize(Decimal("0.00000001"))
        with self._lock:
            existing = self._pending.get(key)
            if existing is None:
                self._pending[key] = sums
            else:
                existing.add(sums)
            self._calls += 1
            if self._oldest is None:
                self._oldest = time.monotonic()

    def due(self) -> bool:
        oldest = self._oldest
        if oldest is None:
            return False
        return self._calls >= self.batch_size or time.monotonic() - oldest >= self.flush_seconds

    def pending_cost(
        self, *, organization_id: int, api_key_id: int | None = None, run_id: str | None = None
    ) -> float:
        """Cost recorded here and not yet written (budgets add it to the written spend)."""
        with self._lock:
            total = Decimal(0)
            batches = [self._pending, *(batch for _, batch in self._unwritten)]
            for key, sums in (item for batch in batches for item in batch.items()):
                if key[0] != organization_id:
                    continue
                if api_key_id is not None and key[5] != api_key_id:
                    continue
                if run_id is not None and key[6] != run_id:
                    continue
                total += sums.cost_usd
        return float(total)

    def pending_tokens(self, *, organization_id: int) -> int:
        """Tokens (input and output) recorded here and not yet written: the monthly token
        quota (apps/billing/quotas.py) adds them to the written roll-ups."""
        with self._lock:
            batches = [self._pending, *(batch for _, batch in self._unwritten)]
            return sum(
                sums.input_tokens + sums.output_tokens
                for batch in batches
                for key, sums in batch.items()
                if key[0] == organization_id
            )

    def flush(self) -> int:
        """Write the pending sums (after any batch whose write failed before, under its own
        flush id); the number of roll-up keys written."""
        with self._flush_lock:
            with self._lock:
                batches = self._unwritten
                if self._pending:
                    batches.append((uuid.uuid4().hex, self._pending))
                self._unwritten, self._pending = [], {}
                self._calls = 0
                self._oldest = None
            written = 0
            for index, (flush_id, pending) in enumerate(batches):
                try:
                    with transaction.atomic():
                        written += usage_batch_write(flush_id=flush_id, pending=pending)
                except Exception:
                    left = batches[index:]
                    logger.exception(
                        "Writing LLM usage failed; keeping %d sums for the next flush",
                        sum(len(batch) for _, batch in left),
                    )
                    with self._lock:
                        self._unwritten = left + self._unwritten
                        self._calls += sum(len(batch) for _, batch in left)
                        self._oldest = self._oldest or time.monotonic()
                    raise
            return written

    def discard(self) -> None:
        with self._lock:
            self._pending.clear()
            self._unwritten.clear()
            self._calls = 0
            self._oldest = None


def usage_batch_write(*, flush_id: str, pending: dict[Key, Sums]) -> int:
    """One flush's sums: the billing ledger's rows, then these roll-ups, in the caller's
    transaction; the number of roll-up keys written. Written again with the same flush
    id (a retry), it writes nothing (0) when the ledger has its rows already.

    Sums of an organization deleted since its calls are left out: its rows would be
    refused (their foreign key), and a batch that can never be written would hold up
    every later flush of this process."""
    organization_ids = {key[0] for key in pending}
    existing = set(Organization.objects.filter(pk__in=organization_ids).values_list("pk", flat=True))
    if existing != organization_ids:
        logger.warning("LLM usage of deleted organizations %s left out", sorted(organization_ids - existing))
        pending = {key: sums for key, sums in pending.items() if key[0] in existing}
        if not pending:
            return 0
    lines = ledger_lines(flush_id=flush_id, pending=pending)
    if lines and not usage_record_many(lines):
        return 0  # this batch was committed before (its ledger rows are there)
    _upsert(UsageHourly._meta.db_table, "hour", pending, daily=False)
    _upsert(UsageDaily._meta.db_table, "day", pending, daily=True)
    return len(pending)


def _source(user_id: int, api_key_id: int, run_id: str) -> tuple[str, str]:
    """Whom the ledger charges a call to: its agent run, else its API key, else its user."""
    if run_id:
        return "agent_run", run_id
    if api_key_id:
        return "api_key", str(api_key_id)
    if user_id:
        return "user", str(user_id)
    return "system", ""


def ledger_lines(*, flush_id: str, pending: dict[Key, Sums]) -> list[UsageLine]:
    """The billing ledger's rows for one flush: per (organization, hour, model, source,
    user) the uncached input, cached input and output tokens, each at the catalogue's
    price. The input row carries what the call cost beyond the other two (the gateway's
    cost_usd, which includes e.g. Anthropic's premium on prompt-cache writes), so the
    ledger's LLM total equals what the gateway metered and budgets counted."""
    grouped: dict[tuple[int, datetime, str, str, str, int], Sums] = {}
    for (organization_id, hour, model, _provider, user_id, api_key_id, run_id), sums in pending.items():
        if not (sums.input_tokens or sums.output_tokens or sums.cached_tokens or sums.cost_usd):
            continue
        source_type, source_id = _source(user_id, api_key_id, run_id)
        key = (organization_id, hour, model, source_type, source_id, user_id)
        if key in grouped:
            grouped[key].add(sums)
        else:
            grouped[key] = Sums()
            grouped[key].add(sums)
    if not grouped:
        return []
    prices = llm_unit_prices({key[2] for key in grouped})
    lines: list[UsageLine] = []
    for (organization_id, hour, model, source_type, source_id, user_id), sums in grouped.items():
        price = prices.get(model, {})
        zero = Decimal(0)
        cached_price = price.get("llm_cached_tokens", zero)
        output_price = price.get("llm_output_tokens", zero)
        uncached = max(sums.input_tokens - sums.cached_tokens, 0)
        cached_amount = sums.cached_tokens * cached_price
        output_amount = sums.output_tokens * output_price
        input_amount = max(sums.cost_usd - cached_amount - output_amount, zero)
        quantities = {
            "llm_input_tokens": (uncached, price.get("llm_input_tokens", zero), input_amount),
            "llm_cached_tokens": (sums.cached_tokens, cached_price, cached_amount),
            "llm_output_tokens": (sums.output_tokens, output_price, output_amount),
        }
        for kind, (quantity, unit_price, amount) in quantities.items():
            if not quantity:
                continue
            lines.append(
                UsageLine(
                    organization_id=organization_id,
                    kind=kind,
                    quantity=Decimal(quantity),
                    unit_price=unit_price,
                    amount=amount,
                    model=model,
                    source_type=source_type,
                    source_id=source_id,
                    user_id=user_id or None,
                    occurred_at=hour,
                    idempotency_key=idempotency_key(
                        f"llm:{flush_id}",
                        organization_id,
                        hour.isoformat(),
                        model,
                        source_type,
                        source_id,
                        user_id,
                        kind,
                    ),
                )
            )
    return lines


def _upsert(table: str, time_column: str, pending: dict[Key, Sums], *, daily: bool) -> None:
    rows: dict[tuple[int, object, str, int, int, str], tuple[str, Sums]] = {}
    for (organization_id, hour, model, provider, user_id, api_key_id, run_id), sums in pending.items():
        when: object = hour.date() if daily else hour
        key = (organization_id, when, model, user_id, api_key_id, run_id)
        if key in rows:
            rows[key][1].add(sums)
        else:
            copy = Sums()
            copy.add(sums)
            rows[key] = (provider, copy)
    # One array per column through unnest(): a fixed statement of 15 parameters, which
    # psycopg does not parse anew for every flush as it did a VALUES list of 15 per row.
    # Sorted, so concurrent flushes of several processes lock the rows in one order.
    columns = [
        ("organization_id", "bigint[]"),
        (time_column, "date[]" if daily else "timestamptz[]"),
        ("model", "varchar[]"),
        ("provider", "varchar[]"),
        ("user_id", "bigint[]"),
        ("api_key_id", "bigint[]"),
        ("run_id", "varchar[]"),
        *((name, "bigint[]") for name in COUNTERS),
        ("cost_usd", "numeric[]"),
    ]
    arrays: list[list[Any]] = [[] for _ in columns]
    for key in sorted(rows, key=lambda key: (key[0], str(key[1]), *key[2:])):
        organization_id, when, model, user_id, api_key_id, run_id = key
        provider, sums = rows[key]
        values = [organization_id, when, model, provider, user_id, api_key_id, run_id]
        values += [getattr(sums, name) for name in COUNTERS]
        values.append(sums.cost_usd)
        for array, value in zip(arrays, values, strict=True):
            array.append(value)
    updates = ", ".join(f"{name} = {table}.{name} + EXCLUDED.{name}" for name in [*COUNTERS, "cost_usd"])
    conflict = f"organization_id, {time_column}, model, user_id, api_key_id, run_id"
    sql = (
        f"INSERT INTO {table} ({', '.join(name for name, _ in columns)}) "  # noqa: S608 (our own names)
        f"SELECT * FROM unnest({', '.join(f'%s::{array_type}' for _, array_type in columns)}) "
        f"ON CONFLICT ({conflict}) DO UPDATE SET {updates}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, arrays)


_meter = Meter()


def meter() -> Meter:
    return _meter


def _flush_at_exit() -> None:
    try:
        _meter.flush()
    except Exception:  # the interpreter is going away; the log says what was lost
        logger.exception("LLM usage could not be written at exit")


atexit.register(_flush_at_exit)
