"""`python -m scripts.run` (what `make run` starts), end to end, as a developer uses it.

The main tests start the command in its own session with its own port, database, Celery
queue and run directory, wait for the URLs it prints, use the site with the printed login,
press Ctrl-C (SIGINT) and check that nothing it started is left running: not web, worker or
beat, not Celery's pool processes, and not the embedded PostgreSQL and Redis. The others
check its one-line failures.
"""

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

import psycopg
import pytest
import redis
from psycopg import sql

from scripts.services import DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL, free_port

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 120
STOP_TIMEOUT = 60
# The Redis database these tests may use; others belong to the suite and to developers.
REDIS_DB = 14
# Variables a developer's shell may set that would point the run elsewhere than the tests expect.
OVERRIDDEN_SETTINGS = {
    "DJANGO_SETTINGS_MODULE", "DATABASE_URL", "REDIS_URL", "TEST_REDIS_URL", "CELERY_QUEUE", "PORT", "HOST",
    "BASE_DOMAIN", "PUBLIC_HOSTS", "ALLOWED_HOSTS", "SESSION_COOKIE_DOMAIN", "SITE_PORT", "CHROMA_URL",
}  # fmt: skip


# --- processes ----------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(parent pid, start time, state) of a process, None when it does not exist."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[19]), fields[0]


def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _descendants(root: int) -> dict[int, int]:
    """Every process below root, as pid -> start time (so a reused pid is not mistaken for it)."""
    children: dict[int, list[tuple[int, int]]] = {}
    for pid in _pids():
        stat = _stat(pid)
        if stat is not None:
            children.setdefault(stat[0], []).append((pid, stat[1]))
    found: dict[int, int] = {}
    todo = [root]
    while todo:
        for pid, started in children.get(todo.pop(), []):
            found[pid] = started
            todo.append(pid)
    return found


def _still_running(processes: dict[int, int]) -> list[str]:
    left = []
    for pid, started in processes.items():
        stat = _stat(pid)
        if stat is not None and stat[1] == started and stat[2] != "Z":
            left.append(f"{pid} {_cmdline(pid)}")
    return left


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _carrying_marker(marker: str) -> list[str]:
    """Processes whose environment holds the marker: whatever the run started, even after
    its parent died and it was handed to init, inherits it."""
    needle = f"AGENTYARD_TEST_RUN={marker}".encode()
    found = []
    for pid in _pids():
        if pid == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:  # gone, or another user's and not ours to read
            continue
        stat = _stat(pid)
        if needle in environ.split(b"\0") and stat is not None and stat[2] != "Z":
            found.append(f"{pid} {_cmdline(pid)}")
    return found


@dataclass
class Run:
    """`python -m scripts.run` started in its own session, its output collected line by line."""

    env: dict[str, str]
    marker: str = field(default_factory=lambda: uuid.uuid4().hex)
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scripts.run"],
            cwd=ROOT,
            env={**self.env, "AGENTYARD_TEST_RUN": self.marker},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            exited = self.proc.poll() is not None
            if exited:  # let the reader catch up with the last lines first
                self._reader.join(timeout=5)
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            if exited:
                pytest.fail(
                    f"scripts.run exited ({self.proc.returncode}) before printing {pattern!r}:\n{self.output}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"scripts.run printed no {pattern!r} within {timeout} s:\n{self.output}")
            time.sleep(0.2)

    def interrupt(self) -> int:
        """Ctrl-C, as the terminal sends it; the exit status once it has exited."""
        self.proc.send_signal(signal.SIGINT)
        try:
            returncode = self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"scripts.run was still running {STOP_TIMEOUT} s after SIGINT:\n{self.output}")
        self._reader.join(timeout=10)
        return returncode

    def kill(self) -> None:
        """After a failed test: leave nothing behind for the next one."""
        for pid in [*_descendants(self.proc.pid), self.proc.pid]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()


@contextlib.contextmanager
def running(env: dict[str, str]) -> Iterator[Run]:
    run = Run(env)
    try:
        yield run
    finally:
        if run.proc.poll() is None:
            run.kill()


# --- the site -----------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    cookies: dict[str, str]
    body: str


def fetch(
    port: int,
    host: str,
    path: str,
    *,
    method: str = "GET",
    form: dict[str, str] | None = None,
    cookies: str = "",
) -> Response:
    """One request to 127.0.0.1:port as the browser sends it for host (no redirects followed)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    headers = {"Host": f"{host}:{port}"}
    body = None
    if form is not None:
        body = urlencode(form)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    if cookies:
        headers["Cookie"] = cookies
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        set_cookies = [value for name, value in response.getheaders() if name.lower() == "set-cookie"]
        return Response(
            status=response.status,
            headers={name.lower(): value for name, value in response.getheaders()},
            cookies=dict(cookie.split(";", 1)[0].split("=", 1) for cookie in set_cookies),
            body=response.read().decode(errors="replace"),
        )
    finally:
        connection.close()


def wait_until_healthy(port: int) -> dict[str, object]:
    """/healthz once everything, the Celery worker's heartbeat included, reports ok."""
    deadline = time.monotonic() + 60
    while True:
        response = fetch(port, "localhost", "/healthz")
        report = json.loads(response.body)
        if response.status == 200 and report["status"] == "ok":
            return dict(report)
        if time.monotonic() > deadline:
            pytest.fail(f"/healthz did not report ok within 60 s: {response.status} {report}")
        time.sleep(0.5)


def check_the_site(run: Run, port: int) -> None:
    """What the printed URLs and login promise holds."""
    run.wait_for(rf"http://demo\.localhost:{port}/")
    email, password = run.wait_for(r"Log in as (\S+@\S+) / (\S+)").groups()
    assert email == "demo@agentyard.local"

    report = wait_until_healthy(port)
    assert report["checks"]["database"]["ok"]  # type: ignore[index]

    landing = fetch(port, "localhost", "/")
    assert landing.status == 200
    assert "Agentyard" in landing.body

    dashboard = fetch(port, "demo.localhost", "/")
    assert dashboard.status == 302
    assert urlsplit(dashboard.headers["location"]).path == "/login/"

    login_page = fetch(port, "localhost", "/login/")
    csrf = login_page.cookies["csrftoken"]
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login_page.body)
    assert token is not None
    logged_in = fetch(
        port,
        "localhost",
        "/login/",
        method="POST",
        form={"username": email, "password": password, "csrfmiddlewaretoken": token.group(1)},
        cookies=f"csrftoken={csrf}",
    )
    assert logged_in.status == 302, "the printed login was refused"


def assert_nothing_left(run: Run, started: dict[int, int]) -> None:
    left = sorted(set(_still_running(started)) | set(_carrying_marker(run.marker)))
    assert left == [], "left running after Ctrl-C:\n" + "\n".join(left) + f"\n\noutput:\n{run.output}"


# --- fixtures -----------------------------------------------------------------------------


def _with_path(url: str, path: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=path))


@pytest.fixture
def base_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment a developer's shell would have, minus anything pointing at shared state."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in OVERRIDDEN_SETTINGS
        and not name.startswith(("PYTEST_", "AGENTYARD_", "DEMO_", "RUNTIME_"))
    }
    env["AGENTYARD_RUN_DIR"] = str(tmp_path / "run")
    env["CELERY_QUEUE"] = f"agentyard-runtest-{uuid.uuid4().hex[:8]}"
    # The runtime's sandboxes run as an unprivileged user who must reach its root, and
    # pytest's tmp_path is private to us: a root of its own in the system's temp directory.
    runtime_root = Path(tempfile.mkdtemp(prefix="agentyard-runtest-runtime-"))
    env["RUNTIME_ROOT"] = str(runtime_root)
    yield env
    shutil.rmtree(runtime_root, ignore_errors=True)


@pytest.fixture
def runtest_database() -> Iterator[str]:
    """A DATABASE_URL naming a fresh database on the suite's server; dropped afterwards."""
    server_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    name = f"agentyard_runtest_{uuid.uuid4().hex[:8]}"
    yield _with_path(server_url, f"/{name}")
    with psycopg.connect(server_url, dbname="postgres", autocommit=True, connect_timeout=5) as connection:
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def runtest_redis() -> Iterator[str]:
    url = _with_path(os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL, f"/{REDIS_DB}")
    yield url
    client = redis.Redis.from_url(url)
    with contextlib.closing(client):
        client.flushdb()


# --- tests --------------------------------------------------------------------------------


def test_run_serves_the_platform_on_the_configured_servers_and_stops_cleanly_on_ctrl_c(
    base_env: dict[str, str], runtest_database: str, runtest_redis: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {**base_env, "PORT": str(port), "DATABASE_URL": runtest_database, "REDIS_URL": runtest_redis}
    with running(env) as run:
        run.wait_for(rf"http://localhost:{port}/")
        check_the_site(run, port)
        assert "PostgreSQL: using" in run.output
        assert "Redis: using" in run.output
        for name in ("web", "worker", "beat"):
            assert re.search(rf"^{name} \| ", run.output, re.MULTILINE), f"no output from {name}"
        # The knowledge index's Chroma server: a child of the run, answering on the port it named.
        chroma_port = int(
            run.wait_for(r"Starting the Chroma server for the knowledge index on 127\.0\.0\.1:(\d+)").group(1)
        )
        chroma = int(run.wait_for(r"chroma started \(pid (\d+)\)").group(1))
        heartbeat = fetch(chroma_port, "127.0.0.1", "/api/v2/heartbeat")
        assert heartbeat.status == 200, heartbeat.body

        started = _descendants(run.proc.pid)
        assert chroma in started
        returncode = run.interrupt()

    assert returncode == 0, run.output
    assert _still_running({chroma: started[chroma]}) == [], "the Chroma server outlived the run"
    assert_nothing_left(run, started)

    # The passwords it printed are kept for the next run, readable by their owner only.
    credentials = tmp_path / "run" / "credentials.json"
    assert credentials.stat().st_mode & 0o777 == 0o600
    assert json.loads(credentials.read_text())["demo"] in run.output


def test_run_starts_embedded_postgresql_and_redis_and_stops_them_on_ctrl_c(base_env: dict[str, str]) -> None:
    port = free_port()
    env = {**base_env, "PORT": str(port), "AGENTYARD_EMBEDDED": "1"}
    with running(env) as run:
        run.wait_for(rf"http://localhost:{port}/")
        assert "PostgreSQL: AGENTYARD_EMBEDDED is set, starting an embedded one" in run.output
        assert "Redis: AGENTYARD_EMBEDDED is set, starting an embedded one" in run.output
        check_the_site(run, port)

        started = _descendants(run.proc.pid)
        servers = {pid: started[pid] for pid in started if _comm(pid) in {"postgres", "redis-server"}}
        assert {_comm(pid) for pid in servers} == {"postgres", "redis-server"}, "no embedded servers found"
        returncode = run.interrupt()

    assert returncode == 0, run.output
    assert _still_running(servers) == [], "the embedded servers outlived the run"
    assert "PostgreSQL: stopped the embedded server" in run.output
    assert "Redis: stopped the embedded server" in run.output
    assert_nothing_left(run, started)


def test_run_stops_everything_and_names_the_child_that_died(
    base_env: dict[str, str], runtest_database: str, runtest_redis: str
) -> None:
    port = free_port()
    env = {**base_env, "PORT": str(port), "DATABASE_URL": runtest_database, "REDIS_URL": runtest_redis}
    with running(env) as run:
        run.wait_for(rf"http://localhost:{port}/")
        worker = int(run.wait_for(r"worker started \(pid (\d+)\)").group(1))
        started = _descendants(run.proc.pid)
        os.kill(worker, signal.SIGKILL)
        try:
            returncode = run.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"scripts.run kept running after its worker died:\n{run.output}")
        run.wait_for(r"^error: ")

    assert returncode == 1
    assert "error: worker exited unexpectedly (killed by SIGKILL)" in run.lines
    assert_nothing_left(run, started)


def test_run_refuses_a_port_in_use_in_one_line(base_env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "scripts.run"],
            cwd=ROOT,
            env={**base_env, "PORT": str(port)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert (
        result.stderr.strip() == f"error: port {port} is already in use on 127.0.0.1; set PORT to use another"
    )


def test_an_unreachable_database_url_someone_set_is_one_line_not_an_embedded_server(
    base_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there
    result = subprocess.run(
        [sys.executable, "-m", "scripts.services", "exec", "--", sys.executable, "-c", "print('ran')"],
        cwd=ROOT,
        env={**base_env, "DATABASE_URL": f"postgres://postgres@127.0.0.1:{port}/agentyard"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "ran" not in result.stdout
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: PostgreSQL is not reachable at 127.0.0.1:{port} (DATABASE_URL): ")
    assert not (tmp_path / "run" / "pg").exists()
