"""`python -m runtime`'s settings: what an operator sees when one is wrong."""

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from runtime.config import GIB, MIB, ConfigError, load

ROOT = Path(__file__).resolve().parent.parent.parent
SECRET = "a-secret-of-enough-length"


def _run_runtime(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("RUNTIME_")}
    root = tempfile.mkdtemp(prefix="agentyard-runtime-config-")
    return subprocess.run(
        [sys.executable, "-m", "runtime"],
        cwd=ROOT,
        env={**clean, "RUNTIME_ROOT": root, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "RUNTIME_SECRET is not set"),
        ({"RUNTIME_SECRET": "short"}, "RUNTIME_SECRET must be at least 16 characters"),
        (
            {"RUNTIME_SECRET": SECRET, "RUNTIME_BACKEND": "kvm"},
            "RUNTIME_BACKEND must be one of bwrap, docker",
        ),
        ({"RUNTIME_SECRET": SECRET, "RUNTIME_LISTEN": "50061"}, "RUNTIME_LISTEN must be host:port"),
        ({"RUNTIME_SECRET": SECRET, "RUNTIME_MEMORY": "lots"}, "RUNTIME_MEMORY must be a size"),
        ({"RUNTIME_SECRET": SECRET, "RUNTIME_CPUS": "8"}, "RUNTIME_CPUS (8) is above RUNTIME_MAX_CPUS (2)"),
        ({"RUNTIME_SECRET": SECRET, "RUNTIME_PIDS": "0"}, "RUNTIME_PIDS must be at least 1"),
    ],
)
def test_a_bad_setting_is_one_line_and_exit_status_2(env, message):
    result = _run_runtime(env)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("runtime: ")
    assert message in result.stderr


def test_a_port_in_use_is_one_line_and_exit_status_1():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run_runtime({"RUNTIME_SECRET": SECRET, "RUNTIME_LISTEN": f"127.0.0.1:{port}"})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"runtime: cannot listen on 127.0.0.1:{port} (in use, or not an address of this host)"
    )


def test_sizes_and_limits_read_with_units_and_defaults():
    config = load(
        {
            "RUNTIME_SECRET": SECRET,
            "RUNTIME_MEMORY": "512M",
            "RUNTIME_MAX_DISK": "50GiB",
            "RUNTIME_MAX_CPUS": "4",
        }
    )
    assert config.memory_bytes.default == 512 * MIB
    assert config.memory_bytes.maximum == 4 * GIB
    assert config.disk_bytes.maximum == 50 * GIB
    assert (config.cpus.default, config.cpus.maximum) == (1, 4)
    assert config.exec_output_bytes.default == MIB
    assert (config.backend, config.listen, config.sandbox_uid) == ("bwrap", "127.0.0.1:50061", 65534)
    with pytest.raises(ConfigError, match="RUNTIME_DOCKER_ALLOW_SOCKET must be true or false"):
        load({"RUNTIME_SECRET": SECRET, "RUNTIME_DOCKER_ALLOW_SOCKET": "maybe"})
