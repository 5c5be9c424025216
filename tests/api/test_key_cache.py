"""The per-process cache of verified API keys: fast, and revocation still bites."""

from datetime import timedelta

import pytest
from django.test import Client, override_settings
from django.utils import timezone

from apps.tenancy import identity
from apps.tenancy.api_keys import _verified
from apps.tenancy.audit import Actor
from apps.tenancy.models import ApiKey
from tests.conftest import World

pytestmark = pytest.mark.django_db


@pytest.fixture
def key(world: World) -> str:
    _verified.clear()
    _, raw = identity.api_key_create(
        actor=Actor(user=world.alice), organization=world.alpha, name="cached", scopes=["organization:read"]
    )
    return raw


def _get(raw: str) -> int:
    return (
        Client(HTTP_HOST="localhost", HTTP_AUTHORIZATION=f"Bearer {raw}")
        .get("/api/v1/organization")
        .status_code
    )


@override_settings(API_KEY_CACHE_SECONDS=60)
def test_a_revoked_key_is_refused_at_once_in_the_process_that_revoked_it(key: str, world: World) -> None:
    assert _get(key) == 200  # now cached
    api_key = ApiKey.objects.get(name="cached")
    identity.api_key_revoke(actor=Actor(user=world.alice), api_key=api_key)
    assert _get(key) == 401


@override_settings(API_KEY_CACHE_SECONDS=60)
def test_a_cached_key_is_not_looked_up_again(key: str) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    assert _get(key) == 200
    with CaptureQueriesContext(connection) as queries:
        assert _get(key) == 200
    assert not [q for q in queries.captured_queries if "tenancy_apikey" in q["sql"] and "SELECT" in q["sql"]]


@override_settings(API_KEY_CACHE_SECONDS=60)
def test_expiry_is_checked_on_every_request_even_when_cached(key: str) -> None:
    assert _get(key) == 200
    for _, cached in _verified.values():
        cached.expires_at = timezone.now() - timedelta(seconds=1)
    assert _get(key) == 401


@override_settings(API_KEY_CACHE_SECONDS=60)
def test_a_wrong_secret_with_a_cached_prefix_is_refused(key: str) -> None:
    assert _get(key) == 200
    prefix = key.rsplit("_", 1)[0] if key.count("_") == 2 else key[: len("ayk_") + 12]
    assert _get(prefix + "_" + "x" * 40) == 401
