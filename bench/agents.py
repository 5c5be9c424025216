"""The agents' run engine, by named section, each printing a table.

    python -m bench.agents [--section NAME ...] [--runs 5] [--steps 40] [--clients 200]
                           [--rate 2,20] [--seconds 10] [--levels 1,2,4,8,16,32] [--keep]

Everything is real but the model: runs go through run_create and the agent pool, a
Celery worker (a process of its own) drives their steps, commands run in bwrap
sandboxes on a runtime this script starts, the model is the loopback OpenAI fake
(tests/fakes) reached through the organization's own OpenAI credential, and each run
is answered `bash` with the command `true` a fixed number of times, then `finish`.

Sections (all by default, in this order):
  step-overhead   The platform's time per step: the step's wall time (previous
                  observation stored -> this step's observation stored) less the model
                  call (the action's model_ms, the provider call as the gateway timed it)
                  less the command's run in the sandbox (the runtime's duration_seconds).
                  Zero-delay model, one run at a time, a worker as `make run` starts it
                  (prefork, 2 processes). Goal p50 <= 10 ms. Split: the hand-off to the
                  next step up to the model request's arrival at the fake (commit, Celery,
                  lock, context), the answer until the action is stored, the tool's
                  plumbing around the sandbox (gRPC, checks, usage counts) and the rest
                  until the observation is stored.
  event-latency   An event persisted (event_append, this process) until a browser
                  WebSocket client holds it: --clients sockets watching one run over
                  /ws/runs/<id>/ on uvicorn (config.asgi, as `make run` serves it), in a
                  process of their own; events at steady rates (2/s: a run stepping every
                  second; 20/s: a burst). Latency = the frame's arrival - the event's
                  created_at, one machine clock. Goal p99 <= 50 ms.
  runs-in-flight  The same steps with a model that answers after 1 s, --levels runs in
                  flight at once (a closed loop: a run that ends is replaced until the
                  level has its samples): step overhead p50/p99 per level, and where p50
                  first reaches twice the one-run figure. The pool's and the gateway's
                  per-organization caps are lifted (one organization holds every run).
                  The worker is prefork with a process per run in flight and one spare
                  (a step holds its process while the model thinks), started afresh and
                  warmed for each level.
                  It stops at the level where p50 doubled (--all-levels goes on). Each
                  run in flight holds a PostgreSQL connection: 64 would take most of a
                  default server's 100. --flight-pool threads, to compare: as things
                  stand some runs' steps hang under it, never finishing, so levels end
                  at --level-timeout.

Runs against its own database, agentyard_bench_agents, on the PostgreSQL server named by
DATABASE_URL (created afresh, dropped at the end unless --keep), Redis database 11 of
REDIS_URL's server, its own Celery queue, and a runtime and knowledge index in a
temporary directory, removed at the end. Two loaded cores: about 6 minutes.

A new section is a function taking the Bench and the parsed options and returning its
table as text, added to SECTIONS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.provisioning import DEFAULT_DATABASE_URL, database_recreate, database_url, progress, quiet
from bench.terminal import free_port, runtime, web_server

ROOT = Path(__file__).resolve().parent.parent
BENCH_DATABASE = "agentyard_bench_agents"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
BENCH_REDIS_DB = 11
QUEUE = "agentyard-bench-agents"
SLUG = "benchagents"
MODEL = "gpt-4o-mini"
GOAL_OVERHEAD_P50_MS = 10.0
GOAL_EVENT_P99_MS = 50.0
# Caps that would otherwise decide the runs-in-flight figure: the pool's size and an
# organization's share of it, and the gateway's concurrent calls per provider and per
# organization. The bench measures what the machine carries, not the quotas.
UNCAPPED = "4096"
RUN_MARKER = re.compile(r"bench-run ([0-9a-f]{12})")


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(row[column])) for row in [header, *rows]) for column in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * width for width in widths))
    for row in rows:
        lines.append(
            "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return "\n".join(lines)


def met(value: float, goal: float) -> str:
    return "met" if value <= goal else "MISSED"


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (a prefork worker's pool), MiB."""
    total = 0.0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:
            continue
        if int(fields.get("Pid", "0")) == pid or int(fields.get("PPid", "0")) == pid:
            total += float(fields.get("VmRSS", "0 kB").split()[0]) / 1024
    return total


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [float(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


# The model --------------------------------------------------------------------------------------


def model_fake(*, bash_steps: int, delay: float) -> Any:
    """The OpenAI fake answering each run by its conversation: `bash` `true` while the run
    has had fewer than `bash_steps` tool results, then `finish`; every answer after `delay`
    seconds. It notes when each run's request for each step arrived."""
    from tests.fakes.llm_fake import RecordedRequest, Reply
    from tests.fakes.openai_server import FakeOpenAI

    class AgentModel(FakeOpenAI):
        def __init__(self) -> None:
            super().__init__()
            self.record = False  # thousands of requests; what is needed is in `arrivals`
            self.bash_steps = bash_steps
            self.delay = delay
            # (run marker, step number) -> time.time() when the request had arrived
            self.arrivals: dict[tuple[str, int], float] = {}

        def next_reply(self, request: RecordedRequest) -> Reply | None:
            arrived = time.time()
            if self.endpoint_of(request) != "chat":
                return super().next_reply(request)
            messages = request.json.get("messages") or []
            done = sum(1 for message in messages if message.get("role") == "tool")
            found = RUN_MARKER.search(json.dumps(messages[:2]))
            if found:
                with self.lock:
                    self.arrivals[(found.group(1), done + 1)] = arrived
            if done < self.bash_steps:
                return Reply.tool("bash", {"command": "true"}, delay=self.delay)
            return Reply.tool("finish", {"answer": "Ran true."}, delay=self.delay)

    fake = AgentModel()
    fake.start()
    return fake


# Set-up -----------------------------------------------------------------------------------------


@dataclass
class Bench:
    env: dict[str, str]
    work: Path
    runtime_address: str
    runtime_secret: str
    schema: str = ""
    organization: Any = None
    owner: Any = None
    workspaces: list[Any] = field(default_factory=list)
    fake: Any = None
    profile: Any = None

    def actor(self) -> Any:
        from apps.tenancy.audit import Actor

        return Actor(user=self.owner)


def world_create(bench: Bench, workspaces: int) -> None:
    """The organization, its owner, `workspaces` running workspaces."""
    from django_tenants.utils import schema_context

    from apps.accounts.models import User
    from apps.tenancy.services import organization_create, organization_provision
    from apps.workspaces.services import workspace_create

    bench.owner = User.objects.create_user(f"owner@{SLUG}.test", "bench-password-not-secret")
    organization = organization_create(
        name="Bench agents", slug=SLUG, created_by=bench.owner, provision_async=False
    )
    organization_provision(organization_id=organization.pk)
    organization.refresh_from_db()
    bench.organization, bench.schema = organization, organization.schema_name
    with schema_context(bench.schema):
        for index in range(workspaces):
            bench.workspaces.append(
                workspace_create(
                    actor=bench.actor(),
                    organization=organization,
                    name=f"bench-{index}",
                    memory_mb=256,
                    disk_mb=64,
                )
            )


def model_connect(bench: Bench, *, bash_steps: int, delay: float, max_steps: int) -> None:
    """A fresh fake for the section, the organization's OpenAI credential on it, and a
    profile with the step budget the section needs."""
    from django_tenants.utils import schema_context

    from apps.agents import services
    from apps.llm.gateway import gateway_reset
    from apps.llm.services import credential_set

    if bench.fake is not None:
        bench.fake.stop()
    bench.fake = model_fake(bash_steps=bash_steps, delay=delay)
    credential_set(
        organization=bench.organization,
        provider="openai",
        api_key="sk-bench-agents",
        base_url=bench.fake.base_url,
        actor=bench.actor(),
    )
    gateway_reset()
    with schema_context(bench.schema):
        bench.profile = services.profile_create(
            actor=bench.actor(),
            organization=bench.organization,
            name=f"bench-{uuid.uuid4().hex[:8]}",
            model=MODEL,
            max_steps=max_steps,
            max_seconds=3600,
        )


@contextlib.contextmanager
def celery_worker(bench: Bench, *, pool: str, concurrency: int) -> Iterator[subprocess.Popen[bytes]]:
    """A real `celery worker` on the bench's queue; started once its heartbeat shows."""
    from apps.core.heartbeat import heartbeats_read

    hostname = f"bench-agents-{uuid.uuid4().hex[:6]}@localhost"
    log_path = bench.work / f"worker-{pool}-{concurrency}.log"
    log = log_path.open("ab")
    command = [
        sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel=WARNING",
        f"--pool={pool}", f"--concurrency={concurrency}", "-Q", QUEUE, "--hostname", hostname,
        "--without-mingle", "--without-gossip",
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, env=bench.env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        deadline = time.monotonic() + 90
        while not any(beat.get("hostname") == hostname for beat in heartbeats_read()):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Celery worker did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_start(bench: Bench, workspace: Any) -> tuple[str, str]:
    """A run through the real service (the pool starts it); its id and marker."""
    from django_tenants.utils import schema_context

    from apps.agents import services

    marker = uuid.uuid4().hex[:12]
    with schema_context(bench.schema):
        run = services.run_create(
            actor=bench.actor(),
            organization=bench.organization,
            workspace=workspace,
            task=f"bench-run {marker}: run `true` until told to finish.",
            profile=bench.profile,
        )
    return str(run.pk), marker


def run_states(bench: Bench, run_ids: Sequence[str]) -> dict[str, str]:
    from django_tenants.utils import schema_context

    from apps.agents.models import AgentRun

    with schema_context(bench.schema):
        return {
            str(pk): state for pk, state in AgentRun.objects.filter(pk__in=run_ids).values_list("pk", "state")
        }


def runs_wait(bench: Bench, run_ids: Sequence[str], timeout: float) -> dict[str, str]:
    from apps.agents.models import AgentRun

    deadline = time.monotonic() + timeout
    while True:
        states = run_states(bench, run_ids)
        if all(state in AgentRun.FINISHED for state in states.values()) or time.monotonic() > deadline:
            return states
        time.sleep(0.2)


# Step overhead from a run's events --------------------------------------------------------------


@dataclass
class Step:
    """One `bash true` step, in ms. overhead = total - model - exec, and the four parts of
    the split add up to it."""

    total: float
    model: float
    exec: float
    handoff: float  # previous observation stored -> the model request arrives at the fake
    answer: float  # the model's answer -> the action stored (the request's sending included)
    plumbing: float  # the tool's call less the command's run in the sandbox
    rest: float  # action stored -> observation stored, less the tool's call

    @property
    def overhead(self) -> float:
        return self.total - self.model - self.exec


def steps_of(bench: Bench, run_id: str, marker: str) -> list[Step]:
    """Steps 2.. of a run that ran `true`: the first step also gathers the environment's facts
    and preloads knowledge, once per run; the last, `finish`, also takes the final diff."""
    from django_tenants.utils import schema_context

    from apps.agents.models import Event

    with schema_context(bench.schema):
        events = list(
            Event.objects.filter(
                run_id=uuid.UUID(run_id), kind__in=[Event.Kind.ACTION, Event.Kind.OBSERVATION]
            )
            .order_by("seq")
            .values_list("kind", "step", "payload", "created_at")
        )
    actions = {step: (payload, at.timestamp()) for kind, step, payload, at in events if kind == "action"}
    observations = {
        step: (payload, at.timestamp()) for kind, step, payload, at in events if kind == "observation"
    }
    found = []
    for number in sorted(observations):
        if number < 2 or number - 1 not in observations or number not in actions:
            continue
        action, acted_at = actions[number]
        observation, observed_at = observations[number]
        data = observation.get("data") or {}
        if action.get("tool") != "bash" or data.get("exit_code") != 0 or "tool_ms" not in data:
            continue
        arrived = bench.fake.arrivals.get((marker, number))
        if arrived is None:
            continue
        previous_at = observations[number - 1][1]
        model = float(action.get("model_ms") or 0.0)
        tool = float(data["tool_ms"])
        exec_ms = float(data.get("duration_seconds") or 0.0) * 1000
        found.append(
            Step(
                total=(observed_at - previous_at) * 1000,
                model=model,
                exec=exec_ms,
                handoff=(arrived - previous_at) * 1000,
                answer=(acted_at - arrived) * 1000 - model,
                plumbing=tool - exec_ms,
                rest=(observed_at - acted_at) * 1000 - tool,
            )
        )
    return found


def exec_reference(bench: Bench, count: int = 40) -> tuple[float, float]:
    """`true` alone through workspace_exec, no shell wrapper: p50 of the call and of the
    runtime's own time, in ms (what the bash tool's session keeping adds shows beside it)."""
    from django_tenants.utils import schema_context

    from apps.workspaces.services import workspace_exec

    calls, runs = [], []
    with schema_context(bench.schema):
        for _ in range(count):
            started = time.perf_counter()
            outcome = workspace_exec(actor=bench.actor(), workspace=bench.workspaces[0], argv=["true"])
            calls.append((time.perf_counter() - started) * 1000)
            runs.append(outcome.duration_seconds * 1000)
    return median(calls), median(runs)


# Section: step overhead -------------------------------------------------------------------------


def step_overhead(bench: Bench, options: argparse.Namespace) -> str:
    bash_steps = options.steps - 1
    model_connect(bench, bash_steps=bash_steps, delay=0.0, max_steps=options.steps + 5)
    samples: list[Step] = []
    failed = 0
    with celery_worker(bench, pool="prefork", concurrency=2):
        progress(f"bench: step-overhead, {options.runs} runs of {options.steps} steps one after another")
        for index in range(options.runs):
            run_id, marker = run_start(bench, bench.workspaces[0])
            state = runs_wait(bench, [run_id], timeout=60 + options.steps * 5)[run_id]
            if state != "succeeded":
                failed += 1
                progress(f"bench: run {index + 1} ended {state}")
            samples += steps_of(bench, run_id, marker)
    if not samples:
        raise RuntimeError("no step was measured; see the worker's log in the bench's directory")
    call_ms, run_ms = exec_reference(bench)
    overhead = [step.overhead for step in samples]
    p50 = median(overhead)
    rows = [
        [
            "platform overhead per step",
            f"{p50:.2f}",
            f"{percentile(overhead, 0.99):.2f}",
            f"p50 <= {GOAL_OVERHEAD_P50_MS:.0f} ms {met(p50, GOAL_OVERHEAD_P50_MS)}",
        ],
        ["", "", "", ""],
    ]
    parts: list[tuple[str, Callable[[Step], float]]] = [
        ("  hand-off: stored -> next model request", lambda step: step.handoff),
        ("  model answer -> action stored", lambda step: step.answer),
        ("  tool plumbing (gRPC, checks, counts)", lambda step: step.plumbing),
        ("  action stored -> observation stored", lambda step: step.rest),
        ("excluded: model call (model_ms)", lambda step: step.model),
        ("excluded: `true` in the sandbox (shell kept)", lambda step: step.exec),
        ("the step's wall time", lambda step: step.total),
    ]
    for label, part in parts:
        values = [part(step) for step in samples]
        rows.append([label, f"{median(values):.2f}", f"{percentile(values, 0.99):.2f}", ""])
    rows.append(
        ["reference: workspace_exec(['true']) call", f"{call_ms:.2f}", "", f"(runtime's own {run_ms:.2f})"]
    )
    header = (
        f"Step overhead: {len(samples)} `bash true` steps (steps 2..{bash_steps} of {options.runs} runs;"
        f" {failed} runs did not succeed), zero-delay model, prefork worker of 2; {os.cpu_count()} CPUs,"
        f" load {os.getloadavg()[0]:.1f}. The split's parts are p50s each and need not add up to the total's."
    )
    return header + "\n\n" + table(rows, ["per step", "p50 ms", "p99 ms", "goal"])


# Section: event latency -------------------------------------------------------------------------


def session_cookie(bench: Bench) -> str:
    from django.test import Client

    client = Client()
    client.force_login(bench.owner)
    return f"sessionid={client.cookies['sessionid'].value}"


class ClientsProcess:
    """The watching browsers: `count` WebSockets in a process of their own (ws_child)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.agents", "--ws-child", json.dumps(config)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def line(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the clients' process ended; see its error output above")
        return line.strip()

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def ws_child(config_text: str) -> None:
    """Runs in its own process: connects the sockets, says `ready` once each has caught up,
    and notes each event frame's arrival. Commands on stdin: `wait <seq>`: until every socket
    has that seq (10 s at most), then `caught <sockets still short>`; `quit`: the sockets
    close, {"clients": [[[seq, time], ...], ...]} goes to config's out path, `results`."""
    from websockets.asyncio.client import ClientConnection, connect

    config = json.loads(config_text)
    received: list[list[tuple[float, str]]] = [[] for _ in range(config["clients"])]
    highest = [0] * config["clients"]
    # Handshakes at a time: each one reads the database and joins the run's group.
    gate = asyncio.Semaphore(20)

    async def watch(index: int, ready: asyncio.Event, caught_up: list[int], stop: asyncio.Event) -> None:
        async with gate:
            socket: ClientConnection = await connect(
                config["url"],
                host="127.0.0.1",
                port=config["port"],
                additional_headers={"Cookie": config["cookie"]},
                origin=config["origin"],
                open_timeout=60,
                max_size=None,
            )
        frames = received[index]

        async def read() -> None:
            async for frame in socket:
                arrived = time.time()
                text = str(frame)
                if text.startswith('{"type": "event"'):
                    frames.append((arrived, text))
                elif text.startswith('{"type": "caught_up"'):
                    caught_up[0] += 1
                    if caught_up[0] == config["clients"]:
                        ready.set()

        reader = asyncio.create_task(read())
        await stop.wait()
        reader.cancel()
        # Spread over two seconds: 200 sockets closing at once make the server's 200
        # group_discard calls overrun its Redis connection pool (100, raising when full).
        await asyncio.sleep(index * 0.01)
        await socket.close()

    def short_of(last: int) -> int:
        for index, frames in enumerate(received):
            if frames and highest[index] < last:
                highest[index] = json.loads(frames[-1][1])["event"]["seq"]
        return sum(1 for seq in highest if seq < last)

    async def main() -> None:
        ready, stop = asyncio.Event(), asyncio.Event()
        caught_up = [0]
        tasks = [
            asyncio.create_task(watch(index, ready, caught_up, stop)) for index in range(config["clients"])
        ]
        waiter = asyncio.create_task(ready.wait())
        done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED, timeout=120)
        if waiter not in done:
            for task in done:
                task.result()  # a socket that failed says why
            raise RuntimeError(f"only {caught_up[0]} of {config['clients']} sockets caught up")
        print("ready", flush=True)
        while True:
            command = (await asyncio.to_thread(sys.stdin.readline)).split()
            if not command or command[0] == "quit":
                break
            last = int(command[1])
            deadline = time.monotonic() + 10
            while short_of(last) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            print(f"caught {short_of(last)}", flush=True)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        clients = [
            [[json.loads(text)["event"]["seq"], arrived] for arrived, text in frames] for frames in received
        ]
        Path(config["out"]).write_text(json.dumps({"clients": clients}))
        print("results", flush=True)

    asyncio.run(main())


def events_append(bench: Bench, run: Any, *, count: int, rate: float, first_step: int) -> list[float]:
    """`count` observation events at `rate` a second; each append's ms."""
    from django_tenants.utils import schema_context

    from apps.agents.events import event_append
    from apps.agents.models import Event

    append_ms = []
    started = time.monotonic()
    with schema_context(bench.schema):
        for index in range(count):
            pause = started + index / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            step = first_step + index
            began = time.perf_counter()
            event_append(
                run=run,
                kind=Event.Kind.OBSERVATION,
                step=step,
                # What a short command's observation looks like.
                payload={
                    "tool": "bash",
                    "call_id": f"call-{step}",
                    "output": f"step {step}: " + "ok " * 60 + "\n[exit code 0; working directory /workspace]",
                    "error": False,
                    "data": {"exit_code": 0, "timed_out": False, "duration_seconds": 0.004, "tool_ms": 9.5},
                },
            )
            append_ms.append((time.perf_counter() - began) * 1000)
    return append_ms


def event_latency(bench: Bench, options: argparse.Namespace) -> str:
    from django_tenants.utils import schema_context

    from apps.agents.models import AgentRun, Event

    with schema_context(bench.schema):
        run = AgentRun.objects.create(
            task="bench: a run many people watch",
            workspace=bench.workspaces[0],
            state=AgentRun.State.RUNNING,
            created_by_id=bench.owner.pk,
        )
    port = free_port()
    host = f"{SLUG}.localhost:{port}"
    out = bench.work / "ws-results.json"
    # (rate, first seq, last seq, each append's ms, sockets short of the last one)
    phases: list[tuple[float, int, int, list[float], int]] = []
    with web_server(bench.env, port):
        progress(f"bench: event-latency, {options.clients} sockets watching one run")
        clients = ClientsProcess(
            {
                "clients": options.clients,
                "url": f"ws://{host}/ws/runs/{run.pk}/?after=0",
                "port": port,
                "cookie": session_cookie(bench),
                "origin": f"http://{host}",
                "out": str(out),
            }
        )
        try:
            if clients.line() != "ready":
                raise RuntimeError("the clients' process did not get ready")
            seq = 0
            for rate in options.rate:
                count = max(1, round(rate * options.seconds))
                progress(f"bench: {count} events at {rate:g}/s")
                append_ms = events_append(bench, run, count=count, rate=rate, first_step=seq + 1)
                clients.send(f"wait {seq + count}")
                short = int(clients.line().split()[1])
                phases.append((rate, seq + 1, seq + count, append_ms, short))
                seq += count
            clients.send("quit")
            if clients.line() != "results":
                raise RuntimeError("the clients' process did not report")
        finally:
            clients.close()
        with schema_context(bench.schema):
            created = {
                seq: at.timestamp()
                for seq, at in Event.objects.filter(run_id=run.pk).values_list("seq", "created_at")
            }
    deliveries = json.loads(out.read_text())["clients"]

    def row(label: str, values: Sequence[float], goal: str = "") -> list[str]:
        if not values:
            return [label, "0", "", "", "", "", goal]
        return [
            label,
            str(len(values)),
            f"{median(values):.2f}",
            f"{percentile(values, 0.95):.2f}",
            f"{percentile(values, 0.99):.2f}",
            f"{max(values):.2f}",
            goal,
        ]

    rows = []
    lost_notes = []
    for rate, first_seq, last_seq, append_ms, short in phases:
        latencies: list[float] = []
        first: dict[int, float] = {}
        for frames in deliveries:
            for seq, arrived in frames:
                if first_seq <= seq <= last_seq:
                    latency = (arrived - created[seq]) * 1000
                    latencies.append(latency)
                    first[seq] = min(first.get(seq, latency), latency)
        count = last_seq - first_seq + 1
        lost = options.clients * count - len(latencies)
        lost_notes.append(f"{rate:g}/s: {lost} lost, {short} sockets short after 10 s")
        p99 = percentile(latencies, 0.99) if latencies else float("inf")
        rows += [
            row(
                f"{rate:g} events/s: every delivery ({options.clients} sockets)",
                latencies,
                f"p99 <= {GOAL_EVENT_P99_MS:.0f} ms {met(p99, GOAL_EVENT_P99_MS)}",
            ),
            row(f"{rate:g} events/s: the first socket to get each", list(first.values())),
            row(f"{rate:g} events/s: writer's event_append", append_ms),
        ]
    header = (
        f"Event persisted -> received by a browser WebSocket: {options.clients} sockets on one run"
        f" (uvicorn, one process, as `make run`), {options.seconds:g} s of events per rate"
        f" ({'; '.join(lost_notes)}); {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    )
    return header + "\n\n" + table(rows, ["latency", "count", "p50 ms", "p95 ms", "p99 ms", "max ms", "goal"])


# Section: runs in flight ------------------------------------------------------------------------


@dataclass
class Level:
    runs_in_flight: int
    runs: int
    failed: int
    samples: list[Step]
    steps: int  # every step of the level's runs, measured or not
    seconds: float
    cpu_busy: float  # the machine's, 0..1, over the level
    worker_rss_mib: float = 0.0

    @property
    def p50(self) -> float:
        return median([step.overhead for step in self.samples])


def flight_level(bench: Bench, level: int, options: argparse.Namespace, runs: int | None = None) -> Level:
    """`level` runs in flight until `runs` have run (a run that ends is replaced), started
    spread over one model delay so their steps do not move in lockstep."""
    from django_tenants.utils import schema_context

    from apps.agents.models import AgentRun

    if runs is None:
        runs = max(level, math.ceil(options.flight_samples / max(1, options.flight_steps - 2)))
    spacing = options.model_delay / level
    busy_before, total_before = cpu_times()
    started = time.monotonic()
    active: dict[str, str] = {}
    everything: dict[str, str] = {}
    launched = 0
    next_launch = started
    deadline = started + options.level_timeout
    while (launched < runs or active) and time.monotonic() < deadline:
        while launched < runs and len(active) < level and time.monotonic() >= next_launch:
            run_id, marker = run_start(bench, bench.workspaces[launched % len(bench.workspaces)])
            active[run_id] = everything[run_id] = marker
            launched += 1
            next_launch = time.monotonic() + (spacing if launched < level else 0.0)
        time.sleep(0.1)
        if active:
            for run_id, state in run_states(bench, list(active)).items():
                if state in AgentRun.FINISHED:
                    del active[run_id]
    seconds = time.monotonic() - started
    busy_after, total_after = cpu_times()
    states = run_states(bench, list(everything))
    if active:
        progress(f"bench: {len(active)} runs still going after {options.level_timeout:g} s; cancelling them")
        runs_cancel(bench, list(active))
    samples = [step for run_id, marker in everything.items() for step in steps_of(bench, run_id, marker)]
    with schema_context(bench.schema):
        steps = sum(AgentRun.objects.filter(pk__in=list(everything)).values_list("steps", flat=True))
    return Level(
        runs_in_flight=level,
        runs=len(everything),
        failed=sum(1 for state in states.values() if state != "succeeded"),
        samples=samples,
        steps=steps,
        seconds=seconds,
        cpu_busy=(busy_after - busy_before) / max(1.0, total_after - total_before),
    )


def runs_cancel(bench: Bench, run_ids: Sequence[str]) -> None:
    from django_tenants.utils import schema_context

    from apps.agents import services
    from apps.agents.models import AgentRun
    from apps.core.errors import ServiceError

    with schema_context(bench.schema):
        for run in AgentRun.objects.filter(pk__in=run_ids):
            with contextlib.suppress(ServiceError):
                services.run_cancel(actor=bench.actor(), organization=bench.organization, run=run)


def runs_in_flight(bench: Bench, options: argparse.Namespace) -> str:
    bash_steps = options.flight_steps - 1
    model_connect(bench, bash_steps=bash_steps, delay=options.model_delay, max_steps=options.flight_steps + 5)
    levels = options.levels
    load_before = os.getloadavg()[0]
    results: list[Level] = []
    doubled_at: int | None = None
    for level in levels:
        # A worker per level, a process per run in flight and one spare (a run's end runs
        # beside the next run's start): memory for this level's runs only.
        concurrency = level + 1
        with celery_worker(bench, pool=options.flight_pool, concurrency=concurrency) as worker:
            # Each process's first step loads what it then keeps (the embedding model, the
            # tools, the prompt templates): paid here, by short runs no level counts.
            progress(f"bench: runs-in-flight, {level} at once (warming {concurrency} processes first)")
            bench.fake.bash_steps = 2
            flight_level(bench, concurrency, options, runs=concurrency)
            bench.fake.bash_steps = bash_steps
            result = flight_level(bench, level, options)
            result.worker_rss_mib = tree_rss_mib(worker.pid)
        results.append(result)
        if result.samples and results[0].samples and result.p50 >= 2 * results[0].p50:
            doubled_at = level
            if not options.all_levels:
                break
    base = results[0].p50
    rows = []
    for result in results:
        overhead = [step.overhead for step in result.samples]
        handoff = [step.handoff for step in result.samples]
        steps_per_second = result.steps / result.seconds if result.seconds else 0.0
        rows.append(
            [
                str(result.runs_in_flight),
                f"{result.runs} ({result.failed})",
                str(len(result.samples)),
                f"{median(overhead):.2f}",
                f"{percentile(overhead, 0.99):.2f}",
                f"{median(overhead) / base:.2f}x" if base else "",
                f"{median(handoff):.2f}",
                f"{steps_per_second:.1f}",
                f"{result.cpu_busy * 100:.0f}%",
                f"{result.worker_rss_mib / 1024:.1f}",
            ]
        )
    verdict = (
        f"step overhead p50 doubled (>= {2 * base:.2f} ms) at {doubled_at} runs in flight"
        if doubled_at is not None
        else f"step overhead p50 did not double up to {results[-1].runs_in_flight} runs in flight"
    )
    header = (
        f"Runs in flight: model answers after {options.model_delay:g} s, {bash_steps} `bash true` steps then"
        f" finish per run (steps 2..{bash_steps} measured), worker --pool={options.flight_pool}"
        f" with a process per run in flight and one spare; {os.cpu_count()} CPUs, load {load_before:.1f}"
        f" before. {verdict}."
    )
    return header + "\n\n" + table(
        rows,
        [
            "in flight", "runs (failed)", "steps", "overhead p50 ms", "p99 ms", "vs 1 run",
            "hand-off p50 ms", "steps/s", "CPU busy", "worker GiB",
        ],
    )  # fmt: skip


SECTIONS: dict[str, Callable[[Bench, argparse.Namespace], str]] = {
    "step-overhead": step_overhead,
    "event-latency": event_latency,
    "runs-in-flight": runs_in_flight,
}


def sandboxes_destroy(bench: Bench) -> None:
    """Loop devices, cgroups and files of the sandboxes go with them, before the runtime stops."""
    from runtime.client import RuntimeClient

    client = RuntimeClient(bench.runtime_address, bench.runtime_secret)
    for workspace in bench.workspaces:
        with contextlib.suppress(Exception):
            client.destroy_sandbox(bench.schema, workspace.sandbox_id)
    client.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.agents", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--section", action="append", choices=list(SECTIONS), help="run only these (repeatable)"
    )
    parser.add_argument("--runs", type=int, default=5, help="step-overhead: runs, one after another")
    parser.add_argument("--steps", type=int, default=40, help="step-overhead: steps per run, finish included")
    parser.add_argument("--clients", type=int, default=200, help="event-latency: sockets watching the run")
    parser.add_argument(
        "--rate",
        type=lambda text: [float(value) for value in text.split(",")],
        default=[2.0, 20.0],
        help="event-latency: events per second, comma-separated, each for --seconds",
    )
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="event-latency: seconds of events per rate"
    )
    parser.add_argument(
        "--levels",
        type=lambda text: [int(value) for value in text.split(",")],
        default=[1, 2, 4, 8, 16, 32],
        help="runs-in-flight: runs at once, comma-separated, the first the baseline",
    )
    parser.add_argument("--all-levels", action="store_true", help="runs-in-flight: go on after it doubled")
    parser.add_argument("--model-delay", type=float, default=1.0, help="runs-in-flight: seconds per answer")
    parser.add_argument(
        "--flight-steps", type=int, default=8, help="runs-in-flight: steps per run, finish included"
    )
    parser.add_argument(
        "--flight-samples", type=int, default=24, help="runs-in-flight: measured steps per level, at least"
    )
    parser.add_argument(
        "--flight-pool",
        choices=["prefork", "threads"],
        default="prefork",
        help="runs-in-flight: the worker's pool, a process or a thread per run in flight",
    )
    parser.add_argument(
        "--flight-workspaces", type=int, default=8, help="runs-in-flight: workspaces shared by the runs"
    )
    parser.add_argument(
        "--level-timeout", type=float, default=120.0, help="runs-in-flight: seconds per level at most"
    )
    parser.add_argument("--keep", action="store_true", help=f"leave the {BENCH_DATABASE} database behind")
    parser.add_argument("--ws-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ws_child:
        ws_child(args.ws_child)
        return 0
    if args.runs < 1 or args.steps < 3 or args.flight_steps < 3 or args.clients < 1 or min(args.rate) <= 0:
        parser.error(
            "--runs and --clients must be positive, --steps and --flight-steps at least 3, --rate > 0"
        )
    if not args.levels or min(args.levels) < 1:
        parser.error("--levels must be positive whole numbers")
    if shutil.which("bwrap") is None:
        parser.error("bubblewrap is not installed (apt-get install bubblewrap): the sandboxes need it")
    sections = args.section or list(SECTIONS)

    server_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    redis_url = (
        urlsplit(os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL)
        ._replace(path=f"/{BENCH_REDIS_DB}")
        .geturl()
    )
    work = Path(tempfile.mkdtemp(prefix="agentyard-bench-agents-"))
    work.chmod(0o755)  # the sandboxes' user must reach the runtime's root inside it
    address = f"127.0.0.1:{free_port()}"
    secret = "bench-agents-" + os.urandom(12).hex()
    workspaces = max(1, args.flight_workspaces if "runs-in-flight" in sections else 1)
    database_recreate(server_url, BENCH_DATABASE)
    os.environ.update(
        {
            "DATABASE_URL": database_url(server_url, BENCH_DATABASE),
            "REDIS_URL": redis_url,
            "CELERY_BROKER_URL": redis_url,
            "CELERY_RESULT_BACKEND": redis_url,
            "CELERY_QUEUE": QUEUE,
            "AGENTS_STEP_QUEUE": "",
            "DJANGO_SETTINGS_MODULE": "config.settings.dev",
            "DEBUG": "false",
            "LOG_LEVEL": "WARNING",
            "RUNTIME_ADDRESS": address,
            "RUNTIME_SECRET": secret,
            "CHROMA_URL": "",
            "KNOWLEDGE_CHROMA_PATH": str(work / "chroma"),
            "WORKSPACES_MAX_PER_ORGANIZATION": str(workspaces + 5),
            "WORKSPACES_MAX_RUNNING_PER_ORGANIZATION": str(workspaces + 5),
            "AGENTS_POOL_SIZE": UNCAPPED,
            "AGENTS_ORG_CONCURRENCY": UNCAPPED,
            "LLM_QUEUE_PROVIDER_CONCURRENCY": UNCAPPED,
            "LLM_QUEUE_ORGANIZATION_CONCURRENCY": UNCAPPED,
            # `true` again and again with the same result is what this bench asks for.
            "AGENTS_STUCK_REPEATS": "0",
        }
    )
    bench = Bench(env=dict(os.environ), work=work, runtime_address=address, runtime_secret=secret)
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
            progress(f"bench: {BENCH_DATABASE} migrated; starting {workspaces} workspaces")
            world_create(bench, workspaces)
            try:
                for name in sections:
                    print(SECTIONS[name](bench, args) + "\n", flush=True)
            finally:
                if bench.fake is not None:
                    bench.fake.stop()
                sandboxes_destroy(bench)
        connections.close_all()
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not args.keep:
            database_recreate(server_url, BENCH_DATABASE, create=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
