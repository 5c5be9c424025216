"""Schemathesis against the live server: generated requests for every operation of
the published schema, in both ways of authenticating, must never get a 5xx, and
every response must be one the schema documents, with the body it documents.

Runs the schemathesis CLI in a subprocess (its own CPU, on a 2-core machine)
against uvicorn serving config.asgi in this process. The data is committed: a
dedicated organization, `fuzz`, whose members and keys the fuzzer may change and
delete, and which is dropped at the end. Its owner cannot be removed: an
organization keeps its last owner (409), and an API key is never an owner.
"""

import os
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from django.contrib.sessions.models import Session
from django.db import connection
from django.test import Client, override_settings
from django.utils.crypto import get_random_string

from apps.accounts.models import User
from apps.tenancy import identity
from apps.tenancy import services as tenancy_services
from apps.tenancy.audit import Actor
from apps.tenancy.models import AuditEvent, Membership, Organization
from tests.conftest import LiveServer, World
from tests.factories import make_user
from tests.runtime_server import RuntimeServer

SLUG = "fuzz"
# Per operation and phase; the whole file stays around a minute on two cores.
MAX_EXAMPLES = "20"
CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance"


@dataclass
class Fuzz:
    organization: Organization
    owner: User
    key: str
    session_cookie: str


def _drop(organization: Organization) -> None:
    organization_id = organization.pk
    tenancy_services.organization_delete(organization=organization)
    # Everyone the fixture made, members or not by now (the fuzzer removes members).
    User.objects.filter(email__endswith=f"@{SLUG}.test").delete()
    # The audit log is append-only for the application; a test's own rows are removed here
    # so the committed test database holds only the shared world.
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {AuditEvent._meta.db_table} WHERE organization_id = %s",  # noqa: S608 (a model's table)
            [organization_id],
        )


@pytest.fixture
def fuzz(asgi_server: LiveServer, live_db: World, runtime_server: RuntimeServer) -> Iterator[Fuzz]:
    # pytest-django sets the test database up only for sessions with a django_db test;
    # without one this would write (and drop organizations) in the real database.
    if not str(connection.settings_dict["NAME"]).startswith("test_"):
        pytest.fail("run with at least one django_db test (this module has one) to get the test database")
    for leftover in Organization.objects.filter(slug=SLUG):
        _drop(leftover)
    owner = make_user("owner@fuzz.test", "Fuzz Owner")
    organization = tenancy_services.organization_create(
        name="Fuzz", slug=SLUG, created_by=owner, provision_async=False
    )
    organization = tenancy_services.organization_provision(organization_id=organization.pk)
    for role in (Membership.Role.ADMIN, Membership.Role.MEMBER, Membership.Role.VIEWER):
        Membership.objects.create(user=make_user(f"{role}@fuzz.test"), organization=organization, role=role)
    _, key = identity.api_key_create(
        actor=Actor(user=owner), organization=organization, name="fuzzer", scopes=["admin"]
    )
    browser = Client()
    browser.force_login(owner)
    session_cookie = browser.cookies["sessionid"].value
    try:
        with override_settings(API_RATE_LIMIT="100000/min"):
            yield Fuzz(organization=organization, owner=owner, key=key, session_cookie=session_cookie)
    finally:
        Session.objects.filter(session_key=session_cookie).delete()
        # The workspaces the fuzzer made have sandboxes on the (real) runtime.
        runtime = runtime_server.client()
        for sandbox in runtime.list_sandboxes(organization.schema_name):
            runtime.destroy_sandbox(organization.schema_name, sandbox.sandbox_id)
        _drop(organization)


@pytest.mark.django_db
def test_the_fuzzer_covers_every_operation_the_api_implements(world: World) -> None:
    import re

    import config.urls_api

    implemented = set()
    for pattern in config.urls_api.urlpatterns:
        view_class = getattr(pattern.callback, "view_class")  # noqa: B009 (as_view() sets it; untyped)
        path = "/api/v1/" + re.sub(r"<(?:int|uuid|slug|str):(\w+)>", r"{\1}", str(pattern.pattern))
        implemented |= {
            (method.upper(), path)
            for method in ("get", "post", "put", "patch", "delete")
            if hasattr(view_class, method)
        }
    schema = Client(HTTP_HOST="localhost").get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    published = {(method.upper(), path) for path, item in schema.json()["paths"].items() for method in item}
    assert published == implemented


def _schemathesis(server: LiveServer, base_url: str, headers: list[str]) -> subprocess.CompletedProcess[str]:
    # Loaded from the live public host here, not by schemathesis: it would send the
    # headers below with it, and the Host header names the organization's host.
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/api/schema/?format=json") as response:
        schema = response.read()
    # Its own working directory: schemathesis keeps state (.schemathesis/) where it runs.
    with tempfile.TemporaryDirectory(prefix="schemathesis-") as workdir:
        schema_file = os.path.join(workdir, "schema.json")
        with open(schema_file, "wb") as file:
            file.write(schema)
        command = [
            sys.executable, "-c", "from schemathesis.cli import schemathesis as st; st()",
            "run", schema_file,
            "--url", base_url,
            "--checks", CHECKS,
            "--max-examples", MAX_EXAMPLES,
            "--phases", "examples,coverage,fuzzing,stateful",
            "--seed", "20240601",
            "--no-shrink",
            "--workers", "1",
            "--request-timeout", "15",
            "--output-truncate", "true",
        ]  # fmt: skip
        for header in headers:
            command += ["--header", header]
        return subprocess.run(command, capture_output=True, text=True, timeout=240, check=False, cwd=workdir)


def _assert_clean(result: subprocess.CompletedProcess[str]) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-12000:]
    assert "No issues found" in output or "passed" in output.lower(), output[-4000:]


def test_generated_requests_with_an_api_key_get_no_5xx_and_only_documented_responses(
    fuzz: Fuzz, asgi_server: LiveServer
) -> None:
    # Host localhost: the public API host, where the key alone selects the organization.
    result = _schemathesis(
        asgi_server, f"http://localhost:{asgi_server.port}", [f"Authorization: Bearer {fuzz.key}"]
    )
    _assert_clean(result)
    # The fuzzer ran as the key: it wrote to the fuzz organization's audit log, and nowhere else.
    assert AuditEvent.objects.filter(organization=fuzz.organization).exclude(api_key=None).exists()
    assert Membership.objects.filter(organization=fuzz.organization, user=fuzz.owner).exists()


def test_generated_requests_with_a_browser_session_get_no_5xx_and_only_documented_responses(
    fuzz: Fuzz, asgi_server: LiveServer
) -> None:
    # Alone, the owner has no one to hand ownership to, demote or be replaced by:
    # the session stays usable for the whole run.
    Membership.objects.filter(organization=fuzz.organization).exclude(user=fuzz.owner).delete()
    csrf = get_random_string(32)
    # *.localhost may not resolve here (glibc); connect to 127.0.0.1 and name the host.
    result = _schemathesis(
        asgi_server,
        f"http://127.0.0.1:{asgi_server.port}",
        [
            f"Host: {SLUG}.localhost:{asgi_server.port}",
            f"Cookie: sessionid={fuzz.session_cookie}; csrftoken={csrf}",
            f"X-CSRFToken: {csrf}",
        ],
    )
    _assert_clean(result)
    assert AuditEvent.objects.filter(organization=fuzz.organization, actor=fuzz.owner).exists()
    assert Membership.objects.filter(
        organization=fuzz.organization, user=fuzz.owner, role=Membership.Role.OWNER
    ).exists()
