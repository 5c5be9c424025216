"""Budgets: a call holds its least cost before it is sent and settles after, so the
limit holds across every process that calls models (web and Celery workers).

A budget limits spend in US dollars per day, per month (UTC) or in total, for the
whole organization, one of its API keys, or one agent run. Spend lives in a Redis
ledger per budget and period bucket, which all processes share:

    llm:budget:v1:<organization>:<budget id>:<scope>:<API key or run>:<day, month or "total">
      a hash: "spent" (settled), "held" (the sum of open holds), "h:<hold id>" (each hold)
    ...:holds
      a sorted set: open holds by deadline, so a hold whose process died lapses

Amounts are integers of 1e-8 USD (the roll-ups' precision). budgets_reserve runs one
Lua script over every budget that applies to the call's CallContext: when spent +
held + the call's least cost (its prompt at the model's input price) fits every
limit, it adds a hold to each; otherwise BudgetExceeded (HTTP 402) names the budget
and nothing is sent. After the call, BudgetHold.settle(cost) replaces the hold by
the real cost, release() drops it (failed calls cost nothing), and a stream the
consumer stopped early settles at the hold (its prompt was sent). Holds are the
least cost, as the check always was: calls in flight can carry spend past the limit
by their output, and the next call is refused.

A missing ledger (a new period, a Redis restart or eviction) is seeded once,
atomically, from the written roll-ups plus this process's unwritten sums, so losing
Redis's copy never means "no limit". With Redis unreachable the check falls back to
those sums alone (another process's spend counts once its meter flushes, within
LLM_METERING_FLUSH_SECONDS), logged once per outage, never an error. Keys expire a
day after their period ends ("total": a month after the last call).

Organizations without budgets (most) pay nothing here: no Redis round trip. The plan's
monthly token quota (apps/billing/quotas.py) is checked first, from a per-process reading
of the organization's written usage refreshed every BILLING_QUOTA_CACHE_SECONDS.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import redis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone

from apps.billing.quotas import token_quota_check
from apps.llm import selectors
from apps.llm.errors import BudgetExceeded
from apps.llm.metering import Meter
from apps.llm.models import Budget
from apps.llm.selectors import BudgetInfo, OrganizationConfig
from apps.llm.types import CallContext

logger = logging.getLogger(__name__)

PERIOD_WORDS = {"day": "today's", "month": "this month's", "total": "the total"}
UNITS_PER_USD = 10**8
KEY_PREFIX = "llm:budget:v1:"
# After a Redis error the ledger is skipped for this long, so an outage costs one
# timeout, not one per call.
REDIS_RETRY_SECONDS = 10.0
SEED_ATTEMPTS = 3

# KEYS: per budget, its ledger hash and its holds' sorted set.
# ARGV: hold id, amount, hold lifetime in ms, then per budget its limit and expire-at (unix s).
# Returns {"held"}, {"seed", i, ...} (ledgers missing), or {"over", i, spent, held}.
_RESERVE = """
redis.replicate_commands()  -- TIME before writes (the default from Redis 5 on)
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local id, amount, lifetime = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local budgets = #KEYS / 2
local missing = {'seed'}
for i = 1, budgets do
  if redis.call('EXISTS', KEYS[2 * i - 1]) == 0 then missing[#missing + 1] = i end
end
if #missing > 1 then return missing end
for i = 1, budgets do
  local ledger, holds = KEYS[2 * i - 1], KEYS[2 * i]
  for _, lapsed in ipairs(redis.call('ZRANGEBYSCORE', holds, '-inf', now_ms)) do
    local held = redis.call('HGET', ledger, 'h:' .. lapsed)
    if held then
      redis.call('HINCRBY', ledger, 'held', -tonumber(held))
      redis.call('HDEL', ledger, 'h:' .. lapsed)
    end
    redis.call('ZREM', holds, lapsed)
  end
  local spent = tonumber(redis.call('HGET', ledger, 'spent') or '0')
  local held = tonumber(redis.call('HGET', ledger, 'held') or '0')
  local limit = tonumber(ARGV[2 + 2 * i])
  if spent + held >= limit or spent + held + amount > limit then
    return {'over', i, spent, held}
  end
end
for i = 1, budgets do
  local ledger, holds, expire_at = KEYS[2 * i - 1], KEYS[2 * i], ARGV[3 + 2 * i]
  redis.call('HINCRBY', ledger, 'held', amount)
  redis.call('HSET', ledger, 'h:' .. id, amount)
  redis.call('ZADD', holds, now_ms + lifetime, id)
  redis.call('EXPIREAT', ledger, expire_at)
  redis.call('EXPIREAT', holds, expire_at)
end
return {'held'}
"""

# KEYS: one ledger hash and its holds; ARGV: spent so far, expire-at. Only when missing:
# the holds of a lost ledger go with it.
_SEED = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'spent', ARGV[1], 'held', 0)
redis.call('DEL', KEYS[2])
redis.call('EXPIREAT', KEYS[1], ARGV[2])
return 1
"""

# KEYS: as for _RESERVE; ARGV: hold id, cost (0: released). A ledger lost meanwhile is
# left alone: its next seed reads the cost from the meter's sums.
_SETTLE = """
for i = 1, #KEYS / 2 do
  local ledger, holds = KEYS[2 * i - 1], KEYS[2 * i]
  if redis.call('EXISTS', ledger) == 1 then
    local held = redis.call('HGET', ledger, 'h:' .. ARGV[1])
    if held then
      redis.call('HINCRBY', ledger, 'held', -tonumber(held))
      redis.call('HDEL', ledger, 'h:' .. ARGV[1])
    end
    redis.call('ZREM', holds, ARGV[1])
    if tonumber(ARGV[2]) > 0 then redis.call('HINCRBY', ledger, 'spent', ARGV[2]) end
  end
end
return 1
"""


def applicable(config: OrganizationConfig, context: CallContext) -> list[BudgetInfo]:
    budgets = []
    for budget in config.budgets:
        if (
            budget.scope == Budget.Scope.ORGANIZATION
            or (
                budget.scope == Budget.Scope.API_KEY
                and context.api_key_id
                and budget.api_key_id == context.api_key_id
            )
            or (budget.scope == Budget.Scope.RUN and context.run_id and budget.run_id == context.run_id)
        ):
            budgets.append(budget)
    return budgets


def _describe(budget: BudgetInfo) -> str:
    period = PERIOD_WORDS.get(budget.period, budget.period)
    if budget.scope == Budget.Scope.API_KEY:
        return f"{period} budget of this API key"
    if budget.scope == Budget.Scope.RUN:
        return f"{period} budget of run {budget.run_id}"
    return f"{period} budget of the organization"


def _exceeded(budget: BudgetInfo, spent: float, estimate_usd: float, held: float = 0.0) -> BudgetExceeded:
    in_flight = f", {held:.6g} USD held by calls in progress" if held > 0 else ""
    return BudgetExceeded(
        f"The call would go over {_describe(budget)}: {budget.limit_usd:g} USD,"
        f" {spent:.6g} USD spent{in_flight}, this call at least {estimate_usd:.6g} USD."
    )


def _pending_cost(meter: Meter, organization_id: int, budget: BudgetInfo) -> float:
    return meter.pending_cost(
        organization_id=organization_id,
        api_key_id=budget.api_key_id if budget.scope == Budget.Scope.API_KEY else None,
        run_id=budget.run_id if budget.scope == Budget.Scope.RUN else None,
    )


def budgets_check_sync(
    *, config: OrganizationConfig, context: CallContext, estimate_usd: float, meter: Meter
) -> None:
    """The check without the shared ledger (Redis unreachable): the written roll-ups plus
    this process's unwritten sums."""
    for budget in applicable(config, context):
        spent = selectors.budget_spent(organization_id=context.organization_id, budget=budget)
        spent += _pending_cost(meter, context.organization_id, budget)
        if spent + estimate_usd > budget.limit_usd or spent >= budget.limit_usd:
            raise _exceeded(budget, spent, estimate_usd)


# --- the shared ledger -----------------------------------------------------------


def _units(usd: float) -> int:
    return max(round(usd * UNITS_PER_USD), 0)


def _usd(units: int) -> float:
    return units / UNITS_PER_USD


@dataclass(frozen=True)
class _Ledger:
    budget: BudgetInfo
    key: str
    expire_at: int  # unix seconds

    @property
    def holds_key(self) -> str:
        return self.key + ":holds"


def _ledger(organization_id: int, budget: BudgetInfo, now: datetime) -> _Ledger:
    if budget.period == Budget.Period.DAY:
        bucket = now.strftime("%Y-%m-%d")
        ends = now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    elif budget.period == Budget.Period.MONTH:
        bucket = now.strftime("%Y-%m")
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        ends = (start + timedelta(days=32)).replace(day=1)
    else:
        bucket = "total"
        ends = now + timedelta(days=30)  # refreshed by every call; a lost ledger is seeded again
    subject = budget.api_key_id if budget.scope == Budget.Scope.API_KEY else budget.run_id or "-"
    key = f"{KEY_PREFIX}{organization_id}:{budget.id}:{budget.scope}:{subject}:{bucket}"
    return _Ledger(budget=budget, key=key, expire_at=int((ends + timedelta(days=1)).timestamp()))


class _Shared:
    """One Redis client per URL (thread-safe), with the scripts and the outage state."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        self.reserve = self.client.register_script(_RESERVE)
        self.seed = self.client.register_script(_SEED)
        self.settle = self.client.register_script(_SETTLE)
        self.down_until = 0.0
        self.outage_logged = False

    @property
    def down(self) -> bool:
        return time.monotonic() < self.down_until

    def failed(self, action: str) -> None:
        self.down_until = time.monotonic() + REDIS_RETRY_SECONDS
        if not self.outage_logged:
            self.outage_logged = True
            logger.warning(
                "Redis is unreachable while %s LLM budgets; checking them against the database"
                " and this process's unwritten usage until it answers again",
                action,
                exc_info=True,
            )

    def answered(self) -> None:
        if self.outage_logged:
            self.outage_logged = False
            logger.info("Redis answers again; LLM budgets use the shared ledger")


_shared_lock = threading.Lock()
_shared_by_url: dict[str, _Shared] = {}


def _shared() -> _Shared:
    url = str(settings.REDIS_URL)
    shared = _shared_by_url.get(url)
    if shared is None:
        with _shared_lock:
            shared = _shared_by_url.setdefault(url, _Shared(url))
    return shared


class BudgetHold:
    """What one call holds of its budgets until it ends: settle(cost) or release().
    Both never raise (the call's own outcome stands) and only the first one counts."""

    def __init__(self, ledgers: tuple[_Ledger, ...] = (), hold_id: str = "", units: int = 0) -> None:
        self._ledgers = ledgers
        self._id = hold_id
        self._units = units
        self.open = bool(ledgers)

    async def settle(self, cost_usd: float) -> None:
        """The call was served: its real cost replaces the hold."""
        if self.open:
            self.open = False
            await sync_to_async(self._finish, thread_sensitive=False)(_units(cost_usd))

    async def release(self) -> None:
        """The call failed or never went out: nothing is billed."""
        if self.open:
            self.open = False
            await sync_to_async(self._finish, thread_sensitive=False)(0)

    async def settle_held(self) -> None:
        """A stream its consumer stopped early: its prompt was sent, so what was held is spent."""
        if self.open:
            self.open = False
            await sync_to_async(self._finish, thread_sensitive=False)(self._units)

    def _finish(self, cost_units: int) -> None:
        shared = _shared()
        keys = [key for ledger in self._ledgers for key in (ledger.key, ledger.holds_key)]
        try:
            shared.settle(keys=keys, args=[self._id, cost_units])
        except (redis.RedisError, OSError):
            # The hold lapses at its deadline; the cost reaches the ledger through the
            # meter's roll-ups when the ledger is next seeded.
            shared.failed("settling")


NO_HOLD = BudgetHold()


def _hold_lifetime_ms() -> int:
    """Longer than any call: ten provider timeouts (retries, fallbacks, a long stream)."""
    return int(float(getattr(settings, "LLM_TIMEOUT_SECONDS", 60)) * 10 * 1000)


def _reserve_sync(ledgers: tuple[_Ledger, ...], units: int, estimate_usd: float) -> BudgetHold | list[int]:
    """A hold on every ledger, or the indexes of the ledgers to seed first (raises BudgetExceeded)."""
    shared = _shared()
    hold_id = uuid.uuid4().hex
    keys = [key for ledger in ledgers for key in (ledger.key, ledger.holds_key)]
    args: list[str | int] = [hold_id, units, _hold_lifetime_ms()]
    for ledger in ledgers:
        args += [_units(ledger.budget.limit_usd), ledger.expire_at]
    outcome = shared.reserve(keys=keys, args=args)
    shared.answered()
    status = outcome[0].decode() if isinstance(outcome[0], bytes) else str(outcome[0])
    if status == "seed":
        return [int(index) - 1 for index in outcome[1:]]
    if status == "over":
        budget = ledgers[int(outcome[1]) - 1].budget
        raise _exceeded(budget, _usd(int(outcome[2])), estimate_usd, held=_usd(int(outcome[3])))
    return BudgetHold(ledgers, hold_id, units)


def _seed_sync(ledgers: list[_Ledger], organization_id: int, meter: Meter, now: datetime) -> None:
    """Start missing ledgers from the written spend plus this process's unwritten sums; the
    first process to seed wins (others' values are dropped)."""
    shared = _shared()
    for ledger in ledgers:
        spent = selectors.budget_spent(organization_id=organization_id, budget=ledger.budget, now=now)
        spent += _pending_cost(meter, organization_id, ledger.budget)
        shared.seed(keys=[ledger.key, ledger.holds_key], args=[_units(spent), ledger.expire_at])


async def budgets_reserve(
    *, config: OrganizationConfig, context: CallContext, estimate_usd: float, meter: Meter
) -> BudgetHold:
    """Hold the call's least cost on every budget that applies, or raise BudgetExceeded.
    The caller settles or releases the hold when the call ends.

    First the plan's monthly token quota (apps/billing/quotas.py): decided from this
    process's cached reading on the event loop, the database only when that is stale."""
    if not token_quota_check(organization_id=context.organization_id, meter=meter, cached_only=True):
        await sync_to_async(token_quota_check)(organization_id=context.organization_id, meter=meter)
    budgets = applicable(config, context)
    if not budgets:
        return NO_HOLD  # the usual case: no Redis, no database
    shared = _shared()
    if not shared.down:
        now = timezone.now()
        ledgers = tuple(_ledger(context.organization_id, budget, now) for budget in budgets)
        units = _units(estimate_usd)
        try:
            for _ in range(SEED_ATTEMPTS):
                outcome = await sync_to_async(_reserve_sync, thread_sensitive=False)(
                    ledgers, units, estimate_usd
                )
                if isinstance(outcome, BudgetHold):
                    return outcome
                # The database, so in the caller's thread (as every ORM call here).
                await sync_to_async(_seed_sync)(
                    [ledgers[index] for index in outcome], context.organization_id, meter, now
                )
        except (redis.RedisError, OSError):
            shared.failed("checking")
    await sync_to_async(budgets_check_sync)(
        config=config, context=context, estimate_usd=estimate_usd, meter=meter
    )
    return NO_HOLD


def budget_ledgers_clear() -> int:
    """Delete every shared budget ledger (tests; the next calls seed them from the roll-ups);
    the number of keys deleted."""
    client = _shared().client
    deleted = 0
    try:
        keys = list(client.scan_iter(match=KEY_PREFIX + "*", count=500))
        if keys:
            deleted = int(client.delete(*keys))
    except (redis.RedisError, OSError):
        return deleted
    return deleted
