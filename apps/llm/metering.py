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

Failed calls count in `failures` and cost nothing; cache hits count in `requests`
and `cache_hits` with no tokens billed.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from apps.llm.models import UsageDaily, UsageHourly
from apps.llm.types import CallContext, Usage

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
            for key, sums in self._pending.items():
                if key[0] != organization_id:
                    continue
                if api_key_id is not None and key[5] != api_key_id:
                    continue
                if run_id is not None and key[6] != run_id:
                    continue
                total += sums.cost_usd
        return float(total)

    def flush(self) -> int:
        """Write the pending sums; the number of roll-up keys written."""
        with self._flush_lock:
            with self._lock:
                pending, self._pending = self._pending, {}
                self._calls = 0
                self._oldest = None
            if not pending:
                return 0
            try:
                with transaction.atomic():
                    _upsert(UsageHourly._meta.db_table, "hour", pending, daily=False)
                    _upsert(UsageDaily._meta.db_table, "day", pending, daily=True)
            except Exception:
                logger.exception("Writing LLM usage failed; keeping %d sums for the next flush", len(pending))
                with self._lock:
                    for key, sums in pending.items():
                        existing = self._pending.get(key)
                        if existing is None:
                            self._pending[key] = sums
                        else:
                            existing.add(sums)
                    self._calls += len(pending)
                    self._oldest = self._oldest or time.monotonic()
                raise
            return len(pending)

    def discard(self) -> None:
        with self._lock:
            self._pending.clear()
            self._calls = 0
            self._oldest = None


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
    columns = [
        "organization_id",
        time_column,
        "model",
        "provider",
        "user_id",
        "api_key_id",
        "run_id",
        *COUNTERS,
        "cost_usd",
    ]
    values: list[Any] = []
    for (organization_id, when, model, user_id, api_key_id, run_id), (provider, sums) in rows.items():
        values += [organization_id, when, model, provider, user_id, api_key_id, run_id]
        values += [getattr(sums, name) for name in COUNTERS]
        values.append(sums.cost_usd)
    placeholders = ", ".join(["(" + ", ".join(["%s"] * len(columns)) + ")"] * len(rows))
    updates = ", ".join(f"{name} = {table}.{name} + EXCLUDED.{name}" for name in [*COUNTERS, "cost_usd"])
    conflict = f"organization_id, {time_column}, model, user_id, api_key_id, run_id"
    sql = (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES {placeholders} "  # noqa: S608 (our own names)
        f"ON CONFLICT ({conflict}) DO UPDATE SET {updates}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, values)


_meter = Meter()


def meter() -> Meter:
    return _meter


def _flush_at_exit() -> None:
    try:
        _meter.flush()
    except Exception:  # the interpreter is going away; the log says what was lost
        logger.exception("LLM usage could not be written at exit")


atexit.register(_flush_at_exit)
