"""The runtime's gRPC service, through the real `python -m runtime` process and real sandboxes.

Every call goes over gRPC with the platform's own client (runtime/client.py), as the web
and worker processes make it; tenants are two organizations' schema names.
"""

import asyncio
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from runtime.client import (
    AsyncRuntimeClient,
    InvalidRequest,
    PtyExited,
    PtyOpened,
    RuntimeClient,
    RuntimeServiceError,
    RuntimeUnauthenticated,
    SandboxExists,
    SandboxNotFound,
    SandboxNotRunning,
    SandboxSpec,
)
from runtime.pb import runtime_pb2 as pb
from runtime.pb import runtime_pb2_grpc as pb_grpc
from tests.runtime_server import RuntimeServer, start_runtime, stop_runtime

ALPHA = "org_alpha"
BETA = "org_beta"
MIB = 1024 * 1024


def new_id(prefix: str = "sb") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def client(runtime_server: RuntimeServer) -> Iterator[RuntimeClient]:
    client = runtime_server.client()
    yield client
    client.close()


@pytest.fixture
def sandbox(client: RuntimeClient) -> Iterator[str]:
    """A running sandbox of organization alpha."""
    sandbox_id = new_id()
    client.create_sandbox(SandboxSpec(tenant=ALPHA, sandbox_id=sandbox_id))
    client.start_sandbox(ALPHA, sandbox_id)
    yield sandbox_id
    client.destroy_sandbox(ALPHA, sandbox_id)


# -- authentication -------------------------------------------------------------------------------


def _raw_calls(stub: pb_grpc.RuntimeStub, metadata: tuple[tuple[str, str], ...]) -> dict[str, object]:
    """One call of every kind: unary, server streaming, client streaming, bidirectional."""
    ref = pb.SandboxRef(tenant=ALPHA, sandbox_id="anything")

    def chunks() -> Iterator[pb.WriteFileChunk]:
        yield pb.WriteFileChunk(header=pb.WriteFileHeader(ref=ref, path="x"))
        yield pb.WriteFileChunk(data=b"data")

    def inputs() -> Iterator[pb.PtyInput]:
        yield pb.PtyInput(open=pb.PtyOpen(pty=pb.PtyRef(ref=ref, session="main")))

    calls: dict[str, Callable[[], object]] = {
        "Health": lambda: stub.Health(pb.HealthRequest(), metadata=metadata, timeout=5),
        "CreateSandbox": lambda: stub.CreateSandbox(
            pb.CreateSandboxRequest(ref=ref, template="base"), metadata=metadata, timeout=5
        ),
        "DestroySandbox": lambda: stub.DestroySandbox(ref, metadata=metadata, timeout=5),
        "ListSandboxes": lambda: stub.ListSandboxes(pb.ListSandboxesRequest(), metadata=metadata, timeout=5),
        "Exec": lambda: list(
            stub.Exec(pb.ExecRequest(ref=ref, command="true"), metadata=metadata, timeout=5)
        ),
        "ReadFile": lambda: list(
            stub.ReadFile(pb.ReadFileRequest(ref=ref, path="x"), metadata=metadata, timeout=5)
        ),
        "WriteFile": lambda: stub.WriteFile(chunks(), metadata=metadata, timeout=5),
        "Pty": lambda: list(stub.Pty(inputs(), metadata=metadata, timeout=5)),
    }
    results: dict[str, object] = {}
    for name, call in calls.items():
        try:
            call()
            results[name] = "answered"
        except grpc.RpcError as error:
            results[name] = error.code()
    return results


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param((), id="no secret"),
        pytest.param((("authorization", "Bearer wrong-secret-of-the-right-length"),), id="wrong secret"),
        pytest.param((("authorization", "Basic something"),), id="another scheme"),
    ],
)
def test_every_kind_of_call_without_the_secret_is_refused(runtime_server, metadata):
    with grpc.insecure_channel(runtime_server.address) as channel:
        stub = pb_grpc.RuntimeStub(channel)  # type: ignore[no-untyped-call]
        results = _raw_calls(stub, metadata)
    assert results == dict.fromkeys(results, grpc.StatusCode.UNAUTHENTICATED)


def test_the_right_secret_is_answered_and_a_wrong_one_raises_for_the_platform(runtime_server):
    good = runtime_server.client()
    assert good.health()["status"] == "ok"
    assert good.health()["backend"] == "bwrap"
    bad = runtime_server.client(secret="x" * 32)
    with pytest.raises(RuntimeUnauthenticated):
        bad.health()
    with pytest.raises(RuntimeUnauthenticated):
        bad.list_sandboxes(ALPHA)


def test_a_terminal_stream_with_a_wrong_secret_is_refused(runtime_server):
    async def attempt() -> Exception | None:
        client = AsyncRuntimeClient(runtime_server.address, "y" * 32)
        stream = await client.open_pty(ALPHA, "anything", "main")
        try:
            async for _ in stream:
                pass
        except Exception as exc:
            return exc
        finally:
            await client.close()
        return None

    assert isinstance(asyncio.run(attempt()), RuntimeUnauthenticated)


# -- tenants --------------------------------------------------------------------------------------


def test_a_forged_tenant_finds_nothing_of_another_tenants_sandbox(client, sandbox):
    client.write_file(ALPHA, sandbox, "secret.txt", b"alpha's")
    attempts: dict[str, Callable[[], object]] = {
        "get": lambda: client.get_sandbox(BETA, sandbox),
        "start": lambda: client.start_sandbox(BETA, sandbox),
        "stop": lambda: client.stop_sandbox(BETA, sandbox),
        "exec": lambda: client.exec(BETA, sandbox, command="cat secret.txt"),
        "read": lambda: client.read_file(BETA, sandbox, "secret.txt"),
        "write": lambda: client.write_file(BETA, sandbox, "secret.txt", b"beta's"),
        "stat": lambda: client.stat(BETA, sandbox, "secret.txt"),
        "list": lambda: client.list_dir(BETA, sandbox),
        "delete": lambda: client.delete_path(BETA, sandbox, "secret.txt"),
        "close terminal": lambda: client.close_pty(BETA, sandbox, "main"),
    }
    outcomes = {}
    for name, attempt in attempts.items():
        try:
            attempt()
            outcomes[name] = "answered"
        except SandboxNotFound:
            outcomes[name] = "not found"
    assert outcomes == dict.fromkeys(attempts, "not found")

    assert client.destroy_sandbox(BETA, sandbox) is False
    assert sandbox not in {info.sandbox_id for info in client.list_sandboxes(BETA)}
    # Alpha's sandbox is untouched: still running, its file unchanged.
    assert client.get_sandbox(ALPHA, sandbox).running
    assert client.read_file(ALPHA, sandbox, "secret.txt") == b"alpha's"
    assert sandbox in {info.sandbox_id for info in client.list_sandboxes(ALPHA)}


def test_a_forged_tenant_cannot_attach_to_another_tenants_terminal(runtime_server, client, sandbox):
    async def attempt() -> Exception | None:
        async_client = AsyncRuntimeClient(runtime_server.address, runtime_server.secret)
        try:
            owner = await async_client.open_pty(ALPHA, sandbox, "main")
            async for event in owner:
                assert isinstance(event, PtyOpened)
                break
            forged = await async_client.open_pty(BETA, sandbox, "main")
            try:
                async for _ in forged:
                    pass
            except Exception as exc:
                return exc
            finally:
                await owner.close()
        finally:
            await async_client.close()
        return None

    assert isinstance(asyncio.run(attempt()), SandboxNotFound)
    assert client.close_pty(ALPHA, sandbox, "main") is True


# -- lifecycle and bad input ----------------------------------------------------------------------


def test_a_sandbox_is_created_started_used_stopped_and_destroyed(client):
    sandbox_id = new_id()
    info = client.create_sandbox(
        SandboxSpec(tenant=ALPHA, sandbox_id=sandbox_id, template="base", env={"GREETING": "hi"})
    )
    assert (info.state, info.template, info.backend) == ("stopped", "base", "bwrap")
    assert info.cpus > 0
    assert info.memory_bytes > 0
    assert info.disk_bytes > 0
    assert info.pids > 0
    with pytest.raises(SandboxExists):
        client.create_sandbox(SandboxSpec(tenant=ALPHA, sandbox_id=sandbox_id))
    # Exec on a stopped sandbox is refused (the platform answers 409).
    with pytest.raises(SandboxNotRunning):
        client.exec(ALPHA, sandbox_id, command="true")

    started = client.start_sandbox(ALPHA, sandbox_id)
    assert started.running
    assert started.started_at > 0
    result = client.exec(ALPHA, sandbox_id, command="echo $GREETING; echo oops >&2; exit 3")
    assert (result.stdout, result.stderr, result.exit_code) == (b"hi\n", b"oops\n", 3)
    assert client.get_sandbox(ALPHA, sandbox_id).last_activity_at >= started.started_at

    stopped = client.stop_sandbox(ALPHA, sandbox_id)
    assert (stopped.state, stopped.started_at) == ("stopped", 0)
    with pytest.raises(SandboxNotRunning):
        client.exec(ALPHA, sandbox_id, command="true")

    assert client.destroy_sandbox(ALPHA, sandbox_id) is True
    with pytest.raises(SandboxNotFound):
        client.get_sandbox(ALPHA, sandbox_id)
    assert client.destroy_sandbox(ALPHA, sandbox_id) is False


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        (SandboxSpec(tenant=ALPHA, sandbox_id="ok-id", template="windows-95"), "template"),
        (SandboxSpec(tenant=ALPHA, sandbox_id="ok-id", cpus=64), "resources.cpus"),
        (SandboxSpec(tenant=ALPHA, sandbox_id="ok-id", memory_bytes=1 << 50), "resources.memory_bytes"),
        (SandboxSpec(tenant=ALPHA, sandbox_id="ok-id", disk_bytes=1 << 50), "resources.disk_bytes"),
        (SandboxSpec(tenant=ALPHA, sandbox_id="ok-id", pids=1_000_000), "resources.pids"),
        (SandboxSpec(tenant=ALPHA, sandbox_id="ok-id", pids=-1), "resources.pids"),
        (SandboxSpec(tenant=ALPHA, sandbox_id="ok-id", allow=["*.example.com:443"]), "network.allow"),
        (SandboxSpec(tenant=ALPHA, sandbox_id="ok-id", allow=["example.com"]), "network.allow"),
        (SandboxSpec(tenant=ALPHA, sandbox_id="ok-id", env={"BAD NAME": "x"}), "env"),
        (SandboxSpec(tenant="Org-Alpha", sandbox_id="ok-id"), "tenant"),
        (SandboxSpec(tenant=ALPHA, sandbox_id="../escape"), "sandbox_id"),
        (SandboxSpec(tenant=ALPHA, sandbox_id=""), "sandbox_id"),
    ],
)
def test_bad_sandbox_settings_are_refused_naming_the_field(client, spec, named):
    with pytest.raises(InvalidRequest, match=named.replace(".", r"\.")):
        client.create_sandbox(spec)
    with pytest.raises(SandboxNotFound):
        client.get_sandbox(ALPHA, "ok-id")


def test_exec_takes_argv_stdin_cwd_and_env(client, sandbox):
    client.write_file(ALPHA, sandbox, "sub/dir/keep", b"", make_parents=True)
    result = client.exec(ALPHA, sandbox, argv=["sh", "-c", 'pwd; cat; echo "$A"'], cwd="sub/dir",
                         env={"A": "from the request"}, stdin=b"piped in\n")  # fmt: skip
    assert result.stdout == b"/workspace/sub/dir\npiped in\nfrom the request\n"
    with pytest.raises(InvalidRequest):
        client.exec(ALPHA, sandbox, command="true", cwd="../..")
    with pytest.raises(SandboxNotFound):
        client.exec(ALPHA, sandbox, command="true", cwd="no/such/dir")
    with pytest.raises(InvalidRequest):
        client.exec(ALPHA, sandbox, command="true", timeout=10**9)


def test_exec_streams_output_as_it_comes(client, sandbox):
    stream = client.exec_stream(ALPHA, sandbox, command="echo first; sleep 1; echo second")
    started = time.monotonic()
    first = next(stream)
    assert first == ("stdout", b"first\n")
    assert time.monotonic() - started < 0.9
    rest = list(stream)
    assert rest[0] == ("stdout", b"second\n")
    assert rest[-1].exit_code == 0


def _peak_memory_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_huge_output_is_truncated_and_the_runtime_does_not_hold_it(runtime_server, client, sandbox):
    before = _peak_memory_kib(runtime_server.process.pid)
    # 300 MiB on stdout and 5 MiB on stderr, each cut at 1 MiB (the runtime's default).
    result = client.exec(ALPHA, sandbox, command="head -c 314572800 /dev/zero; head -c 5242880 /dev/zero >&2",
                         timeout=120)  # fmt: skip
    assert result.exit_code == 0
    assert (len(result.stdout), result.stdout_truncated) == (MIB, True)
    assert (len(result.stderr), result.stderr_truncated) == (MIB, True)
    grown_mib = (_peak_memory_kib(runtime_server.process.pid) - before) / 1024
    print(f"runtime peak memory grew by {grown_mib:.1f} MiB while 305 MiB of output went through")
    assert grown_mib < 64

    small = client.exec(ALPHA, sandbox, command="seq 1 1000", max_output_bytes=10)
    assert (small.stdout, small.stdout_truncated, small.stderr_truncated) == (b"1\n2\n3\n4\n5\n", True, False)


def test_a_command_past_its_timeout_is_killed(client, sandbox):
    started = time.monotonic()
    result = client.exec(ALPHA, sandbox, command="echo begun; sleep 60; echo never", timeout=1)
    assert result.timed_out
    assert result.exit_code != 0
    assert result.stdout == b"begun\n"
    assert time.monotonic() - started < 10
    survivors = client.exec(
        ALPHA,
        sandbox,
        command="for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done | grep -c '^sleep 60'",
    )
    assert survivors.stdout.strip() == b"0"


# -- files ----------------------------------------------------------------------------------------


def test_files_round_trip_including_a_chunked_upload_larger_than_a_message(client, sandbox):
    payload = os.urandom(3 * MIB + 12345)
    entry = client.write_file(ALPHA, sandbox, "data/blob.bin", payload, make_parents=True, mode=0o600)
    assert (entry.path, entry.name, entry.kind, entry.size, entry.mode) == (
        "data/blob.bin", "blob.bin", "file", len(payload), 0o600,
    )  # fmt: skip
    assert client.read_file(ALPHA, sandbox, "data/blob.bin") == payload
    assert (
        client.read_file(ALPHA, sandbox, "data/blob.bin", offset=MIB, limit=100) == payload[MIB : MIB + 100]
    )
    chunks = list(client.read_file_chunks(ALPHA, sandbox, "data/blob.bin"))
    assert len(chunks) > 1
    assert b"".join(chunks) == payload
    # The sandbox sees the same bytes, and may write the file it received.
    digest = client.exec(ALPHA, sandbox, command="sha256sum data/blob.bin && echo more >> data/blob.bin")
    import hashlib

    assert digest.stdout.split()[0].decode() == hashlib.sha256(payload).hexdigest()

    names = [(item.name, item.kind) for item in client.list_dir(ALPHA, sandbox, "data")]
    assert names == [("blob.bin", "file")]
    assert client.stat(ALPHA, sandbox, "data").kind == "dir"
    assert client.delete_path(ALPHA, sandbox, "data/blob.bin") is True
    assert client.delete_path(ALPHA, sandbox, "data/blob.bin") is False
    with pytest.raises(SandboxNotFound):
        client.read_file(ALPHA, sandbox, "data/blob.bin")


def test_an_upload_that_fails_midway_leaves_nothing_behind(client, sandbox):
    client.write_file(ALPHA, sandbox, "kept.txt", b"original")

    def broken() -> Iterator[bytes]:
        yield b"x" * MIB
        raise RuntimeError("the client went away")

    with pytest.raises(RuntimeServiceError):
        client.write_file(ALPHA, sandbox, "kept.txt", broken())
    assert client.read_file(ALPHA, sandbox, "kept.txt") == b"original"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        names = {item.name for item in client.list_dir(ALPHA, sandbox)}
        if names == {"kept.txt"}:
            break
        time.sleep(0.1)
    assert names == {"kept.txt"}


def test_directories_are_deleted_only_when_asked_recursively(client, sandbox):
    client.write_file(ALPHA, sandbox, "tree/a/b.txt", b"b", make_parents=True)
    with pytest.raises(InvalidRequest, match="recursive"):
        client.delete_path(ALPHA, sandbox, "tree")
    assert client.delete_path(ALPHA, sandbox, "tree", recursive=True) is True
    with pytest.raises(SandboxNotFound):
        client.stat(ALPHA, sandbox, "tree")
    with pytest.raises(InvalidRequest):
        client.delete_path(ALPHA, sandbox, "", recursive=True)


@pytest.mark.parametrize(
    "path", ["../x", "a/../../x", "/etc/passwd", "escape/etc/passwd", "abs/passwd", "up/x"]
)
def test_paths_leaving_the_workspace_are_refused(client, sandbox, path):
    client.exec(ALPHA, sandbox, command="ln -sfn / escape; ln -sfn /etc abs; ln -sfn .. up; true")
    attempts: tuple[Callable[[], object], ...] = (
        lambda: client.read_file(ALPHA, sandbox, path),
        lambda: client.write_file(ALPHA, sandbox, path, b"owned"),
        lambda: client.list_dir(ALPHA, sandbox, path),
        lambda: client.delete_path(ALPHA, sandbox, f"{path}/x", recursive=True),
    )
    for attempt in attempts:
        with pytest.raises(InvalidRequest):
            attempt()
    assert Path("/etc/passwd").read_bytes() != b"owned"


def test_a_symlink_to_the_host_root_is_refused_even_as_a_parent_to_write_into(client, sandbox):
    client.exec(ALPHA, sandbox, command="ln -sfn / rootlink")
    with pytest.raises(InvalidRequest, match="symlink"):
        client.write_file(ALPHA, sandbox, "rootlink/tmp/agentyard-owned", b"x")
    assert not Path("/tmp/agentyard-owned").exists()  # noqa: S108 (where the write would have landed)
    # The link itself is a file of the workspace: it can be seen and deleted.
    assert client.stat(ALPHA, sandbox, "rootlink").kind == "symlink"
    assert client.delete_path(ALPHA, sandbox, "rootlink") is True


def test_a_symlink_that_stays_inside_the_workspace_is_followed(client, sandbox):
    client.write_file(ALPHA, sandbox, "real/file.txt", b"inside", make_parents=True)
    client.exec(ALPHA, sandbox, command="ln -s real alias && ln -s ../real/file.txt real/self")
    assert client.read_file(ALPHA, sandbox, "alias/file.txt") == b"inside"
    assert client.read_file(ALPHA, sandbox, "alias/self") == b"inside"
    client.write_file(ALPHA, sandbox, "alias/new.txt", b"through the link")
    assert client.read_file(ALPHA, sandbox, "real/new.txt") == b"through the link"


def test_files_work_while_the_sandbox_is_stopped(client):
    sandbox_id = new_id()
    client.create_sandbox(SandboxSpec(tenant=ALPHA, sandbox_id=sandbox_id))
    try:
        client.write_file(ALPHA, sandbox_id, "notes.md", b"# before start")
        client.start_sandbox(ALPHA, sandbox_id)
        assert client.exec(ALPHA, sandbox_id, command="cat notes.md").stdout == b"# before start"
        client.exec(ALPHA, sandbox_id, command="echo made inside > inside.txt")
        client.stop_sandbox(ALPHA, sandbox_id)
        assert client.read_file(ALPHA, sandbox_id, "inside.txt") == b"made inside\n"
    finally:
        client.destroy_sandbox(ALPHA, sandbox_id)


# -- terminals ------------------------------------------------------------------------------------


async def _read_until(stream, marker: bytes, seen: bytearray, timeout: float = 10) -> bytes:
    """Read a terminal stream until `marker` shows up in what it has shown so far."""
    iterator = aiter(stream)

    async def loop() -> bytes:
        while marker not in seen:
            event = await anext(iterator)
            if isinstance(event, bytes):
                seen.extend(event)
            elif isinstance(event, PtyExited):
                raise AssertionError(f"the shell exited before {marker!r}: {bytes(seen)!r}")
        return bytes(seen)

    return await asyncio.wait_for(loop(), timeout)


def test_two_attachments_both_see_output_and_a_late_one_gets_the_scrollback(runtime_server, client, sandbox):
    async def scenario() -> None:
        first_client = AsyncRuntimeClient(runtime_server.address, runtime_server.secret)
        second_client = AsyncRuntimeClient(runtime_server.address, runtime_server.secret)
        try:
            first = await first_client.open_pty(ALPHA, sandbox, "main", rows=30, cols=100)
            opened = await anext(aiter(first))
            assert opened == PtyOpened(created=True, rows=30, cols=100)
            second = await second_client.open_pty(ALPHA, sandbox, "main", replay=False)
            assert await anext(aiter(second)) == PtyOpened(created=False, rows=30, cols=100)

            await first.write(b"echo from-the-first-$((6*7))\n")
            seen_first, seen_second = bytearray(), bytearray()
            await _read_until(first, b"from-the-first-42", seen_first)
            await _read_until(second, b"from-the-first-42", seen_second)
            # The second may type too; both see it.
            await second.write(b"echo second-typed-$((2*3))\n")
            await _read_until(first, b"second-typed-6", seen_first)
            await _read_until(second, b"second-typed-6", seen_second)
            await first.close()
            await second.close()

            # Reconnecting with replay shows what the screen showed, before any new output.
            third = await first_client.open_pty(ALPHA, sandbox, "main", replay=True)
            assert await anext(aiter(third)) == PtyOpened(created=False, rows=30, cols=100)
            replayed = await _read_until(third, b"second-typed-6", bytearray(), timeout=5)
            assert b"from-the-first-42" in replayed

            # Resizing is what the shell sees.
            await third.resize(33, 111)
            await third.write(b"stty size\n")
            await _read_until(third, b"33 111", bytearray(replayed))
            info = await first_client.get_sandbox(ALPHA, sandbox)
            assert info.pty_sessions == ("main",)
            await third.close()
        finally:
            await first_client.close()
            await second_client.close()

    asyncio.run(scenario())
    assert client.close_pty(ALPHA, sandbox, "main") is True
    assert client.get_sandbox(ALPHA, sandbox).pty_sessions == ()
    assert client.close_pty(ALPHA, sandbox, "main") is False


def test_the_terminal_says_when_its_shell_exits_and_stopping_the_sandbox_ends_sessions(
    runtime_server, client
):
    sandbox_id = new_id()
    client.create_sandbox(SandboxSpec(tenant=ALPHA, sandbox_id=sandbox_id))
    client.start_sandbox(ALPHA, sandbox_id)

    async def scenario() -> tuple[object, object]:
        async_client = AsyncRuntimeClient(runtime_server.address, runtime_server.secret)
        try:
            shell = await async_client.open_pty(ALPHA, sandbox_id, "exits")
            events = [event async for event in _until_exit(shell, b"exit 7\n")]
            lingering = await async_client.open_pty(ALPHA, sandbox_id, "lingers")
            await anext(aiter(lingering))
            await asyncio.to_thread(client.stop_sandbox, ALPHA, sandbox_id)
            after_stop = [event async for event in lingering]
            return events[-1], after_stop[-1] if after_stop else None
        finally:
            await async_client.close()

    async def _until_exit(stream, typed: bytes):
        async for event in stream:
            if isinstance(event, PtyOpened):
                await stream.write(typed)
            yield event

    try:
        exited, stopped = asyncio.run(scenario())
        assert exited == PtyExited(7)
        assert isinstance(stopped, PtyExited)
        assert client.get_sandbox(ALPHA, sandbox_id).pty_sessions == ()
    finally:
        client.destroy_sandbox(ALPHA, sandbox_id)


def test_a_terminal_on_a_stopped_sandbox_is_refused(runtime_server, client):
    sandbox_id = new_id()
    client.create_sandbox(SandboxSpec(tenant=ALPHA, sandbox_id=sandbox_id))

    async def attempt() -> Exception | None:
        async_client = AsyncRuntimeClient(runtime_server.address, runtime_server.secret)
        try:
            async for _ in await async_client.open_pty(ALPHA, sandbox_id, "main"):
                pass
        except Exception as exc:
            return exc
        finally:
            await async_client.close()
        return None

    try:
        assert isinstance(asyncio.run(attempt()), SandboxNotRunning)
    finally:
        client.destroy_sandbox(ALPHA, sandbox_id)


# -- restarts -------------------------------------------------------------------------------------


def test_a_restarted_runtime_keeps_files_and_reports_every_sandbox_stopped():
    root = Path(tempfile.mkdtemp(prefix="agentyard-runtime-restart-"))
    server = start_runtime(root, log_name="runtime-restart.log")
    try:
        client = server.client()
        client.create_sandbox(SandboxSpec(tenant=ALPHA, sandbox_id="kept", env={"K": "v"}))
        client.start_sandbox(ALPHA, "kept")
        client.exec(ALPHA, "kept", command="echo survived > note.txt; sleep 600 >/dev/null 2>&1 &")
        client.close()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0

        server = start_runtime(root, log_name="runtime-restart.log")
        client = server.client()
        info = client.get_sandbox(ALPHA, "kept")
        assert (info.state, info.template) == ("stopped", "base")
        assert client.read_file(ALPHA, "kept", "note.txt") == b"survived\n"
        client.start_sandbox(ALPHA, "kept")
        assert client.exec(ALPHA, "kept", command="echo $K; cat note.txt").stdout == b"v\nsurvived\n"
        assert client.destroy_sandbox(ALPHA, "kept") is True
        assert not (root / "sandboxes" / ALPHA / "kept").exists()
        client.close()
    finally:
        stop_runtime(server)
        shutil.rmtree(root, ignore_errors=True)
