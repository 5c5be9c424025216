"""`manage.py seed_demo` gives the demo organization a "demo" workspace, in the
database only (the runtime may not be up yet); starting it makes its sandbox."""

import io
from pathlib import Path

import pytest
from django.core.management import call_command

from apps.tenancy.audit import Actor
from apps.tenancy.models import Organization
from apps.workspaces import services
from apps.workspaces.models import Workspace
from apps.workspaces.runtime import runtime_client
from tests.runtime_server import RuntimeServer
from tests.workspaces.conftest import in_schema

pytestmark = pytest.mark.django_db


def test_seed_demo_makes_one_demo_workspace_that_starts_on_demand(
    tmp_path: Path, runtime_server: RuntimeServer
) -> None:
    for _ in range(2):  # idempotent
        call_command("seed_demo", credentials=tmp_path / "credentials.json", stdout=io.StringIO())
    demo = Organization.objects.get(slug="demo")
    with in_schema(demo):
        workspace = Workspace.objects.get(name="demo")
        assert workspace.state == "provisioning"
        assert Workspace.objects.count() == 1
        started = services.workspace_start(actor=Actor(), organization=demo, workspace=workspace)
        try:
            assert started.state == "running"
            assert runtime_client().get_sandbox(demo.schema_name, workspace.sandbox_id).running
        finally:
            runtime_client().destroy_sandbox(demo.schema_name, workspace.sandbox_id)
