"""`make run`: the whole platform on this machine, in one terminal.

    python -m scripts.run          (PORT=8000 and HOST=127.0.0.1 unless set)

Finds or starts PostgreSQL and Redis (scripts/services.py), migrates, seeds the demo
organization and its logins (manage.py seed_demo), then supervises its children, each in
its own process group with its output prefixed by its name: runtime (the sandbox runtime,
`python -m runtime`, started first and listening before anything that may call it), web
(uvicorn), worker and beat (Celery). Once /healthz answers it prints the URLs and the login.

Unless CHROMA_URL is set, a Chroma server for the knowledge index is one more child,
`chroma`: `chroma run` on 127.0.0.1:8765 (a free port when that one is taken) with its
files in .run/chroma-server and its output in .run/chroma-server.log. It starts first,
alongside everything else, and web/worker/beat start with CHROMA_URL pointing at it once
it answers: web and worker then share one index instead of taking turns on embedded files.

The runtime keeps its sandboxes under the run directory (.run/runtime) and shares a secret
with web/worker/beat: RUNTIME_SECRET when set, otherwise one generated on the first run and
kept in .run/runtime-secret (mode 0600). It listens on RUNTIME_LISTEN (or RUNTIME_ADDRESS),
by default 127.0.0.1:50061, or a free port when that one is taken.

Ctrl-C or SIGTERM stops everything: SIGTERM to each child's process group, SIGKILL after a
grace period (at once on a second Ctrl-C), then the embedded servers. A child that exits on
its own stops everything too, and the exit status is 1, naming it.
"""

import contextlib
import errno
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scripts.services import (
    SIGNALS,
    ServiceError,
    Services,
    StopRequested,
    display_path,
    ensure_services,
    free_port,
    run_dir_default,
    spawn,
    stop_process_groups,
)

STOP_GRACE_SECONDS = 10
HEALTH_POLL_SECONDS = 0.5
RUNTIME_DEFAULT_PORT = 50061
RUNTIME_START_SECONDS = 30
CHROMA_DEFAULT_PORT = 8765
CHROMA_START_SECONDS = 60


class Console:
    """One writer at a time, so the children's lines never interleave mid-line."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        with self._lock:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()

    def say(self, text: str) -> None:
        self.line(f"==> {text}")


class ChildFailed(Exception):
    def __init__(self, name: str, returncode: int, log: Path | None = None) -> None:
        where = f"; its output is in {display_path(log)}" if log is not None else ""
        super().__init__(f"{name} exited unexpectedly ({_describe_exit(returncode)}){where}")


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit status {returncode}"


class Child:
    """A supervised process whose output lines come out as `name | line`, or go to `log`."""

    def __init__(
        self, name: str, args: Sequence[str], env: dict[str, str], console: Console, log: Path | None = None
    ) -> None:
        self.name = name
        self.console = console
        self.log = log
        if log is None:
            self.proc = spawn(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        else:
            with log.open("ab") as file:
                self.proc = spawn(args, env=env, stdout=file, stderr=subprocess.STDOUT)
        self._pump = threading.Thread(target=self._copy_output, name=f"{name}-output", daemon=True)
        self._output_started = log is not None  # nothing to copy

    def start_output(self) -> None:
        # Started only once every child is spawned: fork with other threads running is unsafe.
        if not self._output_started:
            self._output_started = True
            self._pump.start()

    def _copy_output(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.console.line(f"{self.name} | {raw.decode(errors='replace').rstrip()}")

    def finish_output(self) -> None:
        # Grandchildren may hold the pipe open a little longer; never wait for them for long.
        if self._pump.is_alive():
            self._pump.join(timeout=2)


def _env_port() -> int:
    value = os.environ.get("PORT", "").strip() or "8000"
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ServiceError(f"PORT must be a port number, not {value!r}")
    return int(value)


def _port_check(host: str, port: int) -> None:
    """Fail before anything starts when the web server could not listen."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As uvicorn does, so a port that only has connections in TIME_WAIT counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ServiceError(
                    f"port {port} is already in use on {host}; set PORT to use another"
                ) from None
            raise ServiceError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def _run_step(name: str, args: Sequence[str], env: dict[str, str], console: Console) -> None:
    """Run a set-up command to completion, its output prefixed; stop it if we are told to stop."""
    child = Child(name, args, env, console)
    child.start_output()
    try:
        while child.proc.poll() is None:
            SIGNALS.raise_if_stop_requested()
            time.sleep(0.1)
    finally:
        stop_process_groups([child.proc], grace=STOP_GRACE_SECONDS)
        child.finish_output()
    if child.proc.returncode != 0:
        raise ServiceError(f"{name} failed ({_describe_exit(child.proc.returncode)}); see its output above")


def _seed(env: dict[str, str], run_dir: Path, console: Console) -> dict[str, Any]:
    args = [
        sys.executable,
        "manage.py",
        "seed_demo",
        "--json",
        "--credentials",
        str(run_dir / "credentials.json"),
    ]
    proc = spawn(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        while True:
            try:
                out, err = proc.communicate(timeout=0.1)
                break
            except subprocess.TimeoutExpired:
                SIGNALS.raise_if_stop_requested()
    finally:
        stop_process_groups([proc], grace=STOP_GRACE_SECONDS)
    for line in err.decode(errors="replace").splitlines():
        console.line(f"seed | {line}")
    if proc.returncode != 0:
        raise ServiceError(f"seeding the demo data failed ({_describe_exit(proc.returncode)}); see above")
    try:
        logins: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise ServiceError("seed_demo printed no logins") from None
    return logins


def _healthz_answers(host: str, port: int, base_domain: str) -> bool:
    connect_host = "127.0.0.1" if host in {"0.0.0.0", ""} else host
    if ":" in connect_host:
        connect_host = f"[{connect_host}]"
    request = urllib.request.Request(
        f"http://{connect_host}:{port}/healthz", headers={"Host": f"{base_domain}:{port}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310 (http:// built above)
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _announce(console: Console, port: int, base_domain: str, logins: dict[str, Any]) -> None:
    org = logins["organization"]
    demo, admin = logins["demo"], logins["admin"]
    public, organization = f"http://{base_domain}:{port}/", f"http://{org['host']}:{port}/"
    width = max(len(public), len(organization))
    console.say("Agentyard is running:")
    console.line(f"      {public:<{width}}   public site: sign up, log in")
    console.line(f"      {organization:<{width}}   the {org['slug']} organization")
    console.line(f"    Log in as {demo['email']} / {demo['password']} (owner of {org['slug']})")
    console.line(f"    Staff user: {admin['email']} / {admin['password']}")
    console.line("    Ctrl-C stops everything.")


def _supervise(
    children: list[Child], services: Services, host: str, port: int, base_domain: str, logins: dict[str, Any]
) -> None:
    console = children[0].console
    for child in children:
        console.say(f"{child.name} started (pid {child.proc.pid})")
        child.start_output()
    announced = False
    next_health_check = 0.0
    while True:
        SIGNALS.raise_if_stop_requested()
        for child in children:
            returncode = child.proc.poll()
            if returncode is not None:
                raise ChildFailed(child.name, returncode, child.log)
        if (server := services.dead_server()) is not None and server.proc is not None:
            raise ChildFailed(f"the embedded {server.name}", server.proc.returncode)
        if not announced and time.monotonic() >= next_health_check:
            if _healthz_answers(host, port, base_domain):
                _announce(console, port, base_domain, logins)
                announced = True
            next_health_check = time.monotonic() + HEALTH_POLL_SECONDS
        time.sleep(0.1)


def _runtime_secret(run_dir: Path) -> str:
    """The runtime's shared secret, generated once and kept for the next runs (owner-only)."""
    path = run_dir / "runtime-secret"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_text().strip()
        if len(secret) >= 16:
            return secret
        path.unlink()
        return _runtime_secret(run_dir)
    secret = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as file:
        file.write(secret + "\n")
    return secret


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _runtime_env(run_dir: Path) -> dict[str, str]:
    """RUNTIME_* for the runtime and, the same values, for web/worker/beat."""
    listen = os.environ.get("RUNTIME_LISTEN", "").strip() or os.environ.get("RUNTIME_ADDRESS", "").strip()
    if not listen:
        port = RUNTIME_DEFAULT_PORT if _port_free(RUNTIME_DEFAULT_PORT) else free_port()
        listen = f"127.0.0.1:{port}"
    return {
        "RUNTIME_LISTEN": listen,
        "RUNTIME_ADDRESS": listen,
        "RUNTIME_SECRET": os.environ.get("RUNTIME_SECRET", "").strip() or _runtime_secret(run_dir),
        "RUNTIME_ROOT": os.environ.get("RUNTIME_ROOT", "").strip() or str(_runtime_root(run_dir)),
    }


def _runtime_root(run_dir: Path) -> Path:
    """.run/runtime, unless the sandboxes could not reach it: a runtime running as root drops
    to an unprivileged user for bwrap, which must be able to walk down to the workspaces. A
    checkout under a private home directory (/root is 0700) then keeps them under /var/lib,
    one directory per checkout."""
    root = (run_dir / "runtime").resolve()
    if os.geteuid() != 0 or all(os.stat(path).st_mode & 0o001 for path in root.parents if path.exists()):
        return root
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    return Path("/var/lib/agentyard") / f"runtime-{digest}"


def _wait_for_runtime(runtime: Child, listen: str) -> None:
    """Until the runtime accepts connections; its own one-line error if it exits instead."""
    host, _, port = listen.rpartition(":")
    host = "127.0.0.1" if host in {"0.0.0.0", ""} else host.strip("[]")
    deadline = time.monotonic() + RUNTIME_START_SECONDS
    while True:
        SIGNALS.raise_if_stop_requested()
        if runtime.proc.poll() is not None:
            runtime.finish_output()
            raise ChildFailed(runtime.name, runtime.proc.returncode)
        with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=0.5):
            return
        if time.monotonic() > deadline:
            raise ServiceError(f"the runtime did not listen on {listen} within {RUNTIME_START_SECONDS} s")
        time.sleep(0.1)


def _chroma_start(run_dir: Path, env: dict[str, str], console: Console) -> Child | None:
    """The knowledge index's Chroma server, unless CHROMA_URL names one; CHROMA_URL is set in
    `env` for the children. Not waited for here: it starts while the rest does."""
    if env.get("CHROMA_URL", "").strip():
        console.say(f"Knowledge index: using the Chroma server at CHROMA_URL ({env['CHROMA_URL']})")
        return None
    executable = Path(sys.executable).parent / "chroma"
    if not executable.exists():
        raise ServiceError(
            "chroma is not installed in this environment; run `make bootstrap`, or set CHROMA_URL"
        )
    port = CHROMA_DEFAULT_PORT if _port_free(CHROMA_DEFAULT_PORT) else free_port()
    path, log = run_dir / "chroma-server", run_dir / "chroma-server.log"
    env["CHROMA_URL"] = f"http://127.0.0.1:{port}"
    console.say(
        f"Starting the Chroma server for the knowledge index on 127.0.0.1:{port}"
        f" (files in {display_path(path)}, output in {display_path(log)})"
    )
    args = [str(executable), "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)]
    return Child("chroma", args, env, console, log=log)


def _chroma_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=1) as response:  # noqa: S310 (http:// built above)
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _wait_for_chroma(chroma: Child, url: str) -> None:
    """Until the Chroma server answers its heartbeat; ChildFailed naming its log if it exits."""
    deadline = time.monotonic() + CHROMA_START_SECONDS
    while not _chroma_answers(url):
        SIGNALS.raise_if_stop_requested()
        if chroma.proc.poll() is not None:
            raise ChildFailed(chroma.name, chroma.proc.returncode, chroma.log)
        if time.monotonic() > deadline:
            raise ServiceError(f"the Chroma server did not answer at {url} within {CHROMA_START_SECONDS} s")
        time.sleep(0.1)


def _settings_values() -> tuple[str, str]:
    """The Celery queue and base domain, read from the same settings the children will use."""
    from django.conf import settings

    return str(settings.CELERY_TASK_DEFAULT_QUEUE), str(settings.BASE_DOMAIN)


def main() -> int:
    SIGNALS.install()
    console = Console()
    run_dir = run_dir_default()
    host = os.environ.get("HOST", "").strip() or "127.0.0.1"
    children: list[Child] = []
    try:
        port = _env_port()
        _port_check(host, port)
        run_dir.mkdir(parents=True, exist_ok=True)
        with ensure_services(run_dir, say=console.say) as services:
            os.environ.update(services.env)
            os.environ.update(_runtime_env(run_dir))
            os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            try:
                queue, base_domain = _settings_values()
            except Exception as exc:  # settings report a bad variable with an exception naming it
                raise ServiceError(f"the settings do not load: {exc}") from None

            try:
                # Started first, waited for last: nothing calls it before web and worker start.
                chroma = _chroma_start(run_dir, env, console)
                if chroma is not None:
                    children.append(chroma)
                # First, and listening, before anything that may call it (the demo seed, web, worker).
                console.say(f"Starting the sandbox runtime on {env['RUNTIME_LISTEN']}")
                runtime = Child("runtime", [sys.executable, "-m", "runtime"], env, console)
                children.append(runtime)
                runtime.start_output()
                _wait_for_runtime(runtime, env["RUNTIME_LISTEN"])

                console.say("Migrating the database (public schema, organizations, template schema)")
                _run_step("migrate", [sys.executable, "manage.py", "migrate", "--noinput"], env, console)
                console.say("Seeding the demo organization and logins")
                logins = _seed(env, run_dir, console)

                celery = [sys.executable, "-m", "celery", "-A", "config"]
                commands = {
                    "web": [
                        sys.executable,
                        "-m",
                        "uvicorn",
                        "config.asgi:application",
                        "--host",
                        host,
                        "--port",
                        str(port),
                        # Django's ASGI handler has no lifespan support; uvicorn would log that it is missing.
                        "--lifespan",
                        "off",
                    ],
                    "worker": [
                        *celery,
                        "worker",
                        "-l",
                        "info",
                        "-c",
                        "2",
                        "-Q",
                        queue,
                        "-n",
                        f"worker-{port}@%h",
                    ],
                    "beat": [*celery, "beat", "-l", "info", "-s", str(run_dir / "celerybeat-schedule")],
                }
                if chroma is not None:
                    _wait_for_chroma(chroma, env["CHROMA_URL"])
                for name, args in commands.items():
                    children.append(Child(name, args, env, console))
                _supervise(children, services, host, port, base_domain, logins)
            except ChildFailed as exc:
                console.say(f"{exc}; stopping everything")
                raise ServiceError(str(exc)) from None
            except StopRequested:
                console.say("Stopping (Ctrl-C again to kill at once)")
                raise
            finally:
                stop_process_groups([child.proc for child in children], grace=STOP_GRACE_SECONDS)
                for child in children:
                    child.finish_output()
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    except StopRequested:
        console.say("Stopped.")
        return 0
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
