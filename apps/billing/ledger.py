"""The usage ledger: append-only UsageRecord rows and their hourly and daily roll-ups.

    usage_record(organization_id=..., kind="sandbox_seconds", quantity=90, source_type="workspace",
                 source_id="7", idempotency_key="sandbox:...")
    usage_record_many([UsageLine(...), ...])

Both write in ONE statement: a multi-row INSERT ... ON CONFLICT (idempotency_key) DO
NOTHING whose RETURNING rows feed the upserts of UsageHourly and UsageDaily (data-modifying
CTEs). So a row and its share of the roll-ups are written together or not at all, in the
caller's transaction (the work the usage measures: a sandbox's stop, the gateway's metering
flush), and a retry with the same idempotency key writes nothing, neither the row nor a
second addition to the roll-ups: the roll-ups add only the rows actually inserted. One
statement is atomic by itself, so these functions open no savepoint of their own (two
round trips saved on the metering path); wrap them in the transaction of the work.

Prices (USD per unit, stored on each row as unit_price; amount = quantity x unit_price
unless the caller gives the amount):
- LLM tokens (llm_input_tokens: the input not served from the provider's prompt cache,
  llm_cached_tokens, llm_output_tokens): the model catalogue's prices (LlmModel, per
  million tokens); a model not in the catalogue costs 0.
- sandbox_seconds and storage_gb_hours: the organization's plan's unit_prices (its
  BillingAccount's plan, else BILLING_DEFAULT_PLAN's, the one it will start on), each
  kind missing there taken from BILLING_DEFAULT_UNIT_PRICES. These are list prices: what a plan includes each
  month is applied when usage is invoiced (Stripe reporting), not here, so the ledger
  says what everything used was worth.

Sandbox seconds (sandbox_usage_record): the seconds since the sandbox started or since it
was last accounted, whichever is later, written when it stops (in the stop's transaction)
and by the periodic task for running ones (apps/billing/tasks.py). Each row's occurred_at
is the END of the span it covers, so "last accounted" is the latest such row of the
workspace since its start; the key names the start and the end, so accounting the same
span twice writes once. A span counts in the hour (and day, and month) it ends in: with the
periodic task every BILLING_SANDBOX_ACCOUNT_MINUTES, at most that much of a sandbox's
time lands in the hour after the one it ran in.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max
from django.utils import timezone
from django_tenants.utils import schema_context

from apps.billing.models import (
    BillingAccount,
    Plan,
    UsageDaily,
    UsageHourly,
    UsageKind,
    UsageRecord,
    UsageSource,
    UsageUnit,
)
from apps.core.errors import Invalid
from apps.llm.models import LlmModel
from apps.llm.selectors import catalog_models
from apps.tenancy.models import Organization

logger = logging.getLogger(__name__)

UNITS: dict[str, str] = {
    UsageKind.LLM_INPUT_TOKENS: UsageUnit.TOKEN,
    UsageKind.LLM_OUTPUT_TOKENS: UsageUnit.TOKEN,
    UsageKind.LLM_CACHED_TOKENS: UsageUnit.TOKEN,
    UsageKind.SANDBOX_SECONDS: UsageUnit.SECOND,
    UsageKind.STORAGE_GB_HOURS: UsageUnit.GB_HOUR,
}
LLM_KINDS = frozenset({UsageKind.LLM_INPUT_TOKENS, UsageKind.LLM_OUTPUT_TOKENS, UsageKind.LLM_CACHED_TOKENS})
SOURCES = frozenset(UsageSource.values)
# The columns' scales (apps/billing/models.py): values are rounded here, once, so the
# roll-ups (sums of what was stored) equal the sums of the rows.
QUANTITY_PLACES = Decimal("0.000001")
PRICE_PLACES = Decimal("0.0000000001")
AMOUNT_PLACES = Decimal("0.00000001")
MILLION = Decimal(1_000_000)
# Rows per statement: bounds the arrays' size in memory.
STATEMENT_ROWS = 5000


@dataclass(frozen=True)
class UsageLine:
    """One ledger row to write. unit_price None: the price list's (see the module's doc);
    amount None: quantity x unit_price."""

    organization_id: int
    kind: str
    quantity: Decimal
    idempotency_key: str
    source_type: str
    source_id: str = ""
    model: str = ""
    user_id: int | None = None
    unit_price: Decimal | None = None
    amount: Decimal | None = None
    occurred_at: datetime | None = None


def _decimal(value: object, what: str) -> Decimal:
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise Invalid(f"The {what} must be a number, not {value!r}.", field=what) from None
    if not number.is_finite():
        raise Invalid(f"The {what} must be a finite number, not {value!r}.", field=what)
    return number


def _checked(line: UsageLine) -> UsageLine | None:
    """The line with its numbers as Decimals, or None when it has nothing to record."""
    if line.kind not in UNITS:
        raise Invalid(f"Unknown usage kind {line.kind!r}; one of {', '.join(UNITS)}.", field="kind")
    if line.source_type not in SOURCES:
        raise Invalid(
            f"Unknown usage source {line.source_type!r}; one of {', '.join(sorted(SOURCES))}.",
            field="source_type",
        )
    if not line.idempotency_key or len(line.idempotency_key) > 200:
        raise Invalid("A usage row needs an idempotency key of 1 to 200 characters.", field="idempotency_key")
    if len(line.source_id) > 64 or len(line.model) > 100:
        raise Invalid("A usage row's source id is at most 64 characters, its model 100.", field="source_id")
    quantity = _decimal(line.quantity, "quantity")
    if quantity < 0:
        raise Invalid(f"A usage quantity cannot be negative ({quantity}).", field="quantity")
    if quantity == 0:
        return None
    unit_price = None if line.unit_price is None else _decimal(line.unit_price, "unit_price")
    amount = None if line.amount is None else _decimal(line.amount, "amount")
    if (unit_price is not None and unit_price < 0) or (amount is not None and amount < 0):
        raise Invalid("A usage price or amount cannot be negative.", field="unit_price")
    return UsageLine(
        organization_id=line.organization_id,
        kind=line.kind,
        quantity=quantity,
        idempotency_key=line.idempotency_key,
        source_type=line.source_type,
        source_id=line.source_id,
        model=line.model,
        user_id=line.user_id,
        unit_price=unit_price,
        amount=amount,
        occurred_at=line.occurred_at,
    )


# Prices -------------------------------------------------------------------------------------------


def llm_unit_prices(models: Iterable[str]) -> dict[str, dict[str, Decimal]]:
    """USD per token of each LLM kind for these catalogue models (its prices are per
    million tokens): from the gateway's catalogue snapshot, the one it prices calls
    with, else (a model no longer listed) from the table."""
    names = {name for name in models if name}
    if not names:
        return {}
    catalog = catalog_models()
    found: dict[str, tuple[Decimal, Decimal, Decimal]] = {}
    for name in names:
        info = catalog.get(name)
        if info is not None:
            # The snapshot holds floats; repr gives back the table's decimal (6 places).
            found[name] = (
                Decimal(repr(info.input_price)),
                Decimal(repr(info.output_price)),
                Decimal(repr(info.cached_input_price)),
            )
    if names - found.keys():
        for name, *row in LlmModel.objects.filter(name__in=names - found.keys()).values_list(
            "name", "input_price", "output_price", "cached_input_price"
        ):
            found[name] = (Decimal(row[0]), Decimal(row[1]), Decimal(row[2]))
    return {
        name: {
            UsageKind.LLM_INPUT_TOKENS: input_price / MILLION,
            UsageKind.LLM_OUTPUT_TOKENS: output_price / MILLION,
            UsageKind.LLM_CACHED_TOKENS: cached_price / MILLION,
        }
        for name, (input_price, output_price, cached_price) in found.items()
    }


def default_unit_prices() -> dict[str, Decimal]:
    """The platform's prices for a kind a plan leaves out (BILLING_DEFAULT_UNIT_PRICES)."""
    return {kind: Decimal(str(price)) for kind, price in settings.BILLING_DEFAULT_UNIT_PRICES.items()}


def plan_unit_prices(organization_ids: Iterable[int]) -> dict[int, dict[str, Decimal]]:
    """USD per unit of each kind for these organizations: their plan's unit_prices over
    the platform defaults. Two queries, whatever the number of organizations."""
    ids = set(organization_ids)
    if not ids:
        return {}
    plans: dict[int, dict[str, Any]] = dict(
        BillingAccount.objects.filter(organization_id__in=ids).values_list(
            "organization_id", "plan__unit_prices"
        )
    )
    if ids - plans.keys():
        default = (
            Plan.objects.filter(key=settings.BILLING_DEFAULT_PLAN)
            .values_list("unit_prices", flat=True)
            .first()
        )
        for organization_id in ids - plans.keys():
            plans[organization_id] = default or {}
    defaults = default_unit_prices()
    result: dict[int, dict[str, Decimal]] = {}
    for organization_id in ids:
        prices = dict(defaults)
        for kind, price in (plans[organization_id] or {}).items():
            try:
                prices[kind] = Decimal(str(price))
            except InvalidOperation:
                logger.warning("Plan unit price %r for %s is not a number; using the default", price, kind)
        result[organization_id] = prices
    return result


# Writing ------------------------------------------------------------------------------------------


def usage_record_many(lines: Sequence[UsageLine]) -> int:
    """Write these ledger rows and add them to the roll-ups; the number of rows written.
    A line whose idempotency key is in the ledger already (or earlier in `lines`) writes
    nothing; lines with a zero quantity are skipped. Bad lines: Invalid, nothing written."""
    checked: list[UsageLine] = []
    seen: set[str] = set()
    for line in lines:
        good = _checked(line)
        if good is None or good.idempotency_key in seen:
            continue
        seen.add(good.idempotency_key)
        checked.append(good)
    if not checked:
        return 0
    llm_prices = llm_unit_prices(
        line.model for line in checked if line.unit_price is None and line.kind in LLM_KINDS
    )
    plan_prices = plan_unit_prices(
        line.organization_id for line in checked if line.unit_price is None and line.kind not in LLM_KINDS
    )
    now = timezone.now()
    rows: list[tuple[Any, ...]] = []
    for line in checked:
        unit_price = line.unit_price
        if unit_price is None:
            if line.kind in LLM_KINDS:
                unit_price = llm_prices.get(line.model, {}).get(line.kind, Decimal(0))
            else:
                unit_price = plan_prices[line.organization_id].get(line.kind, Decimal(0))
        amount = line.amount if line.amount is not None else line.quantity * unit_price
        rows.append(
            (
                line.organization_id,
                line.kind,
                line.quantity.quantize(QUANTITY_PLACES),
                UNITS[line.kind],
                unit_price.quantize(PRICE_PLACES),
                amount.quantize(AMOUNT_PLACES),
                line.model,
                line.source_type,
                line.source_id,
                line.user_id,
                line.idempotency_key,
                line.occurred_at or now,
                now,
            )
        )
    written = 0
    for start in range(0, len(rows), STATEMENT_ROWS):
        written += _insert(rows[start : start + STATEMENT_ROWS])
    return written


def usage_record(
    *,
    organization_id: int,
    kind: str,
    quantity: Decimal | int | float | str,
    source_type: str,
    idempotency_key: str,
    source_id: str = "",
    model: str = "",
    user_id: int | None = None,
    unit_price: Decimal | None = None,
    amount: Decimal | None = None,
    occurred_at: datetime | None = None,
) -> bool:
    """One ledger row (see usage_record_many); True if written, False if its key was there."""
    line = UsageLine(
        organization_id=organization_id,
        kind=kind,
        quantity=_decimal(quantity, "quantity"),
        idempotency_key=idempotency_key,
        source_type=source_type,
        source_id=source_id,
        model=model,
        user_id=user_id,
        unit_price=unit_price,
        amount=amount,
        occurred_at=occurred_at,
    )
    return usage_record_many([line]) == 1


# (column, PostgreSQL array type): the rows go as one array per column through unnest(),
# so the statement has 13 parameters whatever the number of rows. A VALUES list of
# 13 placeholders per row made psycopg parse a new 100 kB query for every batch.
RECORD_COLUMNS = (
    ("organization_id", "bigint[]"),
    ("kind", "varchar[]"),
    ("quantity", "numeric[]"),
    ("unit", "varchar[]"),
    ("unit_price", "numeric[]"),
    ("amount", "numeric[]"),
    ("model", "varchar[]"),
    ("source_type", "varchar[]"),
    ("source_id", "varchar[]"),
    ("user_id", "bigint[]"),
    ("idempotency_key", "varchar[]"),
    ("occurred_at", "timestamptz[]"),
    ("created_at", "timestamptz[]"),
)
ROLLUP_KEY = "organization_id, {time}, kind, model, source_type, source_id"


def _rollup_sql(table: str, time_column: str, time_expression: str, name: str) -> str:
    key = ROLLUP_KEY.format(time=time_column)
    # ORDER BY: concurrent writers lock the roll-up rows in one order, so they cannot deadlock.
    return (
        f"{name} AS (INSERT INTO {table} ({key}, quantity, amount) "  # noqa: S608 (our own names)
        f"SELECT organization_id, {time_expression}, kind, model, source_type, source_id, "
        "sum(quantity), sum(amount) FROM inserted GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 3, 4, 5, 6 "
        f"ON CONFLICT ({key}) DO UPDATE SET quantity = {table}.quantity + EXCLUDED.quantity, "
        f"amount = {table}.amount + EXCLUDED.amount)"
    )


def _insert_sql() -> str:
    columns = ", ".join(name for name, _ in RECORD_COLUMNS)
    arrays = ", ".join(f"%s::{array_type}" for _, array_type in RECORD_COLUMNS)
    return (
        f"WITH inserted AS (INSERT INTO {UsageRecord._meta.db_table} ({columns}) "  # noqa: S608 (our own names)
        f"SELECT * FROM unnest({arrays}) ON CONFLICT (idempotency_key) DO NOTHING "
        "RETURNING organization_id, kind, model, source_type, source_id, quantity, amount, occurred_at), "
        + _rollup_sql(UsageHourly._meta.db_table, "hour", "date_trunc('hour', occurred_at, 'UTC')", "hourly")
        + ", "
        + _rollup_sql(UsageDaily._meta.db_table, "day", "(occurred_at AT TIME ZONE 'UTC')::date", "daily")
        + " SELECT count(*) FROM inserted"
    )


def _insert(rows: list[tuple[Any, ...]]) -> int:
    columns = [list(column) for column in zip(*rows, strict=True)]
    with connection.cursor() as cursor:
        cursor.execute(_insert_sql(), columns)
        (written,) = cursor.fetchone()
    return int(written)


def idempotency_key(prefix: str, *parts: object) -> str:
    """`prefix:` and a digest of the parts: fixed length whatever the parts (model names,
    run ids) are, so a key always fits its column."""
    digest = hashlib.sha256("\x1f".join(str(part) for part in parts).encode()).hexdigest()[:40]
    return f"{prefix}:{digest}"


# Sandbox seconds ----------------------------------------------------------------------------------


def _micros(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def sandbox_accounted_until(*, organization_id: int, workspace_id: int, started_at: datetime) -> datetime:
    """The end of the last span of this sandbox run already in the ledger, else its start."""
    last = UsageRecord.objects.filter(
        organization_id=organization_id,
        occurred_at__gte=started_at,
        kind=UsageKind.SANDBOX_SECONDS,
        source_type=UsageSource.WORKSPACE,
        source_id=str(workspace_id),
    ).aggregate(last=Max("occurred_at"))["last"]
    return max(last, started_at) if last is not None else started_at


def sandbox_usage_record(
    *,
    organization_id: int,
    workspace_id: int,
    started_at: datetime | None,
    until: datetime,
    user_id: int | None = None,
) -> Decimal:
    """Record the seconds a workspace's sandbox ran, from its start (`started_at`, the
    workspace's) or the end of what is already accounted, up to `until`; the seconds
    recorded (0: nothing to record, or recorded already). Call it in the transaction
    that stops the workspace, or holding its row lock (the periodic task): two callers
    racing on one span would still write it once (its key), but the row lock keeps
    the spans from overlapping."""
    if started_at is None:
        return Decimal(0)
    since = sandbox_accounted_until(
        organization_id=organization_id, workspace_id=workspace_id, started_at=started_at
    )
    seconds = Decimal(_micros(until) - _micros(since)) / 1_000_000
    if seconds <= 0:
        return Decimal(0)
    written = usage_record(
        organization_id=organization_id,
        kind=UsageKind.SANDBOX_SECONDS,
        quantity=seconds,
        source_type=UsageSource.WORKSPACE,
        source_id=str(workspace_id),
        user_id=user_id,
        idempotency_key=f"sandbox:{organization_id}:{workspace_id}:{_micros(started_at)}:{_micros(until)}",
        occurred_at=until,
    )
    return seconds if written else Decimal(0)


def interval_start(now: datetime, minutes: int) -> datetime:
    """The start of the `minutes`-long interval `now` falls in, counted from the Unix epoch
    (so every process and every run agrees on the intervals)."""
    step = max(int(minutes), 1) * 60
    seconds = int(now.timestamp()) // step * step
    return datetime.fromtimestamp(seconds, tz=UTC)


def storage_gb_hours(*, size_bytes: int, since: datetime, until: datetime) -> Decimal:
    """GB (10^9 bytes) x hours of the span."""
    hours = Decimal(_micros(until) - _micros(since)) / Decimal(3_600_000_000)
    return Decimal(size_bytes) / Decimal(1_000_000_000) * max(hours, Decimal(0))


def storage_usage_record(
    *,
    organization_id: int,
    sizes: Sequence[tuple[str, str, int]],
    until: datetime,
    first_span: timedelta,
    max_span: timedelta,
) -> Decimal:
    """Storage held since the organization's last measurement (at most `max_span` back;
    its first measurement ever counts `first_span`) up to `until`, as storage_gb_hours:
    one row per (source_type, source_id, bytes) in `sizes` (a workspace's disk, the
    knowledge store). The GB-hours written (0: this interval is recorded already)."""
    measured = UsageRecord.objects.filter(organization_id=organization_id, kind=UsageKind.STORAGE_GB_HOURS)
    last = measured.filter(occurred_at__gte=until - max_span, occurred_at__lte=until).aggregate(
        last=Max("occurred_at")
    )["last"]
    if last is not None:
        since = last
    elif measured.filter(occurred_at__lt=until - max_span).exists():
        since = until - max_span  # measured before, then not for longer than max_span
    else:
        since = until - first_span
    lines = [
        UsageLine(
            organization_id=organization_id,
            kind=UsageKind.STORAGE_GB_HOURS,
            quantity=storage_gb_hours(size_bytes=size, since=since, until=until).quantize(QUANTITY_PLACES),
            source_type=source_type,
            source_id=source_id,
            idempotency_key=f"storage:{organization_id}:{source_type}:{source_id}:{_micros(until)}",
            occurred_at=until,
        )
        for source_type, source_id, size in sizes
    ]
    if not usage_record_many(lines):
        return Decimal(0)
    return sum((line.quantity for line in lines), Decimal(0))


# The periodic measurements (apps/billing/tasks.py) ------------------------------------------------


def _billable_organizations() -> list[Organization]:
    """Organizations whose schema exists: active ones, and suspended ones (their sandboxes
    and files may still be there)."""
    statuses = [Organization.Status.ACTIVE, Organization.Status.SUSPENDED]
    return list(Organization.objects.filter(status__in=statuses).order_by("pk"))


def sandbox_seconds_account(*, now: datetime | None = None) -> dict[str, int]:
    """Account every running sandbox up to the start of the current interval of
    BILLING_SANDBOX_ACCOUNT_MINUTES; per organization slug, the workspaces given a row.
    Safe to run twice: a span already accounted is not counted again (and its key is
    taken). A workspace whose row another transaction holds (a stop, a start) is
    skipped: the stop accounts it, or the next run does, from where the ledger ends."""
    from apps.workspaces.models import Workspace

    until = interval_start(now or timezone.now(), settings.BILLING_SANDBOX_ACCOUNT_MINUTES)
    result: dict[str, int] = {}
    for organization in _billable_organizations():
        with schema_context(organization.schema_name):
            running = list(
                Workspace.objects.filter(state=Workspace.State.RUNNING).values_list("pk", flat=True)
            )
            accounted = 0
            for workspace_id in running:
                with transaction.atomic():
                    workspace = (
                        Workspace.objects.select_for_update(skip_locked=True)
                        .filter(pk=workspace_id, state=Workspace.State.RUNNING)
                        .first()
                    )
                    if workspace is None:
                        continue
                    if sandbox_usage_record(
                        organization_id=organization.pk,
                        workspace_id=workspace.pk,
                        started_at=workspace.started_at,
                        until=until,
                        user_id=workspace.created_by_id,
                    ):
                        accounted += 1
        if accounted:
            result[organization.slug] = accounted
    return result


def knowledge_bytes() -> int:
    """Bytes of knowledge the current organization stores: its chunks' text and metadata,
    superseded versions included (they are kept for the history)."""
    from apps.knowledge.models import KnowledgeChunk

    table = KnowledgeChunk._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT coalesce(sum(octet_length(text) + octet_length(metadata::text)), 0) FROM {table}"  # noqa: S608
        )
        (size,) = cursor.fetchone()
    return int(size)


def workspace_disk_bytes() -> dict[str, list[tuple[str, str, int]]]:
    """Per runtime tenant (an organization's schema), (source_type "workspace", workspace
    id, bytes) of each sandbox the runtime keeps, running or stopped, as it reports its
    disk use; one call for every organization. Raises RuntimeServiceError when the
    runtime cannot be asked."""
    from apps.workspaces.runtime import runtime_client

    sizes: dict[str, list[tuple[str, str, int]]] = {}
    for info in runtime_client().list_sandboxes(""):
        workspace_id = info.sandbox_id.removeprefix("ws-")[:64]
        sizes.setdefault(info.tenant, []).append(
            (UsageSource.WORKSPACE.value, workspace_id, int(info.disk_used_bytes))
        )
    return sizes


def storage_measure(*, now: datetime | None = None) -> dict[str, Decimal]:
    """Measure each organization's storage and record it as storage_gb_hours for the
    time since its previous measurement, up to the start of the current interval of
    BILLING_STORAGE_MEASURE_MINUTES; per organization slug, the GB-hours written.

    What is counted:
    - each workspace's disk as the sandbox runtime reports it (disk_used_bytes: the
      used blocks of the sandbox's own file system where the runtime has the loop-ext4
      quota, else the sum of its files' sizes), for every sandbox the runtime keeps for
      the organization, running or stopped; a destroyed workspace has none;
    - the knowledge store: its chunks' text and metadata in PostgreSQL (knowledge_bytes).
    Not counted: Chroma's vectors and index files, PostgreSQL's own overhead (indexes,
    page slack), other tables (runs' events, audit log), and container images.
    The sizes measured now count for the whole span since the previous measurement
    (what they were in between is not known). When the runtime cannot be asked, no
    organization is measured this time: the next measurement covers the gap (at most
    BILLING_STORAGE_MAX_SPAN_HOURS of it), rather than one that leaves the disks out.
    Safe to run twice: an interval already measured writes nothing."""
    from runtime.client import RuntimeServiceError

    minutes = settings.BILLING_STORAGE_MEASURE_MINUTES
    until = interval_start(now or timezone.now(), minutes)
    result: dict[str, Decimal] = {}
    try:
        disks = workspace_disk_bytes()
    except RuntimeServiceError as exc:
        logger.warning("Storage not measured: the sandbox runtime cannot be asked (%s)", exc)
        return result
    for organization in _billable_organizations():
        sizes = list(disks.get(organization.schema_name, []))
        with schema_context(organization.schema_name):
            sizes.append((UsageSource.SYSTEM.value, "knowledge", knowledge_bytes()))
        with transaction.atomic():
            written = storage_usage_record(
                organization_id=organization.pk,
                sizes=sizes,
                until=until,
                first_span=timedelta(minutes=minutes),
                max_span=timedelta(hours=settings.BILLING_STORAGE_MAX_SPAN_HOURS),
            )
        if written:
            result[organization.slug] = written
    return result
