"""/api/v1/api-keys: creating keys (the secret shown once), listing, revoking."""

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from apps.tenancy.models import ApiKey, AuditEvent
from tests.api.conftest import API, error_of, key_client, new_key, send_json
from tests.conftest import World

pytestmark = pytest.mark.django_db


def test_a_new_key_is_shown_once_and_works_at_once(world: World, admin_client: Client) -> None:
    response = send_json(admin_client, "post", "/api-keys", {"name": "ci", "scopes": ["members:read"]})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["key"].startswith("ayk_" + body["prefix"] + "_")
    assert body["scopes"] == ["members:read"]
    assert body["status"] == "active"
    assert key_client(body["key"]).get(f"{API}/members").status_code == 200
    assert "key" not in admin_client.get(f"{API}/api-keys/{body['id']}").json()
    event = AuditEvent.objects.get(
        organization=world.alpha, action="api_key.created", target_id=str(body["id"])
    )
    assert event.changes["after"]["scopes"] == ["members:read"]
    assert body["key"] not in str(event.changes)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "scopes": ["root"]}, "scopes"),
        ({"name": "x", "scopes": []}, "scopes"),
        ({"name": "x", "scopes": "admin"}, "scopes"),
        ({"name": "x"}, "scopes"),
        ({"name": "", "scopes": ["admin"]}, "name"),
        ({"name": "x", "scopes": ["admin"], "expires_at": "soon"}, "expires_at"),
        ({"name": "x", "scopes": ["admin"], "expires_at": "2000-01-01T00:00:00Z"}, "expires_at"),
        ({"name": "x", "scopes": ["admin"], "owner": "me"}, "owner"),
    ],
)
def test_a_bad_key_request_is_a_400_on_the_field(
    world: World, admin_client: Client, body: dict[str, Any], field: str
) -> None:
    count = ApiKey.objects.count()
    response = send_json(admin_client, "post", "/api-keys", body)
    assert response.status_code == 400, response.content
    assert field in error_of(response)["fields"]
    assert ApiKey.objects.count() == count


def test_a_key_cannot_mint_a_key_with_more_scopes_than_it_has(world: World) -> None:
    _, raw = new_key(world, ["api_keys:write"])
    response = send_json(key_client(raw), "post", "/api-keys", {"name": "x", "scopes": ["admin"]})
    assert response.status_code == 403
    assert error_of(response)["code"] == "scope_escalation"


def test_a_key_with_an_expiry_reports_it_and_expires(world: World, admin_client: Client) -> None:
    expires = timezone.now() + timedelta(hours=1)
    body = send_json(
        admin_client,
        "post",
        "/api-keys",
        {"name": "temp", "scopes": ["admin"], "expires_at": expires.isoformat()},
    ).json()
    assert body["expires_at"] is not None
    ApiKey.objects.filter(pk=body["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert admin_client.get(f"{API}/api-keys/{body['id']}").json()["status"] == "expired"


def test_revoking_a_key_stops_it_and_revoking_again_changes_nothing(
    world: World, admin_client: Client
) -> None:
    api_key, raw = new_key(world, ["members:read"], name="to revoke")
    response = admin_client.delete(f"{API}/api-keys/{api_key.pk}")
    assert response.status_code == 200
    assert response.json()["status"] == "revoked"
    assert key_client(raw).get(f"{API}/members").status_code == 401
    assert admin_client.delete(f"{API}/api-keys/{api_key.pk}").status_code == 200
    assert AuditEvent.objects.filter(action="api_key.revoked", target_id=str(api_key.pk)).count() == 1


def test_keys_of_another_organization_are_invisible(world: World, admin_client: Client) -> None:
    theirs, _ = new_key(world, ["admin"], organization=world.beta, name="beta's")
    assert admin_client.get(f"{API}/api-keys/{theirs.pk}").status_code == 404
    assert admin_client.delete(f"{API}/api-keys/{theirs.pk}").status_code == 404
    names = {row["name"] for row in admin_client.get(f"{API}/api-keys").json()["results"]}
    assert "beta's" not in names
    theirs.refresh_from_db()
    assert theirs.revoked_at is None
