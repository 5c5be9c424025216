"""Helpers for the REST API tests: keys made through the real service, clients that
send them, and a clean throttle budget for every test."""

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.core.cache import cache
from django.test import Client

from apps.tenancy import identity
from apps.tenancy.audit import Actor
from apps.tenancy.models import ApiKey, Organization
from tests.conftest import World, host

API = "/api/v1"


def throttle_reset() -> None:
    """Forget every API throttle counter. Only those: the same Redis database holds
    the test worker's queue and heartbeats, which a flush would wipe."""
    client = cache._cache.get_client(write=True)  # type: ignore[attr-defined]
    keys = list(client.scan_iter(match="*throttle:*"))
    if keys:
        client.delete(*keys)


@pytest.fixture(autouse=True)
def _fresh_throttle() -> Iterator[None]:
    """Throttle counters live in Redis and would otherwise carry over between tests."""
    throttle_reset()
    yield
    throttle_reset()


def new_key(
    world: World,
    scopes: list[str],
    *,
    organization: Organization | None = None,
    name: str = "test key",
    **kwargs: Any,
) -> tuple[ApiKey, str]:
    organization = organization or world.alpha
    owner = world.alice if organization == world.alpha else world.bob
    return identity.api_key_create(
        actor=Actor(user=owner), organization=organization, name=name, scopes=scopes, **kwargs
    )


def key_client(raw: str, organization: Organization | None = None, **extra: Any) -> Client:
    """A client that sends the key, on the public host (the key selects the organization)
    or on an organization's host."""
    return Client(HTTP_HOST=host(organization), HTTP_AUTHORIZATION=f"Bearer {raw}", **extra)


KeyClient = Callable[..., Client]


@pytest.fixture
def admin_client(world: World) -> Client:
    """Alpha's admin-scoped key, on the public host."""
    _, raw = new_key(world, ["admin"], name="admin")
    return key_client(raw)


def send_json(client: Client, method: str, path: str, body: Any, **extra: Any) -> Any:
    return getattr(client, method)(
        API + path, data=json.dumps(body), content_type="application/json", **extra
    )


def error_of(response: Any) -> dict[str, Any]:
    """The error body every API error shares; fails the test if the shape differs."""
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"code", "message", "fields"}, error
    assert isinstance(error["message"], str)
    assert error["message"]
    return error
