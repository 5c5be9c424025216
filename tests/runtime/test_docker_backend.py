"""The docker backend: the container it asks for, and what happens without an engine.

There is no Docker engine on this machine. What is tested: the container configuration
(a pure function), the create request the real docker SDK sends to a loopback fake
Engine (tests/fakes/docker_engine.py) through the real runtime process, and the error
path with DOCKER_HOST pointing at a closed socket. Not tested: exec and terminals
against a real engine (attach/exec streams, the timeout kill by host pid) and the
quotas being enforced by a real kernel.
"""

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.backends.base import SandboxConfig
from runtime.backends.docker import DOCKER_SOCKET, container_config, container_name, network_name
from runtime.client import RuntimeUnavailable, SandboxSpec
from runtime.config import GIB, RuntimeConfig, load
from tests.fakes.docker_engine import FakeDockerEngine, fake_docker_engine
from tests.runtime_server import RuntimeServer, start_runtime, stop_runtime

ALPHA = "org_alpha"


def _sandbox(**overrides: object) -> SandboxConfig:
    values: dict[str, object] = {
        "tenant": ALPHA,
        "sandbox_id": "ws-1",
        "template": "base",
        "cpus": 1.5,
        "memory_bytes": 2 * GIB,
        "disk_bytes": 4 * GIB,
        "pids": 300,
        "env": {"LANG": "C.UTF-8"},
    }
    values.update(overrides)
    return SandboxConfig(**values)  # type: ignore[arg-type]


def _runtime(**overrides: str) -> RuntimeConfig:
    return load({"RUNTIME_SECRET": "s" * 32, "RUNTIME_BACKEND": "docker", **overrides})


def test_the_container_has_the_quotas_and_no_privilege_at_all():
    built = container_config(_sandbox(), _runtime(), workspace=Path("/srv/ws-1"))
    assert built["nano_cpus"] == 1_500_000_000
    assert built["mem_limit"] == built["memswap_limit"] == 2 * GIB
    assert built["pids_limit"] == 300
    assert built["privileged"] is False
    assert built["cap_drop"] == ["ALL"]
    assert "cap_add" not in built
    assert built["security_opt"] == ["no-new-privileges:true"]
    assert built["read_only"] is True
    assert set(built["tmpfs"]) == {"/tmp"}  # noqa: S108 (inside the container)
    assert built["user"] == "65534:65534"
    assert built["network_mode"] == "none"
    assert built["volumes"] == {"/srv/ws-1": {"bind": "/workspace", "mode": "rw"}}
    assert built["image"] == "agentyard/workspace:latest"


def test_the_docker_socket_is_mounted_only_when_explicitly_allowed():
    plain = container_config(_sandbox(), _runtime(), workspace=Path("/srv/ws-1"))
    assert DOCKER_SOCKET not in plain["volumes"]
    allowed = container_config(
        _sandbox(), _runtime(RUNTIME_DOCKER_ALLOW_SOCKET="1"), workspace=Path("/srv/ws-1")
    )
    assert allowed["volumes"][DOCKER_SOCKET]["bind"] == DOCKER_SOCKET


def test_an_allow_list_puts_the_container_on_a_network_of_its_own_and_templates_pick_images():
    config = _sandbox(allow=["pypi.org:443"], template="python")
    runtime = _runtime(RUNTIME_DOCKER_IMAGES="python=agentyard/python:3.11")
    built = container_config(config, runtime, workspace=Path("/srv/ws-1"))
    assert built["network_mode"] == network_name(config)
    assert built["image"] == "agentyard/python:3.11"


# -- through the runtime process --------------------------------------------------------------------


@pytest.fixture
def runtime_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="agentyard-runtime-docker-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _docker_runtime(root: Path, docker_host: str) -> RuntimeServer:
    return start_runtime(
        root, backend="docker", log_name="runtime-docker.log", extra_env={"DOCKER_HOST": docker_host}
    )


def test_without_an_engine_every_call_says_so_in_one_clear_message(runtime_root):
    closed = f"unix://{runtime_root}/nothing-listens-here.sock"
    server = _docker_runtime(runtime_root, closed)
    client = server.client()
    try:
        health = client.health()
        assert (health["status"], health["backend"]) == ("unavailable", "docker")
        assert health["capabilities"]["error"].startswith(f"no Docker engine at {closed}: ")
        with pytest.raises(RuntimeUnavailable, match=f"^no Docker engine at {closed}: ") as raised:
            client.create_sandbox(SandboxSpec(tenant=ALPHA, sandbox_id="ws-1"))
        assert "\n" not in str(raised.value)
        assert client.list_sandboxes(ALPHA) == []
        assert not (runtime_root / "sandboxes" / ALPHA).exists()
    finally:
        client.close()
        stop_runtime(server)


def test_the_sdk_asks_a_real_engine_api_for_a_confined_container(runtime_root):
    with fake_docker_engine() as engine:
        server = _docker_runtime(runtime_root, engine.url)
        client = server.client()
        try:
            assert client.health()["status"] == "ok"
            client.create_sandbox(SandboxSpec(tenant=ALPHA, sandbox_id="ws-1", cpus=2, pids=123))
            info = client.start_sandbox(ALPHA, "ws-1")
            assert info.running

            created = _only_container(engine)
            host = created.body["HostConfig"]
            assert created.name == container_name(_sandbox()) == "agentyard-org-alpha-ws-1"
            assert host["NanoCpus"] == 2_000_000_000
            assert host["Memory"] == host["MemorySwap"] == info.memory_bytes
            assert host["PidsLimit"] == 123
            assert host.get("Privileged", False) is False
            assert host["CapDrop"] == ["ALL"]
            assert host["SecurityOpt"] == ["no-new-privileges:true"]
            assert host["ReadonlyRootfs"] is True
            assert host["NetworkMode"] == "none"
            workspace = runtime_root / "sandboxes" / ALPHA / "ws-1" / "workspace"
            assert host["Binds"] == [f"{workspace}:/workspace:rw"]
            assert not any("docker.sock" in bind for bind in host["Binds"])

            # Files live on the host directory, so they work whatever the container does.
            client.write_file(ALPHA, "ws-1", "hello.txt", b"hi")
            assert (workspace / "hello.txt").read_bytes() == b"hi"

            stopped = client.stop_sandbox(ALPHA, "ws-1")
            assert stopped.state == "stopped"
            assert engine.containers == {}
            assert engine.removed == [created.name]
            assert client.destroy_sandbox(ALPHA, "ws-1") is True
            assert not workspace.exists()
        finally:
            client.close()
            stop_runtime(server)


def test_an_allow_list_gets_an_internal_network_that_goes_away_on_stop(runtime_root):
    with fake_docker_engine() as engine:
        server = _docker_runtime(runtime_root, engine.url)
        client = server.client()
        try:
            client.create_sandbox(SandboxSpec(tenant=ALPHA, sandbox_id="ws-2", allow=["pypi.org:443"]))
            client.start_sandbox(ALPHA, "ws-2")
            (network,) = engine.networks.values()
            assert network.body["Internal"] is True
            assert _only_container(engine).body["HostConfig"]["NetworkMode"] == network.name
            client.stop_sandbox(ALPHA, "ws-2")
            assert engine.networks == {}
            client.destroy_sandbox(ALPHA, "ws-2")
        finally:
            client.close()
            stop_runtime(server)


def test_a_missing_image_is_a_clear_error_and_leaves_the_sandbox_stopped(runtime_root):
    with fake_docker_engine() as engine:
        engine.images.clear()
        server = _docker_runtime(runtime_root, engine.url)
        client = server.client()
        try:
            client.create_sandbox(SandboxSpec(tenant=ALPHA, sandbox_id="ws-3"))
            with pytest.raises(RuntimeUnavailable, match="image"):
                client.start_sandbox(ALPHA, "ws-3")
            assert client.get_sandbox(ALPHA, "ws-3").state == "stopped"
            assert engine.containers == {}
            client.destroy_sandbox(ALPHA, "ws-3")
        finally:
            client.close()
            stop_runtime(server)


def _only_container(engine: FakeDockerEngine):
    (container,) = engine.containers.values()
    return container
