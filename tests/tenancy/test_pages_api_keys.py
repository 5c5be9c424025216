"""The API keys page: owners and admins only; the secret is shown once, then never."""

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.tenancy.models import ApiKey, AuditEvent, Membership
from tests.conftest import World, client_for

pytestmark = pytest.mark.django_db


def _create(world: World, **data: object) -> tuple[str, str]:
    """(page, secret) after creating a key as alice."""
    response = client_for(world.alice, world.alpha).post(
        "/settings/api-keys/new/", {"name": "CI", "scopes": ["members:read"], **data}
    )
    assert response.status_code == 200
    page = response.content.decode()
    match = re.search(r'value="(ayk_[^"]+)"', page)
    assert match is not None
    return page, match.group(1)


def test_the_owner_and_admins_see_the_page(world: World) -> None:
    response = client_for(world.alice, world.alpha).get("/settings/api-keys/")
    assert response.status_code == 200
    assert "Create key" in response.content.decode()
    Membership.objects.filter(organization=world.alpha, user=world.amy).update(role="admin")
    assert client_for(world.amy, world.alpha).get("/settings/api-keys/").status_code == 200


@pytest.mark.parametrize("role", ["member", "viewer", "billing"])
def test_other_roles_are_refused_with_403(world: World, role: str) -> None:
    Membership.objects.filter(organization=world.alpha, user=world.amy).update(role=role)
    client = client_for(world.amy, world.alpha)
    response = client.get("/settings/api-keys/")
    assert response.status_code == 403
    assert "Not allowed" in response.content.decode()
    assert "<code>api_keys.view</code>" in response.content.decode()
    create = client.post("/settings/api-keys/new/", {"name": "x", "scopes": ["admin"]})
    assert create.status_code == 403
    assert not ApiKey.objects.filter(organization=world.alpha, name="x").exists()


def test_the_sidebar_offers_the_page_only_to_those_who_may_open_it(world: World) -> None:
    assert 'href="/settings/api-keys/"' in client_for(world.alice, world.alpha).get("/").content.decode()
    assert 'href="/settings/api-keys/"' not in client_for(world.amy, world.alpha).get("/").content.decode()


def test_creating_a_key_shows_its_secret_once_with_a_copy_button(world: World) -> None:
    page, secret = _create(world, name="Deploy bot", scopes=["members:read", "audit:read"])
    assert "only time it is shown" in page
    assert 'data-copy-target="api-key-secret"' in page
    assert 'aria-live="polite"' in page
    key = ApiKey.objects.get(organization=world.alpha, name="Deploy bot")
    assert key.scopes == ["audit:read", "members:read"]
    assert key.created_by == world.alice
    assert secret.startswith(f"ayk_{key.prefix}_")
    # Never again: not on the list, not after a reload.
    later = client_for(world.alice, world.alpha).get("/settings/api-keys/").content.decode()
    assert secret not in later
    assert secret.split("_", 2)[2] not in later
    assert key.prefix in later


def test_the_secret_works_against_the_api(world: World) -> None:
    _, secret = _create(world, scopes=["members:read"])
    from django.test import Client

    response = Client(HTTP_HOST="alpha.localhost", HTTP_AUTHORIZATION=f"Bearer {secret}").get(
        "/api/v1/members"
    )
    assert response.status_code == 200


def test_the_list_shows_name_prefix_scopes_status_creator_and_last_use(world: World) -> None:
    _create(world, name="Metrics")
    ApiKey.objects.filter(name="Metrics").update(last_used_at=timezone.now(), last_used_ip="10.1.2.3")
    page = client_for(world.alice, world.alpha).get("/settings/api-keys/").content.decode()
    key = ApiKey.objects.get(name="Metrics")
    for text in ["Metrics", key.prefix, "members:read", "active", "alice@alpha.test", "from 10.1.2.3"]:
        assert text in page


def test_an_expiry_date_is_kept(world: World) -> None:
    tomorrow = (timezone.now() + timedelta(days=1)).date()
    _create(world, name="Temporary", expires_on=tomorrow.isoformat())
    key = ApiKey.objects.get(name="Temporary")
    assert key.expires_at is not None
    assert key.expires_at.date() == tomorrow + timedelta(days=1)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "", "scopes": ["admin"]}, "This field is required."),
        ({"name": "x"}, "Give the key at least one scope."),
        ({"name": "x", "scopes": ["root:all"]}, "Unknown scope root:all."),
        (
            {"name": "x", "scopes": ["admin"], "expires_on": "2001-01-01"},
            "The expiry must be today or later.",
        ),
        ({"name": "x", "scopes": ["admin"], "expires_on": "soon"}, "Enter a valid date."),
    ],
)
def test_bad_input_is_explained(world: World, data: dict[str, object], message: str) -> None:
    response = client_for(world.alice, world.alpha).post("/settings/api-keys/new/", data)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert 'value="ayk_' not in response.content.decode()
    assert not ApiKey.objects.filter(organization=world.alpha, name=data["name"]).exists()


def test_revoking_a_key_and_revoking_it_twice(world: World) -> None:
    _create(world, name="Old")
    key = ApiKey.objects.get(name="Old")
    client = client_for(world.alice, world.alpha)
    response = client.post(f"/settings/api-keys/{key.pk}/revoke/", follow=True)
    assert response.status_code == 200
    assert f"The key Old ({key.prefix}…) was revoked" in response.content.decode()
    key.refresh_from_db()
    assert key.status == "revoked"
    again = client.post(f"/settings/api-keys/{key.pk}/revoke/", follow=True)
    assert again.status_code == 200
    assert "The key Old was already revoked." in again.content.decode()
    assert AuditEvent.objects.filter(organization=world.alpha, action="api_key.revoked").count() == 1


def test_another_organizations_key_is_not_found(world: World) -> None:
    from apps.tenancy import identity
    from apps.tenancy.audit import Actor

    key, _ = identity.api_key_create(
        actor=Actor(user=world.bob), organization=world.beta, name="b", scopes=["admin"]
    )
    response = client_for(world.alice, world.alpha).post(f"/settings/api-keys/{key.pk}/revoke/")
    assert response.status_code == 404
    key.refresh_from_db()
    assert key.revoked_at is None
