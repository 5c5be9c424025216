"""GET/PATCH /api/v1/organization: reading, renaming with optimistic concurrency,
and what bad input gets back."""

from typing import Any

import pytest
from django.test import Client

from apps.tenancy.models import AuditEvent, Organization
from tests.api.conftest import API, error_of, send_json
from tests.conftest import World

pytestmark = pytest.mark.django_db


def test_reading_the_organization_gives_its_fields_and_an_etag(world: World, admin_client: Client) -> None:
    response = admin_client.get(f"{API}/organization")
    assert response.status_code == 200
    assert response.json()["name"] == "Alpha"
    assert response.json()["slug"] == "alpha"
    assert response.json()["status"] == "active"
    assert response.headers["ETag"].startswith('"')
    assert response.headers["Last-Modified"]


def test_renaming_with_the_current_etag_succeeds_and_changes_the_etag(
    world: World, admin_client: Client
) -> None:
    etag = admin_client.get(f"{API}/organization").headers["ETag"]
    response = send_json(admin_client, "patch", "/organization", {"name": "Alpha Two"}, HTTP_IF_MATCH=etag)
    assert response.status_code == 200, response.content
    assert response.json()["name"] == "Alpha Two"
    assert response.headers["ETag"] != etag
    assert Organization.objects.get(pk=world.alpha.pk).name == "Alpha Two"


def test_renaming_with_a_stale_etag_is_refused_with_412_and_changes_nothing(
    world: World, admin_client: Client
) -> None:
    stale = admin_client.get(f"{API}/organization").headers["ETag"]
    assert send_json(admin_client, "patch", "/organization", {"name": "First"}).status_code == 200
    response = send_json(admin_client, "patch", "/organization", {"name": "Second"}, HTTP_IF_MATCH=stale)
    assert response.status_code == 412
    error = error_of(response)
    assert error["code"] == "precondition_failed"
    assert "read it again" in error["message"]
    assert Organization.objects.get(pk=world.alpha.pk).name == "First"


def test_an_if_unmodified_since_that_is_not_a_date_is_a_400(world: World, admin_client: Client) -> None:
    response = send_json(
        admin_client, "patch", "/organization", {"name": "X"}, HTTP_IF_UNMODIFIED_SINCE="yesterday"
    )
    assert response.status_code == 400
    assert "If-Unmodified-Since" in error_of(response)["fields"]


def test_malformed_json_is_a_400_saying_so(world: World, admin_client: Client) -> None:
    response = admin_client.patch(f"{API}/organization", data='{"name": ', content_type="application/json")
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "parse_error"
    assert "JSON" in error["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": ["a", "list"]}, "name"),
        ({"name": {"an": "object"}}, "name"),
        ({"name": None}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x" * 101}, "name"),
    ],
)
def test_a_name_of_the_wrong_type_or_size_is_a_400_on_that_field(
    world: World, admin_client: Client, body: dict[str, Any], field: str
) -> None:
    response = send_json(admin_client, "patch", "/organization", body)
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid"
    assert list(error["fields"]) == [field]
    assert Organization.objects.get(pk=world.alpha.pk).name == "Alpha"


def test_an_empty_patch_changes_nothing(world: World, admin_client: Client) -> None:
    etag = admin_client.get(f"{API}/organization").headers["ETag"]
    response = send_json(admin_client, "patch", "/organization", {})
    assert response.status_code == 200
    assert response.json()["name"] == "Alpha"
    assert response.headers["ETag"] == etag
    assert not AuditEvent.objects.filter(organization=world.alpha, action="organization.updated").exists()


def test_unknown_fields_are_a_400_naming_each(world: World, admin_client: Client) -> None:
    response = send_json(admin_client, "patch", "/organization", {"name": "Ok", "slug": "x", "colour": 1})
    assert response.status_code == 400
    fields = error_of(response)["fields"]
    assert fields == {"colour": ["Unknown field."], "slug": ["Unknown field."]}


@pytest.mark.parametrize("body", [[], ["name"], "name", 42, None])
def test_a_body_that_is_not_an_object_is_a_400(world: World, admin_client: Client, body: Any) -> None:
    response = send_json(admin_client, "patch", "/organization", body)
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid"


def test_a_body_in_another_format_is_a_415(world: World, admin_client: Client) -> None:
    response = admin_client.patch(f"{API}/organization", data="name=X", content_type="text/plain")
    assert response.status_code == 415
    assert error_of(response)["code"] == "unsupported_media_type"


def test_a_method_the_endpoint_lacks_is_a_405(world: World, admin_client: Client) -> None:
    response = admin_client.delete(f"{API}/organization")
    assert response.status_code == 405
    assert error_of(response)["code"] == "method_not_allowed"


def test_renaming_is_audited_with_the_key_ip_user_agent_and_request_id(world: World) -> None:
    from tests.api.conftest import key_client, new_key

    api_key, raw = new_key(world, ["organization:write"])
    client = key_client(raw, HTTP_USER_AGENT="deploy-bot/1.0", HTTP_X_REQUEST_ID="req-123")
    assert send_json(client, "patch", "/organization", {"name": "Audited"}).status_code == 200
    event = AuditEvent.objects.filter(organization=world.alpha, action="organization.updated").get()
    assert event.api_key_id == api_key.pk
    assert event.actor_email == f"key:{api_key.prefix}"
    assert event.changes == {"before": {"name": "Alpha"}, "after": {"name": "Audited"}}
    assert event.ip == "127.0.0.1"
    assert event.user_agent == "deploy-bot/1.0"
    assert event.request_id == "req-123"


def test_a_member_may_read_but_not_rename(world: World) -> None:
    from tests.conftest import client_for

    client = client_for(world.amy, world.alpha)
    assert client.get(f"{API}/organization").status_code == 200
    response = send_json(client, "patch", "/organization", {"name": "Mine now"})
    assert response.status_code == 403
    assert error_of(response)["code"] == "role_forbidden"


def test_the_fast_organization_read_matches_its_documented_serializer(world: World) -> None:
    from apps.tenancy.api import OrganizationOut, organization_json

    assert organization_json(world.alpha) == OrganizationOut(world.alpha).data
