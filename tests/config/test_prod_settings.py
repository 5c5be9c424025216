"""Production settings, exercised the way an operator meets them: `manage.py` in a fresh process.

The settings are read at import time, so each case needs its own interpreter;
the environment is built from scratch so that the developer's own variables
cannot make a case pass or fail.
"""

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent

# The variables prod.py has no default for, with values an operator might give.
DOCUMENTED_ENV = {
    "SECRET_KEY": secrets.token_urlsafe(50),
    "BASE_DOMAIN": "agentyard.example.com",
    # Never created: `check` does not connect unless given --database.
    "DATABASE_URL": "postgres://agentyard@127.0.0.1:5432/agentyard_prodcheck",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "EMAIL_HOST": "smtp.example.com",
    "RUNTIME_SECRET": secrets.token_urlsafe(32),
}


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {name: os.environ[name] for name in ("PATH", "HOME", "LANG") if name in os.environ}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**base, "DJANGO_SETTINGS_MODULE": "config.settings.prod", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def check_deploy(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return manage("check", "--deploy", "--fail-level", "WARNING", env=env)


def test_check_deploy_passes_with_the_documented_environment() -> None:
    result = check_deploy(DOCUMENTED_ENV)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_fails_when_https_is_not_enforced() -> None:
    # Local compose turns the redirect off; the check must not call that production-ready.
    result = check_deploy({**DOCUMENTED_ENV, "SECURE_SSL_REDIRECT": "false"})

    assert result.returncode != 0
    assert "security.W008" in result.stdout + result.stderr


@pytest.mark.parametrize("missing", sorted(DOCUMENTED_ENV))
def test_a_missing_variable_is_named_in_one_line_without_a_traceback(missing: str) -> None:
    env = {name: value for name, value in DOCUMENTED_ENV.items() if name != missing}

    result = check_deploy(env)

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"error: Set the environment variable {missing}."]


def test_an_empty_variable_counts_as_missing() -> None:
    result = check_deploy({**DOCUMENTED_ENV, "SECRET_KEY": ""})

    assert result.returncode != 0
    assert result.stderr.strip() == "error: Set the environment variable SECRET_KEY."


def test_a_malformed_number_is_named_without_a_traceback() -> None:
    result = check_deploy({**DOCUMENTED_ENV, "EMAIL_PORT": "smtp"})

    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == "error: EMAIL_PORT must be an integer, not 'smtp'."


def test_the_web_server_names_a_missing_variable_in_one_line() -> None:
    """What an operator sees when uvicorn loads the ASGI app with SECRET_KEY unset."""
    env = {name: os.environ[name] for name in ("PATH", "HOME", "LANG") if name in os.environ}
    env.update({key: value for key, value in DOCUMENTED_ENV.items() if key != "SECRET_KEY"})
    env["DJANGO_SETTINGS_MODULE"] = "config.settings.prod"
    result = subprocess.run(
        [sys.executable, "-c", "import config.asgi"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "error: Set the environment variable SECRET_KEY."
