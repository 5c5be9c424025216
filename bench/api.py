"""REST API throughput and latency, and API key -> organization resolution on its own.

    python -m bench.api [--seconds 10] [--connections 32] [--workers 2] [--resolutions 5000] [--keep]

(a) GET /api/v1/organization with an API key, under --connections concurrent
    keep-alive clients for --seconds, against the servers as in production, side by
    side: gunicorn serving config.wsgi (gthread workers: what serves plain HTTP in
    docker/compose.yaml) and uvicorn serving config.asgi (what serves WebSockets,
    and everything under `make run`), --workers processes each, DEBUG off.
    Load comes from `wrk` when it is installed (C, its own threads), otherwise from
    a Python asyncio driver in this process (raw HTTP/1.1 over asyncio streams);
    the table says which. On a small machine the load generator shares the CPU
    with the server, so the numbers are a floor.
(b) apps.tenancy.api_keys.key_check on a real key, in a loop, in-process: what
    every API request pays to find its organization. Also the SQL queries one API
    request makes, counted with CaptureQueriesContext.

Runs against its own database, agentyard_bench_api, on the PostgreSQL server
named by DATABASE_URL, created afresh and dropped at the end (--keep leaves it),
and Redis database 13 of REDIS_URL's server (throttle counters).
"""

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.provisioning import DEFAULT_DATABASE_URL, database_recreate, database_url, progress, quiet

BENCH_DATABASE = "agentyard_bench_api"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
BENCH_REDIS_DB = 13
ROOT = Path(__file__).resolve().parent.parent
GOAL_RPS = 800.0
GOAL_P99_MS = 50.0
GOAL_RESOLUTION_P50_US = 1000.0
PATH = "/api/v1/organization"


@dataclass
class LoadResult:
    driver: str
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    notes: list[str] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(fraction * len(ordered)) - 1))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_url_for_bench(url: str) -> str:
    return urlsplit(url)._replace(path=f"/{BENCH_REDIS_DB}").geturl()


# Set-up ---------------------------------------------------------------------


def world_create() -> str:
    """An active organization with an owner and a read key; returns the key."""
    from apps.accounts.models import User
    from apps.tenancy import identity
    from apps.tenancy.audit import Actor
    from apps.tenancy.services import organization_create, organization_provision

    owner = User.objects.create_user("owner@bench.test", "bench-password-not-secret")
    organization = organization_create(name="Bench", slug="bench", created_by=owner, provision_async=False)
    organization_provision(organization_id=organization.pk)
    _, raw = identity.api_key_create(
        actor=Actor(user=owner), organization=organization, name="bench", scopes=["organization:read"]
    )
    return raw


# (b) in-process --------------------------------------------------------------


def resolutions(raw: str, count: int, *, cached: bool) -> list[float]:
    """Microseconds per key_check, the connection already open (as in a warm worker):
    through the per-process cache of verified keys, or always from the database."""
    from django.test import override_settings

    from apps.tenancy.api_keys import _verified, key_check

    _verified.clear()
    with override_settings(API_KEY_CACHE_SECONDS=60 if cached else 0):
        return _resolutions(key_check, raw, count)


def _resolutions(key_check: Any, raw: str, count: int) -> list[float]:
    for _ in range(50):  # warm up: connection, query plan, caches
        key_check(raw)
    timings = []
    for _ in range(count):
        started = time.perf_counter_ns()
        check = key_check(raw)
        timings.append((time.perf_counter_ns() - started) / 1000)
        if check.api_key is None:
            raise RuntimeError(f"the bench key was refused: {check.error_code}")
    return timings


def queries_per_request(raw: str) -> list[str]:
    """The SQL one warm API request runs, in order."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client(HTTP_HOST="localhost", HTTP_AUTHORIZATION=f"Bearer {raw}")
    for _ in range(3):  # past key_touch's first write and the first SET search_path
        if client.get(PATH).status_code != 200:
            raise RuntimeError("the bench request failed in-process")
    with CaptureQueriesContext(connection) as captured:
        response = client.get(PATH)
    if response.status_code != 200:
        raise RuntimeError("the bench request failed in-process")
    return [query["sql"] for query in captured.captured_queries]


# (a) the server --------------------------------------------------------------


SERVERS = {
    # What serves plain HTTP in production (docker/compose.yaml's web).
    "gunicorn": "gunicorn (WSGI, gthread x4)",
    # What serves the WebSockets, and everything under `make run`.
    "uvicorn": "uvicorn (ASGI)",
}


def server_command(kind: str, port: int, workers: int) -> list[str]:
    if kind == "gunicorn":
        return [
            sys.executable, "-m", "gunicorn", "config.wsgi:application",
            "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
            "--worker-class", "gthread", "--threads", "4", "--log-level", "warning",
        ]  # fmt: skip
    return [
        sys.executable, "-m", "uvicorn", "config.asgi:application",
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        "--no-access-log", "--log-level", "warning", "--lifespan", "off",
    ]  # fmt: skip


@contextlib.contextmanager
def server(env: dict[str, str], port: int, workers: int, kind: str) -> Iterator[subprocess.Popen[bytes]]:
    command = server_command(kind, port, workers)
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def request_bytes(port: int, raw: str) -> bytes:
    return (
        f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {raw}\r\nAccept: application/json\r\n\r\n"
    ).encode()


async def _one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    match = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    if match is None:
        raise RuntimeError("the server answered without Content-Length")
    await reader.readexactly(int(match.group(1)))
    return status


def wait_until_serving(port: int, raw: str, timeout: float = 60.0) -> None:
    async def probe() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await _one(reader, writer, request_bytes(port, raw))
        finally:
            writer.close()

    deadline = time.monotonic() + timeout
    while True:
        try:
            status = asyncio.run(probe())
            if status == 200:
                return
            raise RuntimeError(f"the server answered {status} to the bench request")
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start") from None
            time.sleep(0.2)


def load_python(port: int, raw: str, seconds: float, connections: int) -> LoadResult:
    """Closed loop: each connection sends its next request when the last one is answered."""
    request = request_bytes(port, raw)
    latencies: list[float] = []
    errors = 0

    async def client(stop_at: float) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                status = await _one(reader, writer, request)
                latencies.append((time.perf_counter() - started) * 1000)
                if status != 200:
                    errors += 1
        finally:
            writer.close()

    async def run() -> float:
        started = time.perf_counter()
        await asyncio.gather(*(client(started + seconds) for _ in range(connections)))
        return time.perf_counter() - started

    elapsed = asyncio.run(run())
    return LoadResult(
        driver="python asyncio (wrk not installed)",
        requests=len(latencies),
        seconds=elapsed,
        p50_ms=statistics.median(latencies),
        p99_ms=percentile(latencies, 0.99),
        errors=errors,
    )


def _wrk_ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def load_wrk(wrk: str, port: int, raw: str, seconds: float, connections: int) -> LoadResult:
    command = [
        wrk, "--latency", "-t", "2", "-c", str(connections), "-d", f"{int(seconds)}s",
        "-H", f"Authorization: Bearer {raw}", f"http://127.0.0.1:{port}{PATH}",
    ]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    requests = int(re.search(r"(\d+) requests in ([\d.]+)(\w+)", output).group(1))  # type: ignore[union-attr]
    duration = re.search(r"requests in ([\d.]+)(us|ms|s|m)", output)
    assert duration is not None
    elapsed = float(duration.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[duration.group(2)]
    p50 = re.search(r"^\s*50%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s*99%\s+(\S+)", output, re.MULTILINE)
    if p50 is None or p99 is None:
        raise RuntimeError(f"could not read wrk's latency distribution:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    errors = int(non_2xx.group(1)) if non_2xx else 0
    if socket_errors:
        errors += sum(int(value) for value in socket_errors.groups())
    return LoadResult(
        driver="wrk, 2 threads",
        requests=requests,
        seconds=elapsed,
        p50_ms=_wrk_ms(p50.group(1)),
        p99_ms=_wrk_ms(p99.group(1)),
        errors=errors,
    )


# Report ---------------------------------------------------------------------


def met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def table(
    loads: dict[str, LoadResult],
    workers: int,
    connections: int,
    timings: dict[str, list[float]],
    queries: list[str],
) -> str:
    drivers = sorted({load.driver for load in loads.values()})
    lines = [
        f"API: GET {PATH} with an API key, {workers} worker processes, DEBUG off,"
        f" {connections} connections, {os.cpu_count()} CPUs",
        f"load from: {', '.join(drivers)}",
        "",
        f"{'server':<28}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>9}   goal",
    ]
    for kind, load in loads.items():
        lines.append(
            f"{SERVERS[kind]:<28}{load.rps:>10.0f}{load.p50_ms:>10.2f}{load.p99_ms:>10.2f}"
            f"{load.errors:>9}   >= {GOAL_RPS:.0f} req/s {met(load.rps >= GOAL_RPS)},"
            f" p99 <= {GOAL_P99_MS:.0f} ms {met(load.p99_ms <= GOAL_P99_MS)}"
        )
    if {"gunicorn", "uvicorn"} <= set(loads):
        ratio = loads["gunicorn"].rps / loads["uvicorn"].rps
        lines.append(f"{'gunicorn / uvicorn':<28}{ratio:>9.2f}x")
    lines += [
        "",
        f"{'key -> organization':<28}{'calls':>10}{'p50 us':>10}{'p99 us':>10}{'':>9}   goal",
    ]
    for label, samples in timings.items():
        p50_us, p99_us = statistics.median(samples), percentile(samples, 0.99)
        lines.append(
            f"{label:<28}{len(samples):>10}{p50_us:>10.0f}{p99_us:>10.0f}{'':>9}"
            f"   p50 <= {GOAL_RESOLUTION_P50_US:.0f} us {met(p50_us <= GOAL_RESOLUTION_P50_US)}"
        )
    lines += [
        "",
        f"SQL queries per warm API request: {len(queries)}",
    ]
    lines += [f"  {sql[:150]}" for sql in queries]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="how long the load runs")
    parser.add_argument("--connections", type=int, default=32, help="concurrent keep-alive clients")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--resolutions", type=int, default=5000, help="key_check calls to time")
    parser.add_argument("--driver", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--server", choices=[*SERVERS, "both"], default="both")
    parser.add_argument("--keep", action="store_true", help=f"leave the {BENCH_DATABASE} database behind")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.connections < 1 or args.workers < 1 or args.resolutions < 1:
        parser.error("--seconds, --connections, --workers and --resolutions must be positive")

    server_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    redis_url = redis_url_for_bench(os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL)
    database_recreate(server_url, BENCH_DATABASE)
    overrides = {
        "DATABASE_URL": database_url(server_url, BENCH_DATABASE),
        "REDIS_URL": redis_url,
        "DJANGO_SETTINGS_MODULE": "config.settings.dev",
        "DEBUG": "false",
        "LOG_LEVEL": "WARNING",
        # The throttle stays on (its Redis round trip is part of every request), far above the load.
        "API_RATE_LIMIT": "100000000/min",
    }
    # Django reads these once, at setup: they must be in place before it; the server gets the same.
    os.environ.update(overrides)
    env = dict(os.environ)
    try:
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connections

        with quiet():
            call_command("migrate", interactive=False, verbosity=0)
        raw = world_create()
        timings = {
            "key_check, from the database": resolutions(raw, args.resolutions, cached=False),
            "key_check, verified cache": resolutions(raw, args.resolutions, cached=True),
        }
        queries = queries_per_request(raw)
        connections.close_all()

        wrk = shutil.which("wrk") if args.driver in {"auto", "wrk"} else None
        if wrk is None and args.driver == "wrk":
            parser.error("--driver wrk: wrk is not installed")
        if wrk is None and args.driver == "auto":
            progress("bench: wrk is not installed (apt-get install wrk); using the Python asyncio driver")
        loads = {}
        for kind in SERVERS if args.server == "both" else [args.server]:
            port = free_port()
            progress(f"bench: {kind}, {args.workers} workers, port {port}; {args.seconds:.0f} s of load")
            with server(env, port, args.workers, kind):
                wait_until_serving(port, raw)
                # Warm every worker: connections to PostgreSQL and Redis, imports, URL resolvers.
                load_python(port, raw, 3.0, args.connections)
                if wrk is not None:
                    loads[kind] = load_wrk(wrk, port, raw, args.seconds, args.connections)
                else:
                    loads[kind] = load_python(port, raw, args.seconds, args.connections)
        print(table(loads, args.workers, args.connections, timings, queries))
    finally:
        if not args.keep:
            database_recreate(server_url, BENCH_DATABASE, create=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
