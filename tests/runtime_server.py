"""A real runtime service (`python -m runtime`) for the tests, one per session.

It listens on a free loopback port with its own secret and sandbox root, and the
Django settings of the test process (and the Celery worker, through the
environment) point at it."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings

from runtime.client import RuntimeClient, RuntimeServiceError

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


@dataclass
class RuntimeServer:
    address: str
    secret: str
    root: Path
    process: subprocess.Popen[bytes]

    def client(self, secret: str | None = None) -> RuntimeClient:
        return RuntimeClient(self.address, self.secret if secret is None else secret)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Fixed for the session before anything starts, so a Celery worker started before the
# runtime already has the address in its environment.
SESSION_ADDRESS = f"127.0.0.1:{_free_port()}"
SESSION_SECRET = "test-runtime-secret-" + os.urandom(8).hex()
os.environ["RUNTIME_ADDRESS"], os.environ["RUNTIME_SECRET"] = SESSION_ADDRESS, SESSION_SECRET


def start_runtime(
    root: Path,
    *,
    backend: str = "bwrap",
    log_name: str = "runtime.log",
    address: str | None = None,
    secret: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> RuntimeServer:
    address = address or f"127.0.0.1:{_free_port()}"
    secret = secret or "test-runtime-secret-" + os.urandom(8).hex()
    env = {
        **os.environ,
        "RUNTIME_LISTEN": address,
        "RUNTIME_SECRET": secret,
        "RUNTIME_ROOT": str(root),
        "RUNTIME_BACKEND": backend,
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    ARTIFACTS.mkdir(exist_ok=True)
    log = (ARTIFACTS / log_name).open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "runtime"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    log.close()
    server = RuntimeServer(address=address, secret=secret, root=root, process=process)
    client = server.client()
    deadline = time.monotonic() + 30
    while True:
        try:
            client.health()
            break
        except RuntimeServiceError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"the runtime did not start; see test-artifacts/{log_name}") from None
            time.sleep(0.05)
    client.close()
    return server


def stop_runtime(server: RuntimeServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
    unmount_under(server.root)


def unmount_under(root: Path) -> None:
    """Detach workspace disk images a killed runtime left mounted, so deleting its root frees them."""
    prefix = str(root.resolve()) + "/"
    with open("/proc/mounts") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
    for point in sorted(points, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


@pytest.fixture(scope="session")
def runtime_server() -> Iterator[RuntimeServer]:
    """The runtime with the bwrap backend; Django's RUNTIME_* settings point at it."""
    root = Path(tempfile.mkdtemp(prefix="agentyard-runtime-"))
    server = start_runtime(root, address=SESSION_ADDRESS, secret=SESSION_SECRET)
    previous = settings.RUNTIME_ADDRESS, settings.RUNTIME_SECRET
    settings.RUNTIME_ADDRESS, settings.RUNTIME_SECRET = server.address, server.secret
    try:
        yield server
    finally:
        settings.RUNTIME_ADDRESS, settings.RUNTIME_SECRET = previous
        stop_runtime(server)
        shutil.rmtree(root, ignore_errors=True)
