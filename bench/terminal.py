"""Terminal echo latency: a keystroke sent over the WebSocket until its echoed byte comes back.

    python -m bench.terminal [--terminals 20] [--keystrokes 200] [--interval 0.1] [--keep]

--terminals workspaces are started (bwrap sandboxes on a runtime this script
starts), one browser-like WebSocket open on each terminal, all at once, each
typing one character every --interval seconds (jittered) and timing how long
until the character is echoed back: browser socket -> uvicorn (config.asgi, as
`make run` serves it) -> the terminal consumer -> gRPC -> the runtime -> the
PTY -> the shell's echo, and all the way back. Beside it, the same keystrokes
sent straight over gRPC to the runtime (no web hop): the floor the web layer
adds to. The goal is p99 <= 30 ms with 20 terminals open.

Runs against its own database, agentyard_bench_terminal, on the PostgreSQL
server named by DATABASE_URL, created afresh and dropped at the end (--keep
leaves it), Redis database 12 of REDIS_URL's server, and a runtime in a
temporary directory, removed at the end.
"""

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.provisioning import DEFAULT_DATABASE_URL, database_recreate, database_url, progress, quiet

BENCH_DATABASE = "agentyard_bench_terminal"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
BENCH_REDIS_DB = 12
ROOT = Path(__file__).resolve().parent.parent
GOAL_P99_MS = 30.0
SLUG = "benchterm"
# Typed characters cycle through these; a line is cleared (Ctrl-U) before it wraps.
ALPHABET = string.ascii_lowercase
KILL_LINE_EVERY = 40


@dataclass
class Result:
    label: str
    latencies_ms: list[float]
    terminals: int
    lost: int = 0

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[max(0, min(len(ordered) - 1, round(fraction * len(ordered)) - 1))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Set-up ---------------------------------------------------------------------


@contextlib.contextmanager
def runtime(work: Path, address: str, secret: str) -> Iterator[subprocess.Popen[bytes]]:
    root, log_path = work / "runtime", work / "runtime.log"
    env = {
        **os.environ,
        "RUNTIME_LISTEN": address,
        "RUNTIME_SECRET": secret,
        "RUNTIME_ROOT": str(root),
        "RUNTIME_BACKEND": "bwrap",
        "PYTHONUNBUFFERED": "1",
    }
    log = log_path.open("ab")
    process = subprocess.Popen([sys.executable, "-m", "runtime"], cwd=ROOT, env=env, stdout=log, stderr=log)
    log.close()
    try:
        from runtime.client import RuntimeClient, RuntimeServiceError

        client = RuntimeClient(address, secret)
        deadline = time.monotonic() + 60
        while True:
            try:
                client.health()
                break
            except RuntimeServiceError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log_text = log_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"the runtime did not start:\n{log_text}") from None
                time.sleep(0.1)
        client.close()
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@contextlib.contextmanager
def web_server(env: dict[str, str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    command = [
        sys.executable, "-m", "uvicorn", "config.asgi:application",
        "--host", "127.0.0.1", "--port", str(port),
        "--no-access-log", "--log-level", "warning", "--lifespan", "off",
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the ASGI server did not start") from None
                time.sleep(0.2)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def world_create(count: int) -> tuple[str, list[int], str]:
    """An organization, its owner's session cookie, and `count` running workspaces."""
    from django.test import Client
    from django_tenants.utils import schema_context

    from apps.accounts.models import User
    from apps.tenancy.audit import Actor
    from apps.tenancy.services import organization_create, organization_provision
    from apps.workspaces.services import workspace_create

    owner = User.objects.create_user("owner@benchterm.test", "bench-password-not-secret")
    organization = organization_create(
        name="Bench terminal", slug=SLUG, created_by=owner, provision_async=False
    )
    organization_provision(organization_id=organization.pk)
    organization.refresh_from_db()
    ids = []
    with schema_context(organization.schema_name):
        for index in range(count):
            workspace = workspace_create(
                actor=Actor(user=owner),
                organization=organization,
                name=f"bench-{index}",
                memory_mb=256,
                disk_mb=64,
            )
            ids.append(workspace.pk)
    client = Client()
    client.force_login(owner)
    return f"sessionid={client.cookies['sessionid'].value}", ids, organization.schema_name


def sandboxes_destroy(address: str, secret: str, schema: str, ids: list[int]) -> None:
    """Loop devices, cgroups and files of the sandboxes go with them, before the runtime stops."""
    from runtime.client import RuntimeClient

    client = RuntimeClient(address, secret)
    for workspace_id in ids:
        client.destroy_sandbox(schema, f"ws-{workspace_id}")
    client.close()


# Measuring ------------------------------------------------------------------


class Typist:
    """Types into one terminal and times each character's echo."""

    def __init__(self, send: Any, interval: float, keystrokes: int) -> None:
        self.send = send
        self.interval = interval
        self.keystrokes = keystrokes
        self.latencies: list[float] = []
        self.lost = 0
        self.echo: asyncio.Queue[bytes] = asyncio.Queue()

    def output(self, data: bytes) -> None:
        self.echo.put_nowait(data)

    async def _drain(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while True:
                    await self.echo.get()

    async def type(self) -> None:
        await self._drain(0.3)
        for index in range(self.keystrokes):
            if index and index % KILL_LINE_EVERY == 0:
                await self.send(b"\x15")  # Ctrl-U: clear the line, untimed
                await self._drain(0.05)
            char = ALPHABET[index % len(ALPHABET)].encode()
            while not self.echo.empty():
                self.echo.get_nowait()
            started = time.perf_counter()
            await self.send(char)
            try:
                async with asyncio.timeout(2):
                    while char not in await self.echo.get():
                        pass
                self.latencies.append((time.perf_counter() - started) * 1000)
            except TimeoutError:
                self.lost += 1
            # Humans do not type in lockstep: spread the terminals' keystrokes out.
            await asyncio.sleep(self.interval * random.uniform(0.5, 1.5))


async def through_websockets(
    port: int, cookie: str, ids: list[int], interval: float, keystrokes: int
) -> tuple[list[float], int]:
    from websockets.asyncio.client import ClientConnection, connect

    host = f"{SLUG}.localhost:{port}"

    async def one(workspace_id: int) -> Typist:
        async with connect(
            f"ws://{host}/ws/workspaces/{workspace_id}/terminal/?rows=24&cols=200",
            host="127.0.0.1",
            port=port,
            additional_headers={"Cookie": cookie},
            origin=f"http://{host}",  # type: ignore[arg-type]
            open_timeout=30,
            max_size=None,
        ) as socket:
            typist = Typist(socket.send, interval, keystrokes)
            await _until_driving(socket)
            reader = asyncio.create_task(_read(socket, typist))
            try:
                await typist.type()
            finally:
                reader.cancel()
            return typist

    async def _read(socket: ClientConnection, typist: Typist) -> None:
        async for frame in socket:
            if isinstance(frame, bytes):
                typist.output(frame)

    typists = await asyncio.gather(*(one(workspace_id) for workspace_id in ids))
    return [value for typist in typists for value in typist.latencies], sum(typist.lost for typist in typists)


async def _until_driving(socket: Any) -> None:
    me = None
    async with asyncio.timeout(30):
        async for frame in socket:
            if isinstance(frame, bytes):
                continue
            message = json.loads(frame)
            if message["type"] == "hello":
                me = message["you"]
            elif message["type"] == "room" and message["driver"] == me:
                return
            elif message["type"] == "error":
                raise RuntimeError(f"the terminal refused: {message['message']}")


async def through_grpc(
    address: str, secret: str, schema: str, ids: list[int], interval: float, keystrokes: int
) -> tuple[list[float], int]:
    from runtime.client import AsyncRuntimeClient

    client = AsyncRuntimeClient(address, secret)

    async def one(workspace_id: int) -> Typist:
        stream = await client.open_pty(schema, f"ws-{workspace_id}", "main", rows=24, cols=200, replay=False)
        typist = Typist(stream.write, interval, keystrokes)

        async def read() -> None:
            async for item in stream:
                if isinstance(item, bytes):
                    typist.output(item)

        reader = asyncio.create_task(read())
        try:
            await typist.type()
        finally:
            await stream.close()
            reader.cancel()
        return typist

    try:
        typists = await asyncio.gather(*(one(workspace_id) for workspace_id in ids))
    finally:
        await client.close()
    return [value for typist in typists for value in typist.latencies], sum(typist.lost for typist in typists)


# Report ---------------------------------------------------------------------


def table(results: list[Result], interval: float, load_before: float) -> str:
    terminals = results[0].terminals
    lines = [
        f"Terminal echo latency: one character typed, until its echo is back; {terminals} terminals open"
        f" at once, each typing every {interval * 1000:.0f} ms (jittered); {os.cpu_count()} CPUs,"
        f" load average {load_before:.1f} before the run (the machine's other work shows in the tail)",
        "",
        f"{'path':<44}{'keys':>7}{'lost':>6}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}   goal",
    ]
    for result in results:
        p99 = result.percentile(0.99)
        goal = f"p99 <= {GOAL_P99_MS:.0f} ms {'met' if p99 <= GOAL_P99_MS else 'MISSED'}"
        lines.append(
            f"{result.label:<44}{len(result.latencies_ms):>7}{result.lost:>6}"
            f"{statistics.median(result.latencies_ms):>9.2f}{result.percentile(0.95):>9.2f}"
            f"{p99:>9.2f}{max(result.latencies_ms):>9.2f}   {goal if result is results[0] else '(floor)'}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.terminal", description=__doc__.split("\n")[0])
    parser.add_argument("--terminals", type=int, default=20, help="terminals open and typing at once")
    parser.add_argument("--keystrokes", type=int, default=200, help="timed keystrokes per terminal")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between a terminal's keystrokes")
    parser.add_argument("--keep", action="store_true", help=f"leave the {BENCH_DATABASE} database behind")
    args = parser.parse_args(argv)
    if args.terminals < 1 or args.keystrokes < 1 or args.interval < 0:
        parser.error("--terminals and --keystrokes must be positive, --interval not negative")
    if shutil.which("bwrap") is None:
        parser.error("bubblewrap is not installed (apt-get install bubblewrap): the sandboxes need it")

    load_before = os.getloadavg()[0]
    server_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    redis_url = (
        urlsplit(os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL)
        ._replace(path=f"/{BENCH_REDIS_DB}")
        .geturl()
    )
    work = Path(tempfile.mkdtemp(prefix="agentyard-bench-terminal-"))
    work.chmod(0o755)  # the sandboxes' user must reach the runtime's root inside it
    address = f"127.0.0.1:{free_port()}"
    secret = "bench-terminal-" + os.urandom(12).hex()
    database_recreate(server_url, BENCH_DATABASE)
    overrides = {
        "DATABASE_URL": database_url(server_url, BENCH_DATABASE),
        "REDIS_URL": redis_url,
        "DJANGO_SETTINGS_MODULE": "config.settings.dev",
        "DEBUG": "false",
        "LOG_LEVEL": "WARNING",
        "RUNTIME_ADDRESS": address,
        "RUNTIME_SECRET": secret,
        "WORKSPACES_MAX_PER_ORGANIZATION": str(args.terminals + 5),
        "WORKSPACES_MAX_RUNNING_PER_ORGANIZATION": str(args.terminals + 5),
    }
    os.environ.update(overrides)
    env = dict(os.environ)
    try:
        import django

        django.setup()
        import redis
        from django.core.management import call_command
        from django.db import connections

        redis.Redis.from_url(redis_url).flushdb()
        with quiet():
            call_command("migrate", interactive=False, verbosity=0)
        with runtime(work, address, secret):
            progress(f"bench: starting {args.terminals} workspaces")
            cookie, ids, schema = world_create(args.terminals)
            connections.close_all()
            port = free_port()
            with web_server(env, port):
                progress(
                    f"bench: {args.terminals} terminals typing over WebSockets, {args.keystrokes} keys each"
                )
                web, web_lost = asyncio.run(
                    through_websockets(port, cookie, ids, args.interval, args.keystrokes)
                )
            progress("bench: the same over gRPC straight to the runtime")
            grpc_only, grpc_lost = asyncio.run(
                through_grpc(address, secret, schema, ids, args.interval, args.keystrokes)
            )
            sandboxes_destroy(address, secret, schema, ids)
        results = [
            Result("WebSocket -> web -> gRPC -> PTY, and back", web, args.terminals, web_lost),
            Result("gRPC -> PTY, and back (no web hop)", grpc_only, args.terminals, grpc_lost),
        ]
        if not web or not grpc_only:
            raise RuntimeError("no keystroke came back; see the runtime's log")
        print(table(results, args.interval, load_before))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not args.keep:
            database_recreate(server_url, BENCH_DATABASE, create=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
