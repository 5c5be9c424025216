"""What the agent pool costs as its line grows: a queue position, a page of them, and a
freed slot handed to the next run.

    python -m bench.agent_pool [--waiting 1000,10000] [--organizations 20] [--samples 50] [--keep]

Runs against its own database, agentyard_bench_pool, on the PostgreSQL server named by
DATABASE_URL (created afresh, dropped at the end unless --keep), and Redis database 7
(the step tasks that started runs send are purged at the end). Organizations are made
as sign-up makes them; the waiting runs are bulk-inserted, half of them one
organization's (a tenant with a backlog) and the rest spread over the others, with a
pool of 16 (4 per organization) full. Measured, per line length:
  - queue_position of a random waiting run (the run page, the API's run detail);
  - queue_positions of a page of 25 runs of one organization (the API's run list);
  - pool_release of a running run until the next one holds the slot and has been started
    through the run engine (apps.agents.tasks.run_start_dispatched), the first ten in
    line told their new places: what a finishing run's worker pays.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

from bench.provisioning import (
    DEFAULT_DATABASE_URL,
    Timings,
    database_recreate,
    database_url,
    progress,
    quiet,
    timed,
)

if TYPE_CHECKING:
    from apps.tenancy.models import Organization

BENCH_DATABASE = "agentyard_bench_pool"
POOL_SIZE = 16
ORGANIZATION_LIMIT = 4


def organizations_create(count: int) -> list[Organization]:
    from apps.tenancy.services import organization_create, organization_provision

    made = []
    for index in range(count):
        with quiet():
            organization = organization_create(
                name=f"Pool {index}", slug=f"pool-{index:03d}", created_by=None, provision_async=False
            )
            made.append(organization_provision(organization_id=organization.pk))
    return made


def line_fill(organizations: list[Organization], waiting: int) -> None:
    """`waiting` queued runs and their tickets, half of them the first organization's."""
    from django.utils import timezone
    from django_tenants.utils import schema_context

    from apps.agents.models import AgentRun
    from apps.scheduling.models import RunTicket

    backlog = waiting // 2
    shares = [backlog] + [
        (waiting - backlog) // (len(organizations) - 1)
        + (1 if index < (waiting - backlog) % (len(organizations) - 1) else 0)
        for index in range(len(organizations) - 1)
    ]
    start = timezone.now() - timedelta(hours=1)
    tickets = []
    for organization, count in zip(organizations, shares, strict=True):
        runs = [AgentRun(id=uuid.uuid4(), task="bench", state=AgentRun.State.QUEUED) for _ in range(count)]
        with schema_context(organization.schema_name):
            AgentRun.objects.bulk_create(runs, batch_size=2000)
        tickets += [
            RunTicket(
                organization=organization,
                schema_name=organization.schema_name,
                run_id=run.pk,
                enqueued_at=start + timedelta(milliseconds=random.randrange(3_600_000)),
            )
            for run in runs
        ]
    RunTicket.objects.bulk_create(tickets, batch_size=2000)


def line_empty(organizations: list[Organization]) -> None:
    from django_tenants.utils import schema_context

    from apps.agents.models import AgentRun
    from apps.scheduling.models import OrganizationTurn, RunTicket

    RunTicket.objects.all().delete()
    OrganizationTurn.objects.all().delete()
    for organization in organizations:
        with schema_context(organization.schema_name):
            AgentRun.objects.all().delete()


def measure(organizations: list[Organization], waiting: int, samples: int) -> list[Timings]:
    from apps.scheduling import services
    from apps.scheduling.models import RunTicket

    line_fill(organizations, waiting)
    services.pool_dispatch()  # the pool full; the rest wait
    waiting_ids = list(RunTicket.objects.filter(started_at__isnull=True).values_list("run_id", flat=True))
    first = organizations[1]
    page = list(
        RunTicket.objects.filter(organization=first, started_at__isnull=True).values_list(
            "run_id", flat=True
        )[:25]
    )
    position = Timings(
        "queue_position (one run)",
        [timed(lambda: services.queue_position(run_id=random.choice(waiting_ids))) for _ in range(samples)],
    )
    positions = Timings(
        "queue_positions (a page of 25)",
        [timed(lambda: services.queue_positions(run_ids=page)) for _ in range(samples)],
    )
    handed = []
    for _ in range(samples):
        running = RunTicket.objects.filter(started_at__isnull=False).order_by("dispatch_number").first()
        assert running is not None
        handed.append(timed(functools.partial(services.pool_release, run_id=running.run_id)))
    release = Timings("pool_release -> next run started", handed)
    line_empty(organizations)
    return [position, positions, release]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.agent_pool", description=__doc__.split("\n")[0])
    parser.add_argument("--waiting", default="1000,10000", help="line lengths to measure, comma-separated")
    parser.add_argument("--organizations", type=int, default=20)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--keep", action="store_true", help=f"leave the {BENCH_DATABASE} database behind")
    args = parser.parse_args(argv)
    lengths = [int(part) for part in args.waiting.split(",") if part.strip()]
    if args.organizations < 2 or args.samples < 1 or not lengths or min(lengths) < args.samples + POOL_SIZE:
        parser.error("need 2+ organizations, 1+ samples and line lengths over samples + the pool size")
    server_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    database_recreate(server_url, BENCH_DATABASE)
    # Django reads these once, at setup: they must be in place before it.
    os.environ["DATABASE_URL"] = database_url(server_url, BENCH_DATABASE)
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings.dev"
    os.environ["LOG_LEVEL"] = "WARNING"
    os.environ["REDIS_URL"] = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")
    os.environ["CELERY_QUEUE"] = "agentyard-bench-pool"
    os.environ["AGENTS_POOL_SIZE"] = str(POOL_SIZE)
    os.environ["AGENTS_ORG_CONCURRENCY"] = str(ORGANIZATION_LIMIT)
    try:
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connections

        from config.celery import app

        with quiet():
            call_command("migrate", interactive=False, verbosity=0)
        progress(f"bench: {BENCH_DATABASE} migrated; making {args.organizations} organizations")
        organizations = organizations_create(args.organizations)
        rows = []
        for waiting in lengths:
            progress(f"bench: {waiting} waiting runs")
            rows.append((waiting, measure(organizations, waiting, args.samples)))
        app.control.purge()
        print(
            f"Agent pool: {args.organizations} organizations, pool {POOL_SIZE} ({ORGANIZATION_LIMIT} each),"
            f" {args.samples} samples, milliseconds\n"
        )
        print(f"{'waiting':>8}  {'operation':<36}{'p50':>9}{'p95':>9}{'max':>9}")
        for waiting, timings in rows:
            for timing in timings:
                print(
                    f"{waiting:>8}  {timing.label:<36}{timing.p50 * 1000:>9.2f}"
                    f"{timing.percentile(0.95) * 1000:>9.2f}{max(timing.seconds) * 1000:>9.2f}"
                )
        connections.close_all()
    finally:
        if not args.keep:
            database_recreate(server_url, BENCH_DATABASE, create=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
