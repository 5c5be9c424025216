"""/api/v1/invitations: inviting by email, refusing duplicates, revoking."""

from typing import Any

import pytest
from django.core import mail
from django.test import Client

from apps.tenancy.models import AuditEvent, Invitation
from tests.api.conftest import API, error_of, key_client, new_key, send_json
from tests.conftest import World

pytestmark = pytest.mark.django_db


def test_inviting_someone_returns_the_link_and_emails_it(
    world: World, admin_client: Client, django_capture_on_commit_callbacks: object
) -> None:
    with django_capture_on_commit_callbacks(execute=True):  # type: ignore[operator]
        response = send_json(
            admin_client, "post", "/invitations", {"email": "New@Example.test", "role": "admin"}
        )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["email"] == "new@example.test"
    assert body["role"] == "admin"
    assert body["status"] == "pending"
    assert body["link"].startswith("http://localhost/invitations/")
    assert len(mail.outbox) == 1
    assert body["link"] in mail.outbox[0].body
    event = AuditEvent.objects.get(organization=world.alpha, action="invitation.created")
    assert event.changes == {"after": {"email": "new@example.test", "role": "admin"}}


def test_the_role_defaults_to_member(world: World, admin_client: Client) -> None:
    response = send_json(admin_client, "post", "/invitations", {"email": "plain@example.test"})
    assert response.status_code == 201
    assert response.json()["role"] == "member"


def test_inviting_an_existing_member_is_a_409_already_member(world: World, admin_client: Client) -> None:
    response = send_json(admin_client, "post", "/invitations", {"email": "AMY@alpha.test"})
    assert response.status_code == 409
    error = error_of(response)
    assert error["code"] == "already_member"
    assert "amy@alpha.test" in error["message"]
    assert error["fields"] == {"email": [error["message"]]}
    assert not Invitation.objects.filter(organization=world.alpha).exists()


def test_inviting_the_same_address_twice_is_a_409_already_invited(world: World, admin_client: Client) -> None:
    assert send_json(admin_client, "post", "/invitations", {"email": "twice@example.test"}).status_code == 201
    response = send_json(admin_client, "post", "/invitations", {"email": "TWICE@example.test"})
    assert response.status_code == 409
    assert error_of(response)["code"] == "already_invited"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "not an email"}, "email"),
        ({"email": 42}, "email"),
        ({"email": "x@example.test", "role": "emperor"}, "role"),
        ({}, "email"),
        ({"email": "x@example.test", "message": "hi"}, "message"),
    ],
)
def test_a_bad_invitation_is_a_400_on_the_field(
    world: World, admin_client: Client, body: dict[str, Any], field: str
) -> None:
    response = send_json(admin_client, "post", "/invitations", body)
    assert response.status_code == 400
    assert field in error_of(response)["fields"]


def test_only_an_owner_may_invite_an_owner(world: World, admin_client: Client) -> None:
    response = send_json(
        admin_client, "post", "/invitations", {"email": "boss@example.test", "role": "owner"}
    )
    assert response.status_code == 403
    assert error_of(response)["code"] == "owner_only"


def test_invitations_are_listed_and_revoked_once(world: World, admin_client: Client) -> None:
    created = send_json(admin_client, "post", "/invitations", {"email": "gone@example.test"}).json()
    listed = admin_client.get(f"{API}/invitations").json()["results"]
    assert [row["email"] for row in listed] == ["gone@example.test"]
    assert "link" not in listed[0]
    revoked = admin_client.delete(f"{API}/invitations/{created['id']}")
    assert revoked.status_code == 200
    assert revoked.json()["status"] == "revoked"
    assert AuditEvent.objects.filter(organization=world.alpha, action="invitation.revoked").count() == 1
    again = admin_client.delete(f"{API}/invitations/{created['id']}")
    assert again.status_code == 409
    assert error_of(again)["code"] == "invitation_revoked"


def test_an_invitation_of_another_organization_is_404(world: World, admin_client: Client) -> None:
    _, beta_raw = new_key(world, ["admin"], organization=world.beta)
    theirs = send_json(key_client(beta_raw), "post", "/invitations", {"email": "b@example.test"}).json()
    response = admin_client.delete(f"{API}/invitations/{theirs['id']}")
    assert response.status_code == 404
    assert Invitation.objects.get(pk=theirs["id"]).revoked_at is None
