"""The bwrap backend on its own: real bubblewrap sandboxes driven as the runtime's server drives
them (an asyncio loop in a thread of its own), without gRPC in between.

What a person running commands in a workspace notices: output, exit codes, env, cwd, stdin,
streaming, timeouts, terminals, restarts, and the network proxy of an allow-list.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from runtime.backends.base import BackendError, ExecFinished, ExecOutput, ExecSpec, SandboxConfig
from runtime.backends.bwrap import BwrapBackend
from runtime.netpolicy import normalize_allow_list, parse_allow_entry
from runtime.templates import TEMPLATES

MIB = 1024 * 1024
T = TypeVar("T")


@dataclass
class Result:
    stdout: bytes = b""
    stderr: bytes = b""
    exit_code: int | None = None
    timed_out: bool = False
    oom_killed: bool = False
    chunks: list[tuple[float, str, bytes]] = field(default_factory=list)

    @property
    def out(self) -> str:
        return self.stdout.decode(errors="replace")

    @property
    def err(self) -> str:
        return self.stderr.decode(errors="replace")


class Host:
    """A BwrapBackend on an event loop in its own thread, like the runtime's server runs it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.backend = BwrapBackend(root)
        self.configs: list[SandboxConfig] = []

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def sandbox(self, *, start: bool = True, **overrides: Any) -> SandboxConfig:
        values: dict[str, Any] = {
            "tenant": "org_alpha",
            "sandbox_id": f"sb-{uuid.uuid4().hex[:10]}",
            "cpus": 1.0,
            "memory_bytes": 256 * MIB,
            "disk_bytes": 64 * MIB,
            "pids": 128,
            **overrides,
        }
        config = SandboxConfig(**values)
        self.configs.append(config)
        self.call(self.backend.create(config))
        if start:
            self.call(self.backend.start(config))
        return config

    def exec(
        self,
        config: SandboxConfig,
        command: str | list[str],
        *,
        stdin: bytes = b"",
        env: dict[str, str] | None = None,
        cwd: str = "",
        timeout: float = 20,
    ) -> Result:
        argv = ["/bin/sh", "-c", command] if isinstance(command, str) else command
        spec = ExecSpec(argv=argv, env=env or {}, cwd=cwd, timeout_seconds=timeout, stdin=stdin)

        async def collect() -> Result:
            result = Result()
            async for event in self.backend.exec(config, spec):
                if isinstance(event, ExecOutput):
                    result.chunks.append((time.monotonic(), event.stream, event.data))
                    if event.stream == "stdout":
                        result.stdout += event.data
                    else:
                        result.stderr += event.data
                else:
                    assert isinstance(event, ExecFinished)
                    result.exit_code = event.exit_code
                    result.timed_out = event.timed_out
                    result.oom_killed = event.oom_killed
            return result

        return self.call(collect(), timeout + 30)

    def close(self) -> None:
        for config in self.configs:
            with contextlib.suppress(Exception):
                self.call(self.backend.destroy(config))
        self.call(self.backend.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    root = Path(tempfile.mkdtemp(prefix="agentyard-bwrap-"))
    host = Host(root)
    try:
        yield host
    finally:
        host.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def sandbox(host: Host) -> SandboxConfig:
    return host.sandbox(env={"GREETING": "hello from the sandbox's env"})


def test_exec_output_exit_code_env_cwd_and_stdin(host: Host, sandbox: SandboxConfig) -> None:
    result = host.exec(sandbox, "echo out; echo err >&2; exit 3")
    assert (result.out, result.err, result.exit_code) == ("out\n", "err\n", 3)

    result = host.exec(sandbox, 'echo "$GREETING / $EXTRA"', env={"EXTRA": "from the request"})
    assert result.out == "hello from the sandbox's env / from the request\n"

    host.exec(sandbox, "mkdir -p src/app")
    assert host.exec(sandbox, "pwd", cwd="src/app").out == "/workspace/src/app\n"
    assert host.exec(sandbox, "pwd").out == "/workspace\n"

    result = host.exec(sandbox, ["wc", "-c"], stdin=b"x" * 300_000)
    assert result.out.strip() == "300000"
    assert host.exec(sandbox, ["cat"], stdin=b"line one\nline two\n").out == "line one\nline two\n"


def test_errors_a_person_can_read(host: Host, sandbox: SandboxConfig) -> None:
    missing = host.exec(sandbox, ["no-such-program", "--help"])
    print("unknown program:", missing.exit_code, missing.err.strip())
    assert missing.exit_code == 127
    assert "no-such-program: command not found" in missing.err

    no_dir = host.exec(sandbox, ["true"], cwd="does/not/exist")
    print("missing cwd:", no_dir.exit_code, no_dir.err.strip())
    assert no_dir.exit_code == 125
    assert "cannot enter /workspace/does/not/exist" in no_dir.err

    killed = host.exec(sandbox, "kill -TERM $$")
    assert killed.exit_code == -15


def test_who_and_where_the_command_runs(host: Host, sandbox: SandboxConfig) -> None:
    result = host.exec(sandbox, 'id; hostname; echo "$HOME $USER"; cat /etc/hostname; ls /')
    print(result.out)
    lines = result.out.splitlines()
    assert lines[0] == "uid=1000(sandbox) gid=1000(sandbox) groups=1000(sandbox)"
    assert lines[1:4] == ["sandbox", "/home/sandbox sandbox", "sandbox"]
    # the root holds what a userland needs, and nothing else of the host
    assert set(lines[4:]) <= {
        "bin",
        "dev",
        "etc",
        "home",
        "lib",
        "lib32",
        "lib64",
        "libx32",
        "opt",
        "proc",
    } | {
        "sbin",
        "tmp",
        "usr",
        "var",
        "workspace",
    }

    host.exec(sandbox, "echo written inside > made-inside.txt")
    on_host = host.backend.workspace_dir(sandbox) / "made-inside.txt"
    assert on_host.read_text() == "written inside\n"
    # a file the files API writes must belong to the same user as the sandbox's own
    assert host.backend.file_owner(sandbox) == (on_host.stat().st_uid, on_host.stat().st_gid)
    assert on_host.stat().st_uid != 0


def test_output_streams_as_it_comes(host: Host, sandbox: SandboxConfig) -> None:
    result = host.exec(sandbox, "echo first; sleep 0.6; echo second")
    assert result.out == "first\nsecond\n"
    (first_at, _, first), (second_at, _, second) = result.chunks
    assert (first, second) == (b"first\n", b"second\n")
    assert second_at - first_at > 0.4, "the first line arrived only with the second"


def test_a_timeout_kills_the_whole_process_group(host: Host, sandbox: SandboxConfig) -> None:
    marker = uuid.uuid4().hex
    started = time.monotonic()
    sleeper = f"python3 -c 'import time; time.sleep(300)' {marker}"
    result = host.exec(sandbox, f"{sleeper} & {sleeper}; echo never", timeout=0.5)
    elapsed = time.monotonic() - started
    print(f"timed out after {elapsed:.2f}s: {result}")
    assert result.timed_out
    assert result.exit_code == -9
    assert "never" not in result.out
    assert elapsed < 5
    left = host.exec(sandbox, f"ps -eo args | grep -v grep | grep -c {marker} || true")
    assert left.out.strip() == "0"


def test_huge_output_keeps_flowing(host: Host, sandbox: SandboxConfig) -> None:
    result = host.exec(sandbox, "head -c 20000000 /dev/zero")
    assert len(result.stdout) == 20_000_000
    assert result.exit_code == 0


def test_a_slow_reader_still_gets_all_the_output(host: Host, sandbox: SandboxConfig) -> None:
    """The command exits while its last output still waits in the agent for a reader who
    is busy; none of it may be dropped. Sizes around what the pipes, the agent and the
    socket hold together, so at one of them the command exits with output held back."""

    async def read_slowly(size: int) -> int:
        spec = ExecSpec(argv=["head", "-c", str(size), "/dev/zero"], env={}, cwd="", timeout_seconds=30)
        received = 0
        async for event in host.backend.exec(sandbox, spec):
            if isinstance(event, ExecOutput):
                if received == 0:
                    await asyncio.sleep(0.3)  # busy elsewhere while the command finishes
                received += len(event.data)
        return received

    sizes = range(300_000, 1_500_001, 100_000)
    assert [host.call(read_slowly(size)) for size in sizes] == list(sizes)


def test_concurrent_execs_in_one_sandbox(host: Host, sandbox: SandboxConfig) -> None:
    async def many() -> list[bytes]:
        async def one(n: int) -> bytes:
            spec = ExecSpec(
                argv=["/bin/sh", "-c", f"sleep 0.3; echo {n}"], env={}, cwd="", timeout_seconds=10
            )
            out = b""
            async for event in host.backend.exec(sandbox, spec):
                if isinstance(event, ExecOutput):
                    out += event.data
            return out

        return await asyncio.gather(*(one(n) for n in range(8)))

    started = time.monotonic()
    outputs = host.call(many())
    assert outputs == [f"{n}\n".encode() for n in range(8)]
    assert time.monotonic() - started < 2.5, "execs ran one after another"


def test_terminal(host: Host, sandbox: SandboxConfig) -> None:
    async def session() -> tuple[bytes, int]:
        pty = await host.backend.open_pty(sandbox, argv=[], env={}, rows=24, cols=80)
        output = b""

        async def read_until(needle: bytes) -> None:
            nonlocal output
            while needle not in output:
                output += await asyncio.wait_for(pty.read(), 10)

        await pty.write(b"echo $((6 * 7)); tty; stty size\n")
        await read_until(b"24 80")
        await pty.resize(40, 120)
        await pty.write(b"stty size; exit 7\n")
        while data := await asyncio.wait_for(pty.read(), 10):
            output += data
        return output, await pty.wait()

    output, code = host.call(session())
    text = output.decode(errors="replace")
    print(text)
    assert "42" in text
    assert "/dev/pts/" in text
    assert "40 120" in text
    assert code == 7


def test_a_killed_terminal_ends(host: Host, sandbox: SandboxConfig) -> None:
    async def session() -> int:
        pty = await host.backend.open_pty(sandbox, argv=["/bin/sh"], env={}, rows=10, cols=40)
        await pty.write(b"sleep 1000\n")
        await asyncio.sleep(0.2)
        await pty.kill()
        while await asyncio.wait_for(pty.read(), 10):
            pass
        return await pty.wait()

    assert host.call(session()) == -9


def test_stop_then_start_again(host: Host) -> None:
    config = host.sandbox()
    host.exec(config, "echo kept > file.txt; echo gone > /tmp/scratch; echo gone > ~/.profile-test")
    host.call(host.backend.stop(config))
    assert not host.backend.is_running(config)
    with pytest.raises(BackendError, match="not running"):
        host.exec(config, "true")
    host.call(host.backend.stop(config))  # twice is fine

    host.call(host.backend.start(config))
    host.call(host.backend.start(config))  # already running: nothing happens
    assert host.backend.is_running(config)
    result = host.exec(config, "cat file.txt; ls -A /tmp ~/ | wc -w")
    assert result.out == "kept\n2\n"  # only the two "name:" headers: /tmp and HOME start empty


def test_an_exec_running_during_stop_ends(host: Host) -> None:
    config = host.sandbox()
    future = asyncio.run_coroutine_threadsafe(_collect(host, config, "echo started; sleep 100"), host.loop)
    time.sleep(0.5)
    host.call(host.backend.stop(config))
    result = future.result(10)
    assert result.exit_code == -9
    assert result.stdout == b"started\n"


async def _collect(host: Host, config: SandboxConfig, command: str) -> Result:
    result = Result()
    spec = ExecSpec(argv=["/bin/sh", "-c", command], env={}, cwd="", timeout_seconds=60)
    async for event in host.backend.exec(config, spec):
        if isinstance(event, ExecOutput):
            result.stdout += event.data
        else:
            assert isinstance(event, ExecFinished)
            result.exit_code = event.exit_code
    return result


def test_destroy_removes_everything(host: Host) -> None:
    config = host.sandbox()
    host.exec(config, "head -c 1000000 /dev/urandom > blob")
    directory = host.backend.workspace_dir(config).parent
    host.call(host.backend.destroy(config))
    assert not directory.exists()
    assert not host.backend.is_running(config)
    host.call(host.backend.destroy(config))  # twice is fine


def test_templates(host: Host) -> None:
    assert {"base", "python"} <= set(TEMPLATES)
    assert all(template.description for template in TEMPLATES.values())
    config = host.sandbox(template="python")
    result = host.exec(config, 'python3 -c "import sys; print(sys.version_info[0])"; echo "$PYTHONUSERBASE"')
    assert result.out == "3\n/workspace/.local\n"
    base = host.sandbox(template="base")
    result = host.exec(base, "bash --version | head -1; git --version")
    assert "GNU bash" in result.out
    assert "git version" in result.out


def test_capabilities_and_disk_used(host: Host, sandbox: SandboxConfig) -> None:
    capabilities = host.backend.capabilities()
    print(capabilities)
    assert capabilities["network"] == "netns+proxy"
    before = host.backend.disk_used(sandbox)
    host.exec(sandbox, "head -c 5000000 /dev/urandom > five-megabytes")
    assert host.backend.disk_used(sandbox) - before >= 5_000_000


# -- network policy -------------------------------------------------------------------------------


def test_allow_list_entries() -> None:
    assert parse_allow_entry("GitHub.com:443") == ("github.com", 443)
    assert parse_allow_entry("[2001:db8::1]:8443") == ("2001:db8::1", 8443)
    assert normalize_allow_list(["a.example:80", "A.example:80", "10.0.0.1:22"]) == [
        "a.example:80",
        "10.0.0.1:22",
    ]
    for entry, message in [
        ("github.com", "a port is required"),
        ("github.com:0", "from 1 to 65535"),
        ("github.com:https", "from 1 to 65535"),
        ("*.github.com:443", "wildcards are not supported"),
        ("https://github.com:443", "without a scheme"),
        ("bad_host!:80", "not a valid host name"),
        ("2001:db8::1:443", "IPv6 address in brackets"),
        ("", "cannot be empty"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_allow_entry(entry)


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[tuple[str, Path]]:
    """A loopback HTTP server on 127.0.0.2 (not in the sandbox's NO_PROXY), serving a directory."""
    directory = Path(tempfile.mkdtemp(prefix="agentyard-http-"))
    (directory / "hello.txt").write_text("hello through the proxy\n")

    def handler(*args: Any, **kwargs: Any) -> _Handler:
        return _Handler(*args, directory=str(directory), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.2", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.2:{server.server_address[1]}", directory
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(directory, ignore_errors=True)


def test_proxy_allows_only_listed_pairs(
    host: Host, http_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    address, directory = http_server
    monkeypatch.setenv("RUNTIME_ALLOW_PRIVATE_NETWORK", "1")
    config = host.sandbox(allow=[address])
    allowed = host.exec(config, f"curl -sS http://{address}/hello.txt")
    print("allowed, plain HTTP:", allowed)
    assert allowed.out == "hello through the proxy\n"

    tunnel = host.exec(config, f"curl -sS --proxytunnel http://{address}/hello.txt")
    print("allowed, CONNECT:", tunnel)
    assert tunnel.out == "hello through the proxy\n"

    other_port = int(address.rsplit(":", 1)[1]) + 1
    denied = host.exec(config, f"curl -sS -i http://127.0.0.2:{other_port}/")
    print("denied:", denied)
    assert "403 Forbidden" in denied.out
    assert f"127.0.0.2:{other_port} is not in this workspace's network allow-list" in denied.out

    denied_tunnel = host.exec(config, "curl -sS https://example.com/")
    print("denied CONNECT:", denied_tunnel)
    assert denied_tunnel.exit_code != 0
    assert "403" in denied_tunnel.err

    raw = """
import socket
for line in [b"nonsense", b"GET http://[::1/ HTTP/1.1", b"GET ftp://x/ HTTP/1.1"]:
    request = line + b"\\r\\n\\r\\n"
    with socket.create_connection(("127.0.0.1", 3128)) as s:
        s.sendall(request)
        print(s.recv(200).split(b"\\r\\n")[0].decode())
"""
    bad = host.exec(config, ["python3", "-c", raw])
    print("malformed requests:", bad)
    assert bad.out.splitlines() == ["HTTP/1.1 400 Bad Request"] * 3

    # git over HTTP through the proxy: a bare repository served as files ("dumb" HTTP)
    source = directory / "source"
    subprocess.run(["git", "init", "-q", "-b", "main", str(source)], check=True)
    (source / "README").write_text("cloned through the proxy\n")
    git = ["git", "-C", str(source), "-c", "user.name=T", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "add", "README"], check=True)
    subprocess.run([*git, "commit", "-qm", "first"], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(source), str(directory / "repo.git")], check=True)
    subprocess.run(["git", "-C", str(directory / "repo.git"), "update-server-info"], check=True)
    cloned = host.exec(config, f"git clone -q http://{address}/repo.git && cat repo/README")
    print("git clone:", cloned)
    assert cloned.out == "cloned through the proxy\n"


def test_proxy_refuses_private_addresses_by_default(
    host: Host, http_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    address, _ = http_server
    monkeypatch.delenv("RUNTIME_ALLOW_PRIVATE_NETWORK", raising=False)
    config = host.sandbox(allow=[address])
    result = host.exec(config, f"curl -sS -i http://{address}/hello.txt")
    print(result)
    assert "403 Forbidden" in result.out
    assert "non-public address" in result.out


def test_no_network_without_an_allow_list(host: Host, sandbox: SandboxConfig) -> None:
    result = host.exec(sandbox, "env | grep -i _proxy; cat /proc/net/dev | tail -n +3 | cut -d: -f1")
    assert result.out.split() == ["lo"]


UNPRIVILEGED_RUNTIME = """
import asyncio, json, sys
from pathlib import Path
from runtime.backends.base import ExecOutput, ExecSpec, SandboxConfig
from runtime.backends.bwrap import BwrapBackend

async def main():
    backend = BwrapBackend(Path(sys.argv[1]))
    config = SandboxConfig(tenant="org_alpha", sandbox_id="sb-1", cpus=1, memory_bytes=256 << 20,
                           disk_bytes=1 << 20, pids=64)
    await backend.create(config)
    await backend.start(config)
    out = b""
    spec = ExecSpec(argv=["sh", "-c", "id -u; head -c 2000000 /dev/zero > big; ls -l big"], env={}, cwd="",
                    timeout_seconds=10)
    async for event in backend.exec(config, spec):
        if isinstance(event, ExecOutput):
            out += event.data
    owner = (backend.workspace_dir(config) / "big").stat().st_uid
    await backend.destroy(config)
    print(json.dumps({"capabilities": backend.capabilities(), "output": out.decode(), "owner": owner,
                      "file_owner": backend.file_owner(config)}))

asyncio.run(main())
"""


def test_an_unprivileged_runtime_runs_sandboxes_as_itself() -> None:
    """Without root: no setpriv, no cgroups, no loop disk; rlimits instead, and it says so."""
    import json

    repository = Path(__file__).resolve().parents[2]
    if os.geteuid() != 0 or not shutil.which("setpriv") or not os.access("/usr/bin/python3", os.X_OK):
        pytest.skip("needs root to become another user, and the system's python3")
    if any(not os.stat(path).st_mode & 0o001 for path in [repository, *repository.parents]):
        pytest.skip("the repository is not reachable by other users")
    root = Path(tempfile.mkdtemp(prefix="agentyard-unprivileged-"))
    os.chown(root, 65534, 65534)
    try:
        completed = subprocess.run(
            [
                *("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"),
                *("/usr/bin/python3", "-c", UNPRIVILEGED_RUNTIME, str(root / "runtime")),
            ],
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(repository), "HOME": str(root)},
            cwd=root,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        print(completed.stdout, completed.stderr)
        report = json.loads(completed.stdout)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert report["capabilities"]["cgroups"].startswith("none")
    assert report["capabilities"]["disk_quota"].startswith("none")
    assert report["capabilities"]["user"] == "uid 65534"
    assert report["file_owner"] is None
    assert report["owner"] == 65534
    # RLIMIT_FSIZE at the 1 MiB disk size: the 2 MB file stops there
    assert report["output"].startswith("1000\n")
    assert " 1048576 " in report["output"]


def test_a_restarted_runtime_finds_its_workspaces() -> None:
    """The runtime's processes end with it and its disks are unmounted; the files stay, and a
    new runtime on the same root mounts a workspace's disk again before anyone touches it."""
    root = Path(tempfile.mkdtemp(prefix="agentyard-restart-"))
    first = Host(root)
    try:
        config = first.sandbox()
        first.exec(config, "echo survives > notes.txt")
        workspace = first.backend.workspace_dir(config)
    finally:
        first.configs.clear()  # keep the sandbox: this runtime only shuts down
        first.close()
    if first.backend.capabilities()["disk_quota"] == "loop-ext4":
        assert not os.path.ismount(workspace)
        assert not (workspace / "notes.txt").exists()

    later = Host(root)
    try:
        assert (later.backend.workspace_dir(config) / "notes.txt").read_text() == "survives\n"
        later.call(later.backend.start(config))
        assert later.exec(config, "cat notes.txt").out == "survives\n"
    finally:
        later.close()
        shutil.rmtree(root, ignore_errors=True)
    assert not os.path.ismount(workspace)
