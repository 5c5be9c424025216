"""Helpers for the workspace tests: Alpha's and Beta's API clients, workspaces made
through the real services (and destroyed on the real runtime afterwards), and a
runtime address where nothing listens."""

import json
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import pytest
from django.test import Client, override_settings
from django_tenants.utils import schema_context

from apps.tenancy.audit import Actor
from apps.tenancy.models import Organization
from apps.workspaces import services
from apps.workspaces.models import Workspace
from apps.workspaces.runtime import runtime_client
from tests.api.conftest import key_client, new_key, throttle_reset
from tests.conftest import World, free_port

API = "/api/v1"


@pytest.fixture(autouse=True)
def _fresh_throttle() -> Iterator[None]:
    throttle_reset()
    yield
    throttle_reset()


@contextmanager
def in_schema(organization: Organization) -> Iterator[None]:
    with schema_context(organization.schema_name):
        yield


def api_call(client: Client, method: str, path: str, body: Any = None, **extra: Any) -> Any:
    if body is None:
        return getattr(client, method)(API + path, **extra)
    return getattr(client, method)(
        API + path, data=json.dumps(body), content_type="application/json", **extra
    )


@pytest.fixture
def alpha_api(world: World) -> Client:
    """Alpha's admin-scoped API key, on the public host (the key selects Alpha)."""
    _, raw = new_key(world, ["admin"], name="workspaces admin")
    return key_client(raw)


@pytest.fixture
def beta_api(world: World) -> Client:
    _, raw = new_key(world, ["admin"], organization=world.beta, name="beta admin")
    return key_client(raw)


@pytest.fixture
def runtime_down() -> Iterator[str]:
    """Django's runtime settings pointed at a loopback port where nothing listens."""
    address = f"127.0.0.1:{free_port()}"
    with override_settings(RUNTIME_ADDRESS=address):
        yield address


def make_workspace(world: World, organization: Organization | None = None, **kwargs: Any) -> Workspace:
    """Through the real service, in the organization's schema (Alpha's by default)."""
    organization = organization or world.alpha
    owner = world.alice if organization == world.alpha else world.bob
    kwargs.setdefault("name", "ws-" + str(abs(hash((organization.pk, len(kwargs), id(kwargs)))) % 10**8))
    kwargs.setdefault("memory_mb", 512)
    kwargs.setdefault("disk_mb", 256)
    with in_schema(organization):
        return services.workspace_create(actor=Actor(user=owner), organization=organization, **kwargs)


Cleanup = list[tuple[Organization, Workspace]]


@pytest.fixture
def workspaces_cleanup(world: World) -> Iterator[Cleanup]:
    """Workspaces a test made on the runtime; destroyed there afterwards (their rows roll back)."""
    made: list[tuple[Organization, Workspace]] = []
    yield made
    from runtime.client import RuntimeServiceError

    for organization, workspace in made:
        with in_schema(organization), suppress(RuntimeServiceError):
            runtime_client().destroy_sandbox(organization.schema_name, workspace.sandbox_id)


@pytest.fixture
def running(world: World, runtime_server: Any, workspaces_cleanup: Cleanup) -> Workspace:
    """A running workspace of Alpha on the real runtime."""
    workspace = make_workspace(world, name="running-one")
    workspaces_cleanup.append((world.alpha, workspace))
    return workspace
