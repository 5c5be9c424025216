"""Who may call the API: API keys (anywhere, the key selects the organization) and
browser sessions on the organization's host, with CSRF on unsafe methods."""

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from apps.tenancy import identity
from apps.tenancy.audit import Actor
from apps.tenancy.models import ApiKey, Invitation, Organization
from tests.api.conftest import API, error_of, key_client, new_key, send_json
from tests.conftest import World, client_for, host

pytestmark = pytest.mark.django_db


def test_a_key_that_does_not_exist_is_refused_with_invalid_api_key(world: World) -> None:
    _, raw = new_key(world, ["admin"])
    forged = raw[:-4] + ("aaaa" if not raw.endswith("aaaa") else "bbbb")
    response = key_client(forged).get(f"{API}/organization")
    assert response.status_code == 401
    assert error_of(response)["code"] == "invalid_api_key"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("header", ["Bearer nonsense", "Bearer ayk_", "Bearer ayk_abc", "Bearer "])
def test_something_that_is_not_a_key_is_refused_with_invalid_api_key(world: World, header: str) -> None:
    response = Client(HTTP_HOST=host(), HTTP_AUTHORIZATION=header).get(f"{API}/organization")
    assert response.status_code == 401
    assert error_of(response)["code"] == "invalid_api_key"


def test_an_expired_key_is_refused_with_expired_api_key(world: World) -> None:
    api_key, raw = new_key(world, ["admin"], expires_at=timezone.now() + timedelta(days=1))
    ApiKey.objects.filter(pk=api_key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = key_client(raw).get(f"{API}/organization")
    assert response.status_code == 401
    error = error_of(response)
    assert error["code"] == "expired_api_key"
    assert "expired" in error["message"]


def test_a_revoked_key_is_refused_with_revoked_api_key(world: World) -> None:
    api_key, raw = new_key(world, ["admin"])
    identity.api_key_revoke(actor=Actor(user=world.alice), api_key=api_key)
    response = key_client(raw).get(f"{API}/organization")
    assert response.status_code == 401
    assert error_of(response)["code"] == "revoked_api_key"


def test_a_key_without_the_scope_gets_403_naming_the_scope_it_lacks(world: World) -> None:
    _, raw = new_key(world, ["organization:read"])
    client = key_client(raw)
    assert client.get(f"{API}/organization").status_code == 200
    response = send_json(client, "patch", "/organization", {"name": "Renamed"})
    assert response.status_code == 403
    error = error_of(response)
    assert error["code"] == "missing_scope"
    assert "organization:write" in error["message"]
    listing = client.get(f"{API}/api-keys")
    assert listing.status_code == 403
    assert "api_keys:read" in error_of(listing)["message"]


def test_a_write_scope_also_reads_its_family(world: World) -> None:
    _, raw = new_key(world, ["members:write"])
    assert key_client(raw).get(f"{API}/members").status_code == 200


def test_a_key_of_alpha_on_betas_host_is_refused_with_wrong_organization(world: World) -> None:
    _, raw = new_key(world, ["admin"])
    response = key_client(raw, world.beta).get(f"{API}/organization")
    assert response.status_code == 403
    assert error_of(response)["code"] == "wrong_organization"


def test_a_key_works_on_its_own_organizations_host_and_on_the_public_host(world: World) -> None:
    _, raw = new_key(world, ["organization:read"])
    for organization in (world.alpha, None):
        response = key_client(raw, organization).get(f"{API}/organization")
        assert response.status_code == 200
        assert response.json()["slug"] == "alpha"


def test_the_key_selects_its_organization_on_the_public_host(world: World) -> None:
    _, raw = new_key(world, ["organization:read"], organization=world.beta)
    assert key_client(raw).get(f"{API}/organization").json()["slug"] == "beta"


def test_no_credentials_on_the_public_host_get_401_saying_how_to_authenticate(world: World) -> None:
    response = Client(HTTP_HOST=host()).get(f"{API}/organization")
    assert response.status_code == 401
    error = error_of(response)
    assert error["code"] == "not_authenticated"
    assert "Bearer" in error["message"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_an_anonymous_visitor_on_the_organization_host_gets_401(world: World) -> None:
    response = client_for(None, world.alpha).get(f"{API}/organization")
    assert response.status_code == 401
    assert error_of(response)["code"] == "not_authenticated"


def test_a_person_from_another_organization_gets_403_not_a_member(world: World) -> None:
    response = client_for(world.bob, world.alpha).get(f"{API}/organization")
    assert response.status_code == 403
    assert error_of(response)["code"] == "not_a_member"


def test_a_member_without_the_right_role_gets_403_naming_the_role(world: World) -> None:
    response = client_for(world.amy, world.alpha).get(f"{API}/api-keys")
    assert response.status_code == 403
    error = error_of(response)
    assert error["code"] == "role_forbidden"
    assert "member" in error["message"]


def test_a_key_of_a_suspended_organization_is_refused(world: World) -> None:
    _, raw = new_key(world, ["admin"])
    Organization.objects.filter(pk=world.alpha.pk).update(status=Organization.Status.SUSPENDED)
    response = key_client(raw).get(f"{API}/organization")
    assert response.status_code == 403
    assert error_of(response)["code"] == "organization_suspended"


def test_a_key_records_when_and_from_where_it_was_last_used(world: World) -> None:
    api_key, raw = new_key(world, ["organization:read"])
    assert api_key.last_used_at is None
    before = timezone.now()
    response = key_client(raw, REMOTE_ADDR="203.0.113.9").get(f"{API}/organization")
    assert response.status_code == 200
    api_key.refresh_from_db()
    assert api_key.last_used_at is not None
    assert api_key.last_used_at >= before
    assert api_key.last_used_ip == "203.0.113.9"
    # And it shows in the key's own listing.
    _, admin = new_key(world, ["api_keys:read"])
    listed = key_client(admin).get(f"{API}/api-keys/{api_key.pk}").json()
    assert listed["last_used_ip"] == "203.0.113.9"
    assert listed["last_used_at"] is not None


def _csrf_session(world: World) -> Client:
    client = Client(enforce_csrf_checks=True, HTTP_HOST=host(world.alpha))
    client.force_login(world.alice)
    return client


def test_a_session_on_the_organization_host_reads_without_a_csrf_token(world: World) -> None:
    response = _csrf_session(world).get(f"{API}/members")
    assert response.status_code == 200
    assert {m["email"] for m in response.json()["results"]} == {"alice@alpha.test", "amy@alpha.test"}


def test_a_session_post_without_a_csrf_token_is_refused(world: World) -> None:
    client = _csrf_session(world)
    response = send_json(client, "post", "/invitations", {"email": "csrf@example.test"})
    assert response.status_code == 403
    assert "CSRF" in error_of(response)["message"]
    assert not Invitation.objects.filter(email="csrf@example.test").exists()


def test_a_session_post_with_the_csrf_token_is_accepted(world: World) -> None:
    client = _csrf_session(world)
    client.get("/")  # the dashboard sets the csrftoken cookie
    token = client.cookies["csrftoken"].value
    response = send_json(
        client, "post", "/invitations", {"email": "csrf@example.test"}, HTTP_X_CSRFTOKEN=token
    )
    assert response.status_code == 201, response.content
    assert response.json()["email"] == "csrf@example.test"
