"""The quota-check section of bench/billing.py: plan quotas under contention.

    python -m bench.billing --section quota-check [--starts 64] [--slots 8] [--rounds 3]

One organization on the Team plan with concurrent_sandboxes overridden to --slots, and
--starts stopped workspaces. Each round, --starts threads (each with its own database
connection, released together by a barrier) call workspace_start at once, as that many
API requests would; the correct result is exactly --slots started and the rest refused
with quota_exceeded, checked against the database and the runtime. Then every
workspace is stopped for the next round. Latencies are per start, from the barrier to
its answer: a refusal waits for the billing account's row lock, which each winner
holds while the runtime starts its sandbox, so its time is the queue behind the
winners plus its own check. Beside it, the check alone: --starts threads each running
quota_lock + count + quota_check in a transaction (no runtime), p50/p99.

Starts its own runtime (bwrap backend, as the tests) and, unless another section set
Django up already, its own database agentyard_bench_billing_quota (dropped at exit
unless --keep-quota-db) and Redis database 7. The platform caps
(WORKSPACES_MAX_RUNNING_PER_ORGANIZATION, WORKSPACES_MAX_PER_ORGANIZATION) are raised so
the plan is what binds; the connection pool holds one connection per thread.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from bench.api import percentile as _percentile
from bench.provisioning import progress

BENCH_DATABASE = "agentyard_bench_billing_quota"
BENCH_REDIS_DB = 7


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--starts", type=int, default=64, help="quota-check: concurrent starts per round")
    parser.add_argument("--slots", type=int, default=8, help="quota-check: free sandbox slots (plan limit)")
    parser.add_argument("--rounds", type=int, default=3, help="quota-check: rounds of concurrent starts")
    parser.add_argument(
        "--keep-quota-db",
        action="store_true",
        help=f"quota-check: leave the {BENCH_DATABASE} database behind",
    )


def _django_setup(options: argparse.Namespace) -> None:
    """Django on a fresh bench database, unless a section set it up already; the database
    is dropped when the process exits (a later section may still use it)."""
    from django.conf import settings

    if settings.configured:
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
            "DATABASE_POOL_MAX_SIZE": str(options.starts + 4),
            "WORKSPACES_MAX_RUNNING_PER_ORGANIZATION": "100000",
            "WORKSPACES_MAX_PER_ORGANIZATION": "100000",
        }
    )

    def drop() -> None:
        from django.db import connections

        connections.close_all()
        if not options.keep_quota_db:
            database_recreate(server_url, BENCH_DATABASE, create=False)

    import django

    django.setup()
    atexit.register(drop)
    from django.core.management import call_command

    with quiet():
        call_command("migrate", interactive=False, verbosity=0)


def _race(count: int, action: Callable[[int], str]) -> list[tuple[str, float]]:
    """Run action(i) in `count` threads released together; each (outcome, seconds)."""
    from django.db import connections

    barrier = threading.Barrier(count)
    results: list[tuple[str, float]] = [("", 0.0)] * count

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=60)
            started = time.perf_counter()
            outcome = action(index)
            results[index] = (outcome, time.perf_counter() - started)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    return results


def quota_check(options: argparse.Namespace) -> str:
    if options.slots < 1 or options.starts <= options.slots:
        raise SystemExit("quota-check needs 1+ slots and more starts than slots")
    from bench.provisioning import quiet
    from tests.runtime_server import start_runtime, stop_runtime

    root = Path(tempfile.mkdtemp(prefix="agentyard-bench-quota-"))
    server = start_runtime(root, log_name="bench-quota-runtime.log")
    try:
        os.environ["RUNTIME_ADDRESS"], os.environ["RUNTIME_SECRET"] = server.address, server.secret
        _django_setup(options)
        from django.conf import settings

        settings.RUNTIME_ADDRESS, settings.RUNTIME_SECRET = server.address, server.secret
        settings.WORKSPACES_MAX_RUNNING_PER_ORGANIZATION = 100_000
        settings.WORKSPACES_MAX_PER_ORGANIZATION = 100_000
        from django.db import transaction
        from django_tenants.utils import schema_context

        from apps.billing.models import Plan
        from apps.billing.plans import billing_account_for
        from apps.billing.quotas import QuotaExceeded, quota_lock
        from apps.billing.quotas import quota_check as check
        from apps.tenancy.audit import Actor
        from apps.tenancy.services import organization_create, organization_provision
        from apps.workspaces import services
        from apps.workspaces.models import Workspace
        from apps.workspaces.runtime import runtime_client

        with quiet():
            organization = organization_create(
                name="Quota Bench", slug=f"quota-bench-{os.getpid()}", created_by=None, provision_async=False
            )
            organization = organization_provision(organization_id=organization.pk)
        account = billing_account_for(organization)
        account.plan = Plan.objects.get(key="team")
        # Only the sandbox slots bind: the Team plan would stop at 50 workspaces.
        account.limit_overrides = {
            "concurrent_sandboxes": options.slots,
            "workspaces": None,
            "storage_gb": None,
        }
        account.alert_thresholds = []  # alerts are another path; this measures the check
        account.save()
        actor = Actor.system()
        schema = organization.schema_name
        progress(f"quota-check: making {options.starts} workspaces")
        with schema_context(schema):
            made = [
                services.workspace_create(
                    actor=actor,
                    organization=organization,
                    name=f"quota-{index}",
                    memory_mb=256,
                    disk_mb=128,
                    start=False,
                )
                for index in range(options.starts)
            ]

        def start(index: int) -> str:
            try:
                with schema_context(schema):
                    services.workspace_start(actor=actor, organization=organization, workspace=made[index])
            except QuotaExceeded:
                return "refused"
            return "started"

        rounds: list[tuple[int, int, int, int, bool]] = []
        won: list[float] = []
        refused: list[float] = []
        for number in range(1, options.rounds + 1):
            progress(f"quota-check: round {number}")
            results = _race(options.starts, start)
            started = sum(1 for outcome, _ in results if outcome == "started")
            refusals = sum(1 for outcome, _ in results if outcome == "refused")
            with schema_context(schema):
                running_rows = Workspace.objects.filter(state=Workspace.State.RUNNING).count()
                running_sandboxes = sum(
                    1
                    for workspace in made
                    if runtime_client().get_sandbox(schema, workspace.sandbox_id).state == "running"
                )
            correct = (
                started == options.slots
                and refusals == options.starts - options.slots
                and running_rows == running_sandboxes == options.slots
            )
            rounds.append((number, started, refusals, running_sandboxes, correct))
            won += [seconds for outcome, seconds in results if outcome == "started"]
            refused += [seconds for outcome, seconds in results if outcome == "refused"]
            with schema_context(schema):
                for workspace in Workspace.objects.filter(state=Workspace.State.RUNNING):
                    services.workspace_stop(actor=actor, organization=organization, workspace=workspace)

        def check_alone(index: int) -> str:
            with schema_context(schema), transaction.atomic():
                locked = quota_lock(organization)
                running = Workspace.objects.filter(state=Workspace.State.RUNNING).count()
                check(
                    account=locked,
                    organization=organization,
                    limit="concurrent_sandboxes",
                    used=running,
                    verb="runs",
                )
            return "checked"

        progress("quota-check: the check alone")
        alone = [seconds for _, seconds in _race(options.starts, check_alone)]
        with schema_context(schema):
            for workspace in made:
                runtime_client().destroy_sandbox(schema, workspace.sandbox_id)
    finally:
        stop_runtime(server)
        shutil.rmtree(root, ignore_errors=True)

    def row(label: str, values: list[float]) -> str:
        if not values:
            return f"{label:<44}{'-':>8}"
        ms = [value * 1000 for value in values]
        p50, p99 = statistics.median(ms), _percentile(ms, 0.99)
        return f"{label:<44}{len(ms):>8}{p50:>10.2f}{p99:>10.2f}{max(ms):>10.2f}"

    lines = [
        f"{options.starts} concurrent workspace starts for {options.slots} free sandbox slots"
        f" (Team plan, concurrent_sandboxes = {options.slots}), {options.rounds} rounds, bwrap runtime",
        "",
        f"{'round':>5}{'started':>9}{'refused':>9}{'running (runtime)':>19}"
        f"  correct (exactly {options.slots})",
    ]
    lines += [
        f"{number:>5}{started:>9}{refusals:>9}{running:>19}  {'yes' if correct else 'NO'}"
        for number, started, refusals, running, correct in rounds
    ]
    lines += [
        "",
        f"{'latency per start, ms':<44}{'count':>8}{'p50':>10}{'p99':>10}{'max':>10}",
        row("started (quota check + sandbox start)", won),
        row("refused (quota_exceeded, waits for the lock)", refused),
        row("all starts", won + refused),
        row(f"check alone: lock + count + check, {options.starts} at once", alone),
    ]
    return "\n".join(lines)
