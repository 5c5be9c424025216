"""Escape and abuse suite: what code in a workspace tries against the host, and what happens.

Every test runs real bubblewrap sandboxes with the bwrap backend, prints what it tried and
what happened, and asserts the outcome a host operator relies on.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.backends.base import SandboxConfig
from tests.runtime.test_bwrap import MIB, Host, Result

SETTINGS_FILE = Path(__file__).resolve().parents[2] / "config" / "settings" / "base.py"


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    root = Path(tempfile.mkdtemp(prefix="agentyard-escape-"))
    host = Host(root)
    try:
        yield host
    finally:
        host.close()
        shutil.rmtree(root, ignore_errors=True)


def tried(what: str, result: Result) -> None:
    print(
        f"\n$ {what}\n  exit {result.exit_code}, timed out {result.timed_out}, oom killed {result.oom_killed}"
    )
    for stream, text in (("stdout", result.out), ("stderr", result.err)):
        if text.strip():
            print(f"  {stream}: " + text.strip()[:600].replace("\n", "\n          "))


def python(host: Host, config: SandboxConfig, code: str, **kwargs: Any) -> Result:
    result = host.exec(config, ["python3", "-c", code], **kwargs)
    tried(f"python3 -c {code!r}", result)
    return result


def shell(host: Host, config: SandboxConfig, command: str, **kwargs: Any) -> Result:
    result = host.exec(config, command, **kwargs)
    tried(command, result)
    return result


def host_processes_with(marker: str) -> list[int]:
    """Host pids whose command line contains `marker` (sandbox processes are visible here)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


CONNECT = """
import socket, sys
for host, port in {targets}:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.settimeout(2)
    try:
        s.connect((host, port))
        print(f"CONNECTED {{host}}:{{port}}")
    except OSError as error:
        print(f"refused {{host}}:{{port}}: {{error}}")
"""


def test_no_connection_to_host_services_or_the_internet(host: Host) -> None:
    sandbox = host.sandbox()
    targets = [("127.0.0.1", 5432), ("127.0.0.1", 6379), ("1.1.1.1", 443), ("8.8.8.8", 53), ("::1", 5432)]
    result = python(host, sandbox, CONNECT.format(targets=targets))
    assert "CONNECTED" not in result.out
    assert len(result.out.splitlines()) == len(targets)
    assert all(line.startswith("refused") for line in result.out.splitlines())

    result = shell(host, sandbox, "cat /proc/net/dev | tail -n +3 | cut -d: -f1; env | grep -ic proxy")
    assert result.out.split() == ["lo", "0"]


def test_no_connection_beyond_the_proxy_even_with_an_allow_list(host: Host) -> None:
    sandbox = host.sandbox(allow=["example.com:443"])
    result = python(host, sandbox, CONNECT.format(targets=[("127.0.0.1", 5432), ("93.184.215.14", 443)]))
    assert "CONNECTED" not in result.out
    result = shell(host, sandbox, "curl -sS -i --max-time 5 http://127.0.0.2:6379/")
    assert "403 Forbidden" in result.out


def test_host_files_are_not_there(host: Host) -> None:
    sandbox = host.sandbox()
    assert SETTINGS_FILE.exists()
    for path in (
        str(SETTINGS_FILE),
        "/etc/shadow",
        "/root",
        "/var/lib",
        "/sys/kernel",
        str(host.root),
    ):
        result = shell(host, sandbox, f"ls -la {path}; cat {path}")
        assert result.exit_code != 0
        assert "No such file or directory" in result.err
    result = shell(host, sandbox, "ls -A /home")
    assert result.out == "sandbox\n", "the host's home directories are visible"
    result = shell(host, sandbox, "cat /etc/passwd")
    assert "root:x:0:0" in result.out
    assert sorted(line.split(":")[0] for line in result.out.splitlines()) == ["nobody", "root", "sandbox"]
    result = shell(host, sandbox, "ls /proc | grep -c '^[0-9]'")
    assert int(result.out) < 10, "the sandbox sees host processes"


def test_nothing_outside_the_workspace_is_writable(host: Host) -> None:
    sandbox = host.sandbox()
    marker = f"escape-{uuid.uuid4().hex}"
    for path in ("/usr/bin", "/etc", "/", "/opt", "/var", "/dev", "/proc/sys/kernel"):
        result = shell(host, sandbox, f"touch {path}/{marker}")
        assert result.exit_code != 0
    result = shell(host, sandbox, f"echo private > /tmp/{marker} && echo private > ~/{marker} && ls /tmp")
    assert result.exit_code == 0
    assert not (Path(tempfile.gettempdir()) / marker).exists(), "the sandbox's /tmp is the host's"
    assert not (Path.home() / marker).exists()
    result = shell(host, sandbox, "grep CapEff /proc/self/status; mount -t tmpfs none /tmp")
    assert result.out == "CapEff:\t0000000000000000\n"
    assert result.exit_code != 0
    # no user namespace of its own either (the kernel surface that would open)
    result = shell(host, sandbox, "unshare --user --map-root-user id")
    assert "unshare failed" in result.err
    assert result.exit_code != 0


def test_another_sandbox_is_out_of_reach(host: Host) -> None:
    alpha = host.sandbox(tenant="org_alpha")
    beta = host.sandbox(tenant="org_beta")
    secret = uuid.uuid4().hex
    shell(host, alpha, f"echo {secret} > secret.txt")
    alpha_dir = host.backend.workspace_dir(alpha)
    result = shell(host, beta, f"cat {alpha_dir}/secret.txt; ls {alpha_dir.parent.parent}")
    assert secret not in result.out
    result = shell(host, beta, "find / -path /proc -prune -o -name secret.txt -print; echo done")
    assert result.out == "done\n"
    result = shell(host, beta, "ls /workspace")
    assert "secret.txt" not in result.out


def test_a_fork_bomb_meets_the_pids_limit(host: Host) -> None:
    sandbox = host.sandbox(pids=64)
    code = """
import os, time
children = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        children += 1
except OSError as error:
    print(f"fork failed after {children} children: {error}")
"""
    started = time.monotonic()
    result = python(host, sandbox, code, timeout=20)
    assert "fork failed after" in result.out
    children = int(result.out.split("after ")[1].split()[0])
    assert children < 64
    bomb = shell(host, sandbox, "bomb() { bomb | bomb & }; bomb; sleep 2; echo survived", timeout=10)
    print(f"  the host is fine: {time.monotonic() - started:.1f}s for both")
    other = host.sandbox()
    assert shell(host, other, "echo the host still runs sandboxes").exit_code == 0
    assert bomb.exit_code is not None


def test_a_memory_hog_is_killed_at_the_limit(host: Host) -> None:
    sandbox = host.sandbox(memory_bytes=64 * MIB)
    result = python(host, sandbox, "x = bytearray(512 * 1024 * 1024); print('allocated')")
    if host.backend.capabilities()["cgroups"].startswith("none"):
        assert result.exit_code != 0  # RLIMIT_AS: MemoryError
        return
    assert "allocated" not in result.out
    assert result.exit_code == -9
    assert result.oom_killed
    assert shell(host, sandbox, "echo the sandbox itself lives on").exit_code == 0


def test_filling_the_disk_stops_at_the_quota(host: Host) -> None:
    if host.backend.capabilities()["disk_quota"] != "loop-ext4":
        pytest.skip("this host cannot enforce the disk quota (not root, or no loop devices)")
    sandbox = host.sandbox(disk_bytes=32 * MIB)
    free_before = shutil.disk_usage(host.root).free
    result = shell(host, sandbox, "dd if=/dev/zero of=/workspace/fill bs=1M count=200; ls -l /workspace/fill")
    assert "No space left on device" in result.err
    size = host.backend.workspace_dir(sandbox) / "fill"
    assert size.stat().st_size <= 32 * MIB
    image = host.backend.workspace_dir(sandbox).parent / "disk.img"
    print(f"  the image takes {image.stat().st_blocks * 512 // MIB} MiB of the host's disk")
    assert image.stat().st_blocks * 512 <= 33 * MIB
    assert free_before - shutil.disk_usage(host.root).free < 64 * MIB
    assert shell(host, sandbox, "rm fill && echo ok > small").exit_code == 0


def test_a_runaway_loop_is_killed_at_the_timeout(host: Host) -> None:
    sandbox = host.sandbox()
    started = time.monotonic()
    result = shell(host, sandbox, "while :; do :; done", timeout=1)
    elapsed = time.monotonic() - started
    print(f"  ended after {elapsed:.2f}s")
    assert result.timed_out
    assert result.exit_code == -9
    assert elapsed < 5


def test_after_stop_no_process_remains(host: Host) -> None:
    sandbox = host.sandbox()
    marker = f"marker-{uuid.uuid4().hex}"
    sleeper = f'python3 -c "import time; time.sleep(600)" {marker}'
    # plain background jobs, a double fork with setsid, and a nohup'd daemon
    shell(host, sandbox, f"{sleeper} > /dev/null 2>&1 &")
    shell(host, sandbox, f"setsid sh -c '({sleeper} > /dev/null 2>&1 &) &' > /dev/null 2>&1")
    shell(host, sandbox, f"nohup setsid {sleeper} > /dev/null 2>&1 &")

    async def terminal() -> None:
        pty = await host.backend.open_pty(sandbox, argv=["/bin/sh", "-c", sleeper], env={}, rows=24, cols=80)
        del pty

    host.call(terminal())
    deadline = time.monotonic() + 5
    while len(host_processes_with(marker)) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    before = host_processes_with(marker)
    print(f"  before stop: {len(before)} host processes carry the marker: {before}")
    assert len(before) >= 5
    host.call(host.backend.stop(sandbox))
    after = host_processes_with(marker)
    print(f"  after stop: {after}")
    assert after == []
    assert not host.backend.is_running(sandbox)


def test_killing_its_own_agent_only_stops_the_sandbox(host: Host) -> None:
    sandbox = host.sandbox()
    result = shell(host, sandbox, "kill -9 -1; kill -9 1; echo still here")
    print(f"  running afterwards: {host.backend.is_running(sandbox)}")
    # whatever the sandbox kills inside itself, the runtime notices, and a start brings it back
    deadline = time.monotonic() + 5
    while host.backend.is_running(sandbox) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert result.exit_code is not None
    host.call(host.backend.start(sandbox))
    assert shell(host, sandbox, "echo back").out == "back\n"
    assert os.path.isdir(host.backend.workspace_dir(sandbox))


def test_a_crashed_runtime_leaves_no_sandbox_process(host: Host) -> None:
    """Sandboxes die with the runtime (bwrap --die-with-parent), even when it is SIGKILLed;
    a new runtime on the same root starts them again with their files."""
    from runtime.client import SandboxSpec
    from tests.runtime_server import start_runtime, stop_runtime

    root = Path(tempfile.mkdtemp(prefix="agentyard-crash-"))
    marker = f"marker-{uuid.uuid4().hex}"
    server = start_runtime(root, log_name="runtime-crash.log")
    try:
        client = server.client()
        client.create_sandbox(SandboxSpec(tenant="org_alpha", sandbox_id="sb-crash"))
        client.start_sandbox("org_alpha", "sb-crash")
        sleeper = f'python3 -c "import time; time.sleep(600)" {marker} > /dev/null 2>&1'
        client.exec("org_alpha", "sb-crash", command=f"echo kept > kept.txt; setsid {sleeper} &")
        client.exec("org_alpha", "sb-crash", command=f"{sleeper} &")
        deadline = time.monotonic() + 5
        while len(host_processes_with(marker)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        print(f"  before the crash: {host_processes_with(marker)}")
        assert len(host_processes_with(marker)) == 2
        client.close()
        server.process.kill()
        server.process.wait()
        deadline = time.monotonic() + 5
        while host_processes_with(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        print(f"  after SIGKILL of the runtime: {host_processes_with(marker)}")
        assert host_processes_with(marker) == []

        server = start_runtime(root, log_name="runtime-crash.log")
        client = server.client()
        client.start_sandbox("org_alpha", "sb-crash")
        assert client.exec("org_alpha", "sb-crash", command="cat kept.txt").stdout == b"kept\n"
        client.destroy_sandbox("org_alpha", "sb-crash")
        client.close()
    finally:
        stop_runtime(server)
        shutil.rmtree(root, ignore_errors=True)
