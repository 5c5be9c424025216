"""Sandbox start and exec latency through the runtime's gRPC API, as the platform sees it.

    python -m bench.sandbox [--runs 100] [--execs 500] [--levels 0,1,2,4,8,16,32,64] [--backend bwrap]

Starts its own runtime (`python -m runtime`, like the tests) with a fresh RUNTIME_ROOT and
measures from the client (runtime/client.py):

(a) cold start to first output: StartSandbox on a created (stopped) sandbox, then Exec
    `echo ok` until its first stdout bytes arrive; --runs times, each on a new sandbox
    (creating it, and stopping and destroying it afterwards, are not timed). Beside it the
    floor: plain `subprocess.run(["echo", "ok"])` in this process, and the ratio.
(b) exec round trip: Exec `true` on a running sandbox until its exit arrives, --execs times.
(c) concurrent sandboxes: with N sandboxes already running (idle shells, as workspaces
    mostly are), the cold start of (a) measured again; the table gives each N and the
    first level where its p50 is at least twice the p50 with none running.

Goals from the issue: (a) p50 <= 50 ms with bwrap, (b) p50 <= 5 ms.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from runtime.client import RuntimeClient, SandboxSpec
from tests.runtime_server import start_runtime, stop_runtime

TENANT = "org_bench"
GOAL_COLD_START_P50_MS = 50.0
GOAL_EXEC_P50_MS = 5.0


def percentile(samples: Sequence[float], fraction: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Bench:
    def __init__(self, client: RuntimeClient) -> None:
        self.client = client
        self.counter = 0

    def new_sandbox(self) -> str:
        self.counter += 1
        sandbox_id = f"bench-{self.counter}"
        self.client.create_sandbox(SandboxSpec(tenant=TENANT, sandbox_id=sandbox_id))
        return sandbox_id

    def discard(self, sandbox_id: str) -> None:
        self.client.destroy_sandbox(TENANT, sandbox_id)

    def cold_start_ms(self) -> float:
        """One StartSandbox + Exec `echo ok` to its first output, on a fresh sandbox."""
        sandbox_id = self.new_sandbox()
        try:
            started = time.perf_counter()
            self.client.start_sandbox(TENANT, sandbox_id)
            for event in self.client.exec_stream(TENANT, sandbox_id, argv=["echo", "ok"]):
                if isinstance(event, tuple) and event[0] == "stdout":
                    elapsed = time.perf_counter() - started
                    if event[1] != b"ok\n":
                        raise RuntimeError(f"echo ok printed {event[1]!r}")
                    break
            else:
                raise RuntimeError("echo ok printed nothing")
            for _ in self.client.exec_stream(TENANT, sandbox_id, argv=["true"]):
                pass
            return elapsed * 1000
        finally:
            self.discard(sandbox_id)

    def exec_round_trips_ms(self, count: int) -> list[float]:
        sandbox_id = self.new_sandbox()
        try:
            self.client.start_sandbox(TENANT, sandbox_id)
            for _ in range(20):  # warm the channel and the sandbox
                self.client.exec(TENANT, sandbox_id, argv=["true"])
            samples = []
            for _ in range(count):
                started = time.perf_counter()
                result = self.client.exec(TENANT, sandbox_id, argv=["true"])
                samples.append((time.perf_counter() - started) * 1000)
                if result.exit_code != 0:
                    raise RuntimeError(f"true exited {result.exit_code}")
            return samples
        finally:
            self.discard(sandbox_id)


def measure(count: int, sample: Callable[[], float]) -> list[float]:
    return [sample() for _ in range(count)]


def floor_ms(count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        subprocess.run(["echo", "ok"], stdout=subprocess.PIPE, check=True)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def row(name: str, samples: Sequence[float], goal: str = "") -> str:
    p50, p95 = statistics.median(samples), percentile(samples, 0.95)
    return f"{name:<44} {len(samples):>6} {p50:>9.2f} {p95:>9.2f}  {goal}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=100, help="cold starts to time (default 100)")
    parser.add_argument("--execs", type=int, default=500, help="exec round trips to time (default 500)")
    parser.add_argument("--levels", default="0,1,2,4,8,16,32,64", help="running sandboxes per level")
    parser.add_argument("--level-runs", type=int, default=15, help="cold starts timed per level")
    parser.add_argument("--backend", default="bwrap", choices=["bwrap", "docker"])
    args = parser.parse_args(argv)
    levels = sorted({int(level) for level in args.levels.split(",") if level.strip()})

    load_before = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="agentyard-bench-runtime-"))
    progress(f"starting a runtime ({args.backend}) with its own root")
    server = start_runtime(root, backend=args.backend, log_name="bench-runtime.log")
    client = server.client()
    running: list[str] = []
    try:
        health = client.health()
        capabilities = ", ".join(f"{key}={value}" for key, value in sorted(health["capabilities"].items()))
        bench = Bench(client)
        bench.cold_start_ms()  # the first sandbox pays for page cache and imports

        progress(f"(a) {args.runs} cold starts")
        cold = measure(args.runs, bench.cold_start_ms)
        floor = floor_ms(args.runs)
        progress(f"(b) {args.execs} exec round trips")
        execs = bench.exec_round_trips_ms(args.execs)

        progress(f"(c) cold starts with {', '.join(map(str, levels))} sandboxes running")
        by_level: list[tuple[int, list[float]]] = []
        for level in levels:
            while len(running) < level:
                sandbox_id = bench.new_sandbox()
                client.start_sandbox(TENANT, sandbox_id)
                running.append(sandbox_id)
            by_level.append((level, measure(args.level_runs, bench.cold_start_ms)))
            progress(f"    {level} running: p50 {statistics.median(by_level[-1][1]):.1f} ms")
    finally:
        for sandbox_id in running:
            client.destroy_sandbox(TENANT, sandbox_id)
        client.close()
        stop_runtime(server)
        shutil.rmtree(root, ignore_errors=True)

    cold_p50, floor_p50 = statistics.median(cold), statistics.median(floor)
    print()
    print(f"Sandbox runtime over gRPC, backend {args.backend} ({capabilities}); {os.cpu_count()} CPUs,")
    print(f"load average before the run {load_before:.2f}. Latencies in milliseconds, from the client.")
    print()
    print(f"{'measure':<44} {'runs':>6} {'p50':>9} {'p95':>9}  goal")
    print(row("cold start: StartSandbox + Exec `echo ok`", cold, f"p50 <= {GOAL_COLD_START_P50_MS:g} ms"))
    print(row("floor: subprocess.run(['echo', 'ok'])", floor))
    print(f"{'  ratio, cold start / floor (p50)':<44} {'':>6} {cold_p50 / floor_p50:>8.1f}x")
    print(row("exec round trip: Exec `true`", execs, f"p50 <= {GOAL_EXEC_P50_MS:g} ms"))
    verdicts = [
        ("cold start", cold_p50 <= GOAL_COLD_START_P50_MS),
        ("exec round trip", statistics.median(execs) <= GOAL_EXEC_P50_MS),
    ]
    print()
    print("Cold start with N sandboxes already running (idle):")
    print(f"{'running':>8} {'runs':>6} {'p50':>9} {'p95':>9}  vs none")
    baseline = statistics.median(by_level[0][1]) if by_level else 0.0
    doubled_at = None
    for level, samples in by_level:
        p50 = statistics.median(samples)
        factor = p50 / baseline if baseline else 0.0
        if doubled_at is None and level > levels[0] and factor >= 2:
            doubled_at = level
        print(f"{level:>8} {len(samples):>6} {p50:>9.2f} {percentile(samples, 0.95):>9.2f}  {factor:>6.2f}x")
    if doubled_at is None:
        print(f"Start latency did not double up to {levels[-1]} running sandboxes.")
    else:
        print(f"Start latency doubled at {doubled_at} running sandboxes.")
    print()
    for name, met in verdicts:
        print(f"goal {name}: {'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
