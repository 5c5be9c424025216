"""Too many requests from one key or one person get 429 with Retry-After."""

import pytest
from django.test import override_settings

from tests.api.conftest import API, error_of, key_client, new_key
from tests.conftest import World, client_for

pytestmark = pytest.mark.django_db


@override_settings(API_RATE_LIMIT="3/min")
def test_a_key_over_its_rate_gets_429_with_retry_after(world: World) -> None:
    _, raw = new_key(world, ["organization:read"])
    client = key_client(raw)
    assert [client.get(f"{API}/organization").status_code for _ in range(3)] == [200, 200, 200]
    response = client.get(f"{API}/organization")
    assert response.status_code == 429
    assert error_of(response)["code"] == "throttled"
    assert 0 < int(response.headers["Retry-After"]) <= 60


@override_settings(API_RATE_LIMIT="3/min")
def test_each_key_has_its_own_budget(world: World) -> None:
    _, first = new_key(world, ["organization:read"], name="first")
    _, second = new_key(world, ["organization:read"], name="second")
    for _ in range(4):
        key_client(first).get(f"{API}/organization")
    assert key_client(second).get(f"{API}/organization").status_code == 200


@override_settings(API_RATE_LIMIT="3/min")
def test_a_session_over_its_rate_gets_429(world: World) -> None:
    client = client_for(world.amy, world.alpha)
    statuses = [client.get(f"{API}/members").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
