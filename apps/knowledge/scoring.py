"""How relevant a chunk is: score = similarity x recency x usage.

- similarity: the cosine similarity of the query's vector and the chunk's, clamped to
  [0, 1] (what the index returns; 0 without a query, e.g. when pruning).
- recency = max(RECENCY_FLOOR, 0.5 ** (age_days / HALF_LIFE_DAYS)), where age is the
  time since the chunk was last *used*: the later of its creation and its last retrieval.
  Knowledge nobody has asked for in 90 days counts half as much as fresh knowledge, and
  never less than half (RECENCY_FLOOR): old code that is still current must stay findable.
- usage = 1 + log1p(useful_count) / USAGE_DAMPING: a chunk retrieved by runs that then
  succeeded ranks higher, with diminishing returns (1 useful run: x1.17, 10: x1.60,
  100: x2.15), so feedback reorders near ties without drowning similarity.

A search over-fetches OVERFETCH x k candidates from the index by similarity alone, then
re-ranks them by this score and keeps the best k. Pruning ranks by recency x usage
(similarity left out) and removes the lowest first.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Final

HALF_LIFE_DAYS: Final = 90.0
RECENCY_FLOOR: Final = 0.5
USAGE_DAMPING: Final = 4.0
OVERFETCH: Final = 4
MAX_CANDIDATES: Final = 400


def recency(last_used: datetime, now: datetime) -> float:
    age_days = max(0.0, (now - last_used).total_seconds() / 86400.0)
    return max(RECENCY_FLOOR, float(0.5 ** (age_days / HALF_LIFE_DAYS)))


def usage(useful_count: int) -> float:
    return 1.0 + math.log1p(max(0, useful_count)) / USAGE_DAMPING


def last_used(created_at: datetime, last_retrieved_at: datetime | None) -> datetime:
    return max(created_at, last_retrieved_at) if last_retrieved_at else created_at


def score(
    *,
    similarity: float,
    created_at: datetime,
    last_retrieved_at: datetime | None,
    useful_count: int,
    now: datetime,
) -> float:
    clamped = min(1.0, max(0.0, similarity))
    return clamped * recency(last_used(created_at, last_retrieved_at), now) * usage(useful_count)


def retention_score(
    *, created_at: datetime, last_retrieved_at: datetime | None, useful_count: int, now: datetime
) -> float:
    """What pruning ranks by: the score without a query."""
    return recency(last_used(created_at, last_retrieved_at), now) * usage(useful_count)


def candidates(k: int) -> int:
    """How many nearest items to ask the index for, to re-rank down to k."""
    return max(1, min(MAX_CANDIDATES, k * OVERFETCH))


def retention_sql(now: datetime) -> tuple[str, list[Any]]:
    """`retention_score` as a PostgreSQL expression over knowledge_chunk's columns, with its
    parameters: pruning orders by it without loading the rows."""
    last_used_sql = "GREATEST(created_at, COALESCE(last_retrieved_at, created_at))"
    sql = (
        f"GREATEST(%s, power(0.5, GREATEST(0, extract(epoch from (%s - {last_used_sql})) / 86400.0) / %s))"
        " * (1 + ln(1 + useful_count) / %s)"
    )
    return sql, [RECENCY_FLOOR, now, HALF_LIFE_DAYS, USAGE_DAMPING]
