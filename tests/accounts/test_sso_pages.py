"""The organization's single sign-on settings page and the connected-logins page."""

import pytest
from social_django.models import UserSocialAuth

from apps.accounts.models import User
from apps.tenancy.models import AuditEvent, Membership, OrganizationSSO
from tests.conftest import World, client_for

pytestmark = pytest.mark.django_db

SETTINGS = {
    "issuer": "https://idp.alpha.test/",
    "client_id": "agentyard",
    "client_secret": "very-secret",
    "verified_domain": "Alpha.test",
    "sso_required": "on",
    "enabled": "on",
}


def test_an_owner_configures_sso_and_the_secret_is_stored_encrypted(world: World) -> None:
    client = client_for(world.alice, world.alpha)
    page = client.get("/settings/sso/")
    assert page.status_code == 200
    assert "http://localhost/sso/auth/complete/oidc/" in page.content.decode()

    response = client.post("/settings/sso/", SETTINGS)
    assert response.status_code == 302
    sso = OrganizationSSO.objects.get(organization=world.alpha)
    assert (sso.issuer, sso.verified_domain, sso.sso_required) == (
        "https://idp.alpha.test",
        "alpha.test",
        True,
    )
    assert "very-secret" not in sso.client_secret_encrypted
    assert sso.client_secret == "very-secret"
    event = AuditEvent.objects.get(organization=world.alpha, action="sso.configured")
    assert "very-secret" not in str(event.changes)

    # An empty secret keeps the stored one.
    client.post("/settings/sso/", {**SETTINGS, "client_secret": "", "sso_required": ""})
    sso.refresh_from_db()
    assert sso.client_secret == "very-secret"
    assert not sso.sso_required


def test_requiring_sso_without_a_domain_is_explained(world: World) -> None:
    client = client_for(world.alice, world.alpha)
    response = client.post("/settings/sso/", {**SETTINGS, "verified_domain": ""})
    assert response.status_code == 400
    assert "Requiring SSO needs a verified domain" in response.content.decode()
    assert not OrganizationSSO.objects.filter(organization=world.alpha).exists()


def test_a_domain_belongs_to_one_organization(world: World) -> None:
    client_for(world.alice, world.alpha).post("/settings/sso/", SETTINGS)
    response = client_for(world.bob, world.beta).post("/settings/sso/", SETTINGS)
    assert response.status_code == 400
    assert "alpha.test is already the verified domain of another organization" in response.content.decode()


def test_an_admin_sees_the_settings_but_cannot_change_them(world: World) -> None:
    Membership.objects.filter(user=world.amy, organization=world.alpha).update(role=Membership.Role.ADMIN)
    client = client_for(world.amy, world.alpha)
    page = client.get("/settings/sso/")
    assert page.status_code == 200
    assert "Only owners can" in page.content.decode()
    refused = client.post("/settings/sso/", SETTINGS)
    assert refused.status_code == 403
    assert "sso.manage" in refused.content.decode()
    assert not OrganizationSSO.objects.filter(organization=world.alpha).exists()


def test_a_member_may_not_see_the_settings(world: World) -> None:
    response = client_for(world.amy, world.alpha).get("/settings/sso/")
    assert response.status_code == 403
    assert "sso.view" in response.content.decode()


def _social(user: User, provider: str, uid: str) -> UserSocialAuth:
    return UserSocialAuth.objects.create(user=user, provider=provider, uid=uid, extra_data={})


def test_connected_logins_are_listed_and_can_be_disconnected(world: World) -> None:
    login = _social(world.olga, "github", "501")
    client = client_for(world.olga)
    page = client.get("/account/logins/")
    assert page.status_code == 200
    assert "GitHub" in page.content.decode()
    response = client.post("/account/logins/", {"social_id": login.pk})
    assert response.status_code == 302
    assert not UserSocialAuth.objects.filter(pk=login.pk).exists()
    assert AuditEvent.objects.filter(actor=world.olga, action="auth.social_disconnected").exists()


def test_the_last_way_to_log_in_cannot_be_disconnected(world: World) -> None:
    user = User.objects.create_user("sso-only@example.test", None)
    github = _social(user, "github", "502")
    client = client_for(user)
    response = client.post("/account/logins/", {"social_id": github.pk})
    assert response.status_code == 409
    assert "This is your only way to log in" in response.content.decode()
    assert UserSocialAuth.objects.filter(pk=github.pk).exists()

    # With a second login, either may go.
    _social(user, "google-oauth2", "g-502")
    assert client.post("/account/logins/", {"social_id": github.pk}).status_code == 302
    assert not UserSocialAuth.objects.filter(pk=github.pk).exists()


def test_nobody_disconnects_someone_elses_login(world: World) -> None:
    login = _social(world.amy, "github", "503")
    response = client_for(world.olga).post("/account/logins/", {"social_id": login.pk})
    assert response.status_code == 404
    assert UserSocialAuth.objects.filter(pk=login.pk).exists()


def test_connected_logins_need_a_login(world: World) -> None:
    response = client_for(None).get("/account/logins/")
    assert response.status_code == 302
    assert "/login/" in response["Location"]
