"""How long a new organization waits for its schema, and what a no-op migrate costs over many.

    python -m bench.provisioning [--count 200] [--baseline 10] [--keep]

Runs against its own database, agentyard_bench, on the PostgreSQL server named
by DATABASE_URL, created afresh and dropped at the end (--keep leaves it).
Each organization goes through exactly what sign-up and the Celery task do:
`organization_create` then `organization_provision`, which clones the template
schema. The schema step alone is then measured both ways on --baseline
schemas: the copy of the template against the old way, CREATE SCHEMA and every
migration.
"""

import argparse
import contextlib
import functools
import io
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

BENCH_DATABASE = "agentyard_bench"
# The same default as config/settings/base.py, which cannot be imported before
# DATABASE_URL is pointed at the bench database.
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/agentyard"


@dataclass
class Timings:
    label: str
    seconds: list[float]

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.seconds)
        return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]

    @property
    def p50(self) -> float:
        return statistics.median(self.seconds)


def database_url(server_url: str, name: str) -> str:
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path="/" + name))


def database_recreate(server_url: str, name: str, *, create: bool = True) -> None:
    # Connect to the server's maintenance database: one cannot drop the database one is in.
    with psycopg.connect(database_url(server_url, "postgres"), autocommit=True) as admin:
        # FORCE: a kept or crashed earlier run may still have sessions open there.
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if create:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """django-tenants writes some of its migrate output to sys.stdout directly, whatever the stdout given."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def organizations_create(prefix: str, count: int) -> list[float]:
    from django.db import close_old_connections

    from apps.tenancy.models import Organization
    from apps.tenancy.services import organization_create, organization_provision

    seconds = []
    for index in range(count):
        # What Celery's Django fix-up does around every task: the connection is
        # returned to its pool between tasks, as in a busy worker.
        close_old_connections()

        def create_and_provision(index: int = index) -> None:
            organization = organization_create(
                name=f"Bench {prefix} {index}",
                slug=f"{prefix}-{index:04d}",
                created_by=None,
                provision_async=False,
            )
            provisioned = organization_provision(organization_id=organization.pk)
            if provisioned.status != Organization.Status.ACTIVE:
                # A failure must stop the run, not be timed as a fast organization.
                raise RuntimeError(f"{provisioned.slug}: {provisioned.status_detail}")

        with quiet():
            seconds.append(timed(create_and_provision))
    return seconds


def schema_steps(prefix: str, count: int, method: str) -> list[float]:
    """The schema step alone, by either of the platform's two ways, each schema dropped after."""
    from django.db import close_old_connections

    from apps.tenancy import provisioning

    make = {
        "clone": provisioning.schema_clone_from_template,
        "migrate": provisioning.schema_create_and_migrate,
    }[method]
    seconds = []
    for index in range(count):
        close_old_connections()
        schema_name = f"{prefix}_{index:04d}"
        with quiet():
            seconds.append(timed(functools.partial(make, schema_name=schema_name)))
        provisioning.schema_drop(schema_name=schema_name)
    return seconds


def migrate_all(executor: str) -> float:
    from django.core.management import call_command

    with quiet():
        return timed(
            lambda: call_command("migrate_schemas", interactive=False, verbosity=0, executor=executor)
        )


def migrated_schema_count() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(DISTINCT table_schema) FROM information_schema.tables"
            " WHERE table_name = 'django_migrations'"
        )
        row = cursor.fetchone()
    return int(row[0]) if row else 0


def server_version() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        row = cursor.fetchone()
    return str(row[0]).split()[0] if row else "?"


def timings_row(timings: Timings) -> str:
    seconds = timings.seconds
    return (
        f"{timings.label:<40}{len(seconds):>7}{timings.p50:>9.3f}{timings.percentile(0.95):>9.3f}"
        f"{max(seconds):>9.3f}{sum(seconds):>10.2f}"
    )


def table(
    clone: Timings,
    steps: tuple[Timings, Timings] | None,
    schemas: int,
    migrations: Sequence[tuple[str, float | None]],
) -> str:
    from django.conf import settings

    lines = [
        f"Provisioning {len(clone.seconds)} organizations, PostgreSQL {server_version()}",
        "",
        f"{'per organization: create + provision':<40}{'count':>7}{'p50 s':>9}{'p95 s':>9}"
        f"{'max s':>9}{'total s':>10}",
        timings_row(clone),
    ]
    # Cloning slows down as one connection clones more schemas, so the
    # distribution alone hides a trend; the first and last tenth show it.
    tenth = max(1, len(clone.seconds) // 10)
    first, last = statistics.median(clone.seconds[:tenth]), statistics.median(clone.seconds[-tenth:])
    lines.append(f"{f'  p50 of its first {tenth} / last {tenth}':<40}{'':>7}{first:>9.3f}{last:>9.3f}")
    if steps is not None:
        cloned, migrated = steps
        ratio = cloned.p50 / migrated.p50
        verdict = f"cloning {1 / ratio:.1f}x faster" if ratio < 1 else f"cloning {ratio:.1f}x slower"
        lines += [
            "",
            f"{'the schema step alone':<40}{'count':>7}{'p50 s':>9}{'p95 s':>9}{'max s':>9}{'total s':>10}",
            timings_row(cloned),
            timings_row(migrated),
            f"{'clone / migrate, p50':<40}{'':>7}{ratio:>9.3f}  ({verdict})",
        ]
    lines += [
        "",
        f"{'no-op migrate_schemas, all schemas':<40}{'schemas':>7}{'total s':>9}{'ms/schema':>11}",
    ]
    processes = getattr(settings, "TENANT_MULTIPROCESSING_MAX_PROCESSES", 2)
    for executor, seconds in migrations:
        label = (
            "standard executor" if executor == "standard" else f"{executor} executor, {processes} processes"
        )
        if seconds is None:
            lines.append(f"{label:<40}{schemas:>7}{'failed':>9}")
        else:
            lines.append(f"{label:<40}{schemas:>7}{seconds:>9.2f}{seconds * 1000 / schemas:>11.1f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.provisioning", description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=200, help="organizations to create by cloning")
    parser.add_argument(
        "--baseline", type=int, default=10, help="schemas to make each way for the comparison (0: none)"
    )
    parser.add_argument("--keep", action="store_true", help=f"leave the {BENCH_DATABASE} database behind")
    args = parser.parse_args(argv)
    if args.count < 1 or args.baseline < 0:
        parser.error("--count must be at least 1 and --baseline at least 0")

    server_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    database_recreate(server_url, BENCH_DATABASE)
    # Django reads these once, at setup: they must be in place before it.
    os.environ["DATABASE_URL"] = database_url(server_url, BENCH_DATABASE)
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings.dev"
    os.environ["LOG_LEVEL"] = "WARNING"
    try:
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connections

        with quiet():
            migrate_seconds = timed(lambda: call_command("migrate", interactive=False, verbosity=0))
        progress(
            f"bench: {BENCH_DATABASE} migrated in {migrate_seconds:.1f} s;"
            f" creating {args.count} organizations, then {args.baseline} schemas each way"
        )
        clone = Timings("clone from template (now)", organizations_create("bench", args.count))
        # Public, the template and every organization's schema, before the baseline adds more.
        schemas = migrated_schema_count()
        migrations: list[tuple[str, float | None]] = [("standard", migrate_all("standard"))]
        try:
            migrations.append(("multiprocessing", migrate_all("multiprocessing")))
        except Exception as exc:  # a comparison that cannot run is reported, not fatal
            progress(f"bench: the multiprocessing executor failed: {type(exc).__name__}: {exc}")
            migrations.append(("multiprocessing", None))
        steps = None
        if args.baseline:
            steps = (
                Timings("clone from template", schema_steps("bench_clone", args.baseline, "clone")),
                Timings(
                    "CREATE SCHEMA + every migration", schema_steps("bench_migrate", args.baseline, "migrate")
                ),
            )
        print(table(clone, steps, schemas, migrations))
        connections.close_all()
    finally:
        if not args.keep:
            database_recreate(server_url, BENCH_DATABASE, create=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
