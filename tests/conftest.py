"""Shared test set-up: a committed world of two organizations, a live ASGI
server and a real Celery worker.

The world is created once per session, committed, in the test database:
organization Alpha (alice owner, amy member) and Beta (bob owner, ben member),
and olga, who belongs to no organization. Tests that use `db` run inside a
transaction on top of it and leave it untouched. Tests that talk to the live
server or the worker (other threads and processes) see only committed data, so
they use `live_db` and clean up what they create.
"""

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.test import Client

from apps.accounts.models import User
from apps.tenancy import services as tenancy_services
from apps.tenancy.models import Membership, Organization
from tests.factories import PASSWORD, make_user
from tests.runtime_server import runtime_server  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


@dataclass
class World:
    alpha: Organization
    beta: Organization
    alice: User  # owner of alpha
    amy: User  # member of alpha
    bob: User  # owner of beta
    ben: User  # member of beta
    olga: User  # in no organization
    password: str = PASSWORD


def _organization(slug: str, owner: User, member: User) -> Organization:
    organization = tenancy_services.organization_create(
        name=slug.capitalize(), slug=slug, created_by=owner, provision_async=False
    )
    tenancy_services.organization_provision(organization_id=organization.pk)
    Membership.objects.create(user=member, organization=organization, role=Membership.Role.MEMBER)
    organization.refresh_from_db()
    return organization


@pytest.fixture(scope="session")
def django_db_setup(
    request: pytest.FixtureRequest,
    django_test_environment: None,
    django_db_blocker: Any,
    django_db_keepdb: bool,
    django_db_modify_db_settings: None,
) -> Iterator[World]:
    """The test database and its committed world.

    pytest-django's own fixture creates the test database only when a collected
    test carries its `django_db` marker; the live-server tests use `live_db`
    instead, so run alone they would have used the development database. This
    one always sets it up, and refuses to write anywhere but a test database."""
    from django.test.utils import setup_databases, teardown_databases

    verbosity = int(request.config.option.verbose)
    with django_db_blocker.unblock():
        databases = setup_databases(
            verbosity=verbosity, interactive=False, keepdb=django_db_keepdb, aliases={"default": True}
        )
        name = str(connection.settings_dict["NAME"])
        if not name.startswith("test_"):
            raise RuntimeError(f"refusing to write test data into the database {name!r}")
        # The tests' own Redis database: no login lockout or throttle left from an earlier run.
        cache.clear()
        alice = make_user("alice@alpha.test", "Alice")
        amy = make_user("amy@alpha.test", "Amy")
        bob = make_user("bob@beta.test", "Bob")
        ben = make_user("ben@beta.test", "Ben")
        olga = make_user("olga@nowhere.test", "Olga")
        world = World(
            alpha=_organization("alpha", alice, amy),
            beta=_organization("beta", bob, ben),
            alice=alice,
            amy=amy,
            bob=bob,
            ben=ben,
            olga=olga,
        )
    yield world
    with django_db_blocker.unblock():
        # The live server's threads keep connections open; the test database can
        # only be dropped once they are gone.
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        teardown_databases(databases, verbosity=verbosity, keepdb=django_db_keepdb)


@pytest.fixture
def world(django_db_setup: World) -> World:
    return django_db_setup


@pytest.fixture
def live_db(django_db_setup: World, django_db_blocker: Any) -> Iterator[World]:
    """Database access without a wrapping transaction, for tests that share data
    with the live server or the worker. Clean up what you create."""
    with django_db_blocker.unblock():
        yield django_db_setup


def host(organization: Organization | None = None) -> str:
    return f"{organization.slug}.{settings.BASE_DOMAIN}" if organization else settings.BASE_DOMAIN


def client_for(user: User | None, organization: Organization | None = None) -> Client:
    """A test client that talks to an organization's host (or the public one)."""
    client = Client(HTTP_HOST=host(organization))
    if user is not None:
        client.force_login(user)
    return client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    port: int

    def url(self, organization: Organization | None = None, path: str = "/") -> str:
        return f"http://{host(organization)}:{self.port}{path}"


@pytest.fixture(scope="session")
def _live_server_thread(django_db_setup: World) -> Iterator[LiveServer]:
    import uvicorn

    from config.asgi import application

    port = free_port()
    config = uvicorn.Config(application, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True, name="live-asgi")
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the live ASGI server did not start")
        time.sleep(0.05)
    yield LiveServer(port=port)
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def asgi_server(_live_server_thread: LiveServer, live_db: World) -> LiveServer:
    """uvicorn serving config.asgi (HTTP and WebSockets) against the test database."""
    return _live_server_thread


def _worker_env() -> dict[str, str]:
    db = settings.DATABASES["default"]
    database_url = f"postgres://{db['USER']}@{db['HOST'] or ''}:{db['PORT'] or 5432}/{db['NAME']}"
    if db.get("PASSWORD"):
        database_url = database_url.replace("@", f":{db['PASSWORD']}@", 1)
    if str(db["HOST"]).startswith("/"):  # a unix socket directory (embedded PostgreSQL)
        database_url = f"postgres://{db['USER']}@/{db['NAME']}?host={db['HOST']}"
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": database_url,
        "TEST_REDIS_URL": settings.TEST_REDIS_URL,
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture(scope="session")
def celery_worker(django_db_setup: World, django_db_blocker: Any) -> Iterator[subprocess.Popen[bytes]]:
    """A real `celery worker` process on the test database and the test queue."""
    from apps.core.heartbeat import heartbeats_read, redis_client

    redis_client().flushdb()
    ARTIFACTS.mkdir(exist_ok=True)
    log = (ARTIFACTS / "celery-worker.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "celery", "-A", "config", "worker",
            "--loglevel=INFO", "--concurrency=1", "--pool=solo",
            "-Q", settings.CELERY_TASK_DEFAULT_QUEUE, "--hostname", "test-worker@%h",
            "--without-mingle", "--without-gossip",
        ],
        cwd=ROOT, env=_worker_env(), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not heartbeats_read():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("the Celery worker did not start; see test-artifacts/celery-worker.log")
        time.sleep(0.2)
    yield process
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting after {timeout} s")
        time.sleep(interval)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    """When tests failed, the runtime's own errors of this session are printed too: a test
    that got "internal error in the runtime; see its log" is explained where CI shows it."""
    if exitstatus == 0 or not ARTIFACTS.is_dir():
        return
    for log in sorted(ARTIFACTS.glob("runtime*.log")):
        lines = log.read_text(errors="replace").splitlines()
        starts = [i for i, line in enumerate(lines) if line.startswith(("ERROR ", "CRITICAL "))]
        if not starts:
            continue
        terminalreporter.section(f"{log.name}: the last of {len(starts)} errors")
        for line in lines[starts[-1] : starts[-1] + 60]:
            terminalreporter.write_line(line)
