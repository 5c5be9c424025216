"""Organization secrets: set and replaced through the API, listed by name only,
encrypted at rest (the raw column never holds the value), managers only."""

import pytest
from django.db import connection
from django.test import Client

from apps.workspaces.models import Secret
from tests.api.conftest import error_of, key_client, new_key
from tests.conftest import World, client_for
from tests.workspaces.conftest import api_call, in_schema

pytestmark = pytest.mark.django_db

VALUE = "ghp_the-real-token-value-1234567890"


def test_a_secret_is_stored_encrypted_and_never_shown_back(world: World, alpha_api: Client) -> None:
    created = api_call(alpha_api, "post", "/secrets", {"name": "GIT_TOKEN", "value": VALUE})
    assert created.status_code == 200, created.content
    assert set(created.json()) == {"id", "name", "created_at", "updated_at"}
    listed = api_call(alpha_api, "get", "/secrets")
    assert [item["name"] for item in listed.json()["results"]] == ["GIT_TOKEN"]
    assert VALUE not in listed.content.decode()

    with in_schema(world.alpha), connection.cursor() as cursor:
        cursor.execute(f"SELECT value_encrypted FROM {Secret._meta.db_table} WHERE name = 'GIT_TOKEN'")  # noqa: S608
        (raw,) = cursor.fetchone()
    assert VALUE not in raw
    assert "ghp_" not in raw

    replaced = api_call(alpha_api, "post", "/secrets", {"name": "GIT_TOKEN", "value": "another"})
    assert replaced.status_code == 200
    with in_schema(world.alpha):
        from apps.workspaces.services import secret_value

        assert secret_value(name="GIT_TOKEN") == "another"
        assert Secret.objects.count() == 1


def test_secret_names_are_checked_and_deleting_one_works_once(world: World, alpha_api: Client) -> None:
    bad = api_call(alpha_api, "post", "/secrets", {"name": "no spaces", "value": "x"})
    assert bad.status_code == 400
    assert "name" in error_of(bad)["fields"]
    secret_id = api_call(alpha_api, "post", "/secrets", {"name": "TO_GO", "value": "x"}).json()["id"]
    assert api_call(alpha_api, "delete", f"/secrets/{secret_id}").status_code == 204
    assert api_call(alpha_api, "delete", f"/secrets/{secret_id}").status_code == 404


def test_members_cannot_see_or_set_secrets_and_beta_cannot_reach_alphas(
    world: World, alpha_api: Client, beta_api: Client
) -> None:
    secret_id = api_call(alpha_api, "post", "/secrets", {"name": "ALPHA_ONLY", "value": VALUE}).json()["id"]
    member = client_for(world.amy, world.alpha)
    assert member.get("/api/v1/secrets").status_code == 403
    assert api_call(beta_api, "delete", f"/secrets/{secret_id}").status_code == 404
    assert "ALPHA_ONLY" not in api_call(beta_api, "get", "/secrets").content.decode()
    _, read_only = new_key(world, ["workspaces:write"], name="no secrets scope")
    assert key_client(read_only).get("/api/v1/secrets").status_code == 403
