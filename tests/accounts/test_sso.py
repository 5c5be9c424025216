"""Logging in by an organization's OpenID Connect provider, GitHub and Google,
against the loopback fake provider with the real social-auth code over HTTP."""

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import Client
from social_django.models import UserSocialAuth

from apps.accounts.models import User
from apps.tenancy.models import AuditEvent, Membership, OrganizationSSO
from tests.accounts.sso_helpers import (
    OIDC_CLIENT,
    configure_sso,
    counts,
    fake_provider,
    local_path,
    login_via,
    with_state,
)
from tests.conftest import World, client_for
from tests.fakes.oidc_provider import FakeIdentityProvider, FakeUser

pytestmark = pytest.mark.django_db


@pytest.fixture
def idp(settings: Any) -> Iterator[FakeIdentityProvider]:
    with fake_provider(settings) as provider:
        yield provider


@pytest.fixture
def alpha_sso(world: World, idp: FakeIdentityProvider) -> OrganizationSSO:
    return configure_sso(world.alpha, idp, domain="alpha.test")


def public_client() -> Client:
    return client_for(None)


def test_an_sso_login_creates_the_person_and_makes_them_a_member(
    world: World, idp: FakeIdentityProvider, alpha_sso: OrganizationSSO
) -> None:
    idp.next_user = FakeUser(sub="okta-42", email="Newbie@Alpha.test", name="New Bie")
    client = public_client()
    page = client.get("/sso/alpha/login/")
    assert page.status_code == 200
    assert "Log in with SSO" in page.content.decode()

    authorize_url, callback_url = login_via(client, "/sso/alpha/login/")
    query = parse_qs(urlsplit(authorize_url).query)
    assert authorize_url.startswith(f"{idp.url}/authorize?")
    assert query["client_id"] == [OIDC_CLIENT[0]]
    assert query["redirect_uri"] == ["http://localhost/sso/auth/complete/oidc/"]
    assert query["nonce"]
    assert query["state"]

    response = client.get(local_path(callback_url))
    assert response.status_code == 302
    location = str(response["Location"])
    assert location.startswith("http://alpha.localhost/auth/handoff/?token=")

    user = User.objects.get(email="newbie@alpha.test")
    assert user.name == "New Bie"
    assert not user.has_usable_password()
    assert UserSocialAuth.objects.get(user=user).provider == "oidc"
    membership = Membership.objects.get(user=user, organization=world.alpha)
    assert membership.role == Membership.Role.MEMBER
    actions = set(AuditEvent.objects.filter(actor=user).values_list("action", flat=True))
    assert {"auth.sso_login", "member.joined_via_sso"} <= actions

    # The handoff logs them in on Alpha's host and shows its dashboard.
    org_client = Client(HTTP_HOST="alpha.localhost")
    landed = org_client.get(local_path(location))
    assert landed.status_code == 302
    assert landed["Location"] == "/"
    dashboard = org_client.get("/")
    assert dashboard.status_code == 200
    assert "You are member of this organization" in dashboard.content.decode()


def test_an_existing_member_connects_the_sso_while_logged_in_then_logs_in_by_it(
    world: World, idp: FakeIdentityProvider, alpha_sso: OrganizationSSO
) -> None:
    idp.next_user = FakeUser(sub="okta-amy", email="amy@alpha.test")
    client = public_client()
    client.force_login(world.amy)
    _, callback_url = login_via(client, "/sso/alpha/login/")
    assert client.get(local_path(callback_url)).status_code == 302
    link = UserSocialAuth.objects.get(provider="oidc")
    assert link.user == world.amy
    assert link.uid == f"{world.alpha.pk}:okta-amy"  # qualified by the organization

    idp.next_user = FakeUser(sub="okta-amy", email="amy@alpha.test")
    later = public_client()
    _, callback_url = login_via(later, "/sso/alpha/login/")
    assert later.get(local_path(callback_url)).status_code == 302
    assert later.session["_auth_user_id"] == str(world.amy.pk)


def test_a_provider_never_takes_over_an_existing_account_by_its_email(
    world: World, idp: FakeIdentityProvider, alpha_sso: OrganizationSSO
) -> None:
    for email in [world.olga.email, world.amy.email]:  # outside the domain, and a member inside it
        idp.next_user = FakeUser(sub=f"okta-{email}", email=email)
        client = public_client()
        _, callback_url = login_via(client, "/sso/alpha/login/")
        before = counts()
        response = client.get(local_path(callback_url))
        assert response.status_code == 403
        assert "Log in to it first, then connect" in response.content.decode()
        assert counts() == before
        assert "_auth_user_id" not in client.session


def test_the_same_subject_at_another_organizations_provider_is_another_identity(
    world: World, idp: FakeIdentityProvider, alpha_sso: OrganizationSSO
) -> None:
    """Beta's provider asserting the `sub` of Amy's link at Alpha gets nothing of Amy's."""
    UserSocialAuth.objects.create(user=world.amy, provider="oidc", uid=f"{world.alpha.pk}:okta-amy")
    configure_sso(world.beta, idp, domain="beta.test")
    idp.next_user = FakeUser(sub="okta-amy", email="someone@beta.test")
    client = public_client()
    _, callback_url = login_via(client, "/sso/beta/login/")
    client.get(local_path(callback_url))
    assert client.session.get("_auth_user_id") != str(world.amy.pk)


def test_claiming_another_organizations_domain_does_not_take_over_its_accounts(
    world: World, idp: FakeIdentityProvider
) -> None:
    """Beta's owner claims alpha.test (domains are claimed, not proven by DNS) and
    points Beta's SSO at a provider that vouches for amy@alpha.test."""
    configure_sso(world.beta, idp, domain="alpha.test", required=True)
    idp.next_user = FakeUser(sub="evil-amy", email="amy@alpha.test")
    client = public_client()
    _, callback_url = login_via(client, "/sso/beta/login/")
    before = counts()
    response = client.get(local_path(callback_url))
    assert response.status_code == 403
    assert counts() == before
    assert "_auth_user_id" not in client.session
    assert not Membership.objects.filter(user=world.amy, organization=world.beta).exists()
    # Nor can the claim lock Alpha's people out of their passwords.
    login = public_client().post("/login/", {"username": "amy@alpha.test", "password": world.password})
    assert login.status_code == 302


@pytest.mark.parametrize(
    ("knob", "status", "title"),
    [
        ("wrong_state", 403, "This login does not match the one your browser started"),
        ("expired_code", 403, "The sign-in code has expired"),
        ("bad_signature", 403, "The identity token&#x27;s signature is not valid"),
        ("email_not_verified", 403, "Your email address is not verified"),
    ],
)
def test_a_failed_sso_login_explains_itself_and_writes_nothing(
    world: World, idp: FakeIdentityProvider, alpha_sso: OrganizationSSO, knob: str, status: int, title: str
) -> None:
    idp.next_user = FakeUser(
        sub="okta-7", email="failing@alpha.test", email_verified=knob != "email_not_verified"
    )
    idp.expire_next_code = knob == "expired_code"
    idp.sign_with_wrong_key = knob == "bad_signature"
    client = public_client()
    _, callback_url = login_via(client, "/sso/alpha/login/")
    if knob == "wrong_state":
        callback_url = with_state(callback_url, "forged-state")
    before = counts()
    events_before = AuditEvent.objects.count()

    response = client.get(local_path(callback_url))

    assert response.status_code == status
    body = response.content.decode()
    assert f"<h1>{title}</h1>" in body
    assert "Nobody was logged in and no account was created" in body
    assert counts() == before
    assert AuditEvent.objects.count() == events_before
    assert not User.objects.filter(email="failing@alpha.test").exists()
    assert "_auth_user_id" not in client.session
    if knob == "wrong_state":
        assert idp.token_requests == 0  # refused before the code was ever exchanged


def test_a_login_for_an_organization_without_sso_is_not_found(
    world: World, idp: FakeIdentityProvider
) -> None:
    assert public_client().get("/sso/beta/login/").status_code == 404
    assert public_client().post("/sso/beta/login/").status_code == 404


def test_a_callback_without_a_started_login_is_refused(idp: FakeIdentityProvider) -> None:
    response = public_client().get("/sso/auth/complete/github/?code=abc&state=def")
    assert response.status_code == 403
    assert "This login does not match" in response.content.decode()


def test_github_login_uses_the_primary_verified_email(world: World, idp: FakeIdentityProvider) -> None:
    idp.next_user = FakeUser(
        sub="gh-1001", email="octo@example.test", name="Octo Cat", github_login="octocat"
    )
    client = public_client()
    authorize_url, callback_url = login_via(client, "/sso/auth/login/github/")
    assert authorize_url.startswith(f"{idp.url}/login/oauth/authorize?")
    response = client.get(local_path(callback_url))
    assert response.status_code == 302
    assert response["Location"] == "/orgs/"
    user = User.objects.get(email="octo@example.test")
    social = UserSocialAuth.objects.get(user=user)
    assert (social.provider, social.uid) == ("github", "1001")
    assert not Membership.objects.filter(user=user).exists()


def test_github_login_without_a_verified_email_is_refused(world: World, idp: FakeIdentityProvider) -> None:
    idp.next_user = FakeUser(sub="gh-1002", email="unverified@example.test", email_verified=False)
    client = public_client()
    _, callback_url = login_via(client, "/sso/auth/login/github/")
    before = counts()
    response = client.get(local_path(callback_url))
    assert response.status_code == 403
    assert "GitHub has not verified your email address" in response.content.decode()
    assert counts() == before


def test_google_connects_to_the_logged_in_account_then_logs_it_in(
    world: World, idp: FakeIdentityProvider
) -> None:
    idp.next_user = FakeUser(sub="google-77", email=world.ben.email)
    connecting = public_client()
    connecting.force_login(world.ben)
    authorize_url, callback_url = login_via(connecting, "/sso/auth/login/google-oauth2/")
    assert authorize_url.startswith(f"{idp.url}/o/oauth2/auth?")
    assert connecting.get(local_path(callback_url)).status_code == 302
    assert UserSocialAuth.objects.get(provider="google-oauth2", uid="google-77").user == world.ben

    idp.next_user = FakeUser(sub="google-77", email=world.ben.email)
    client = public_client()
    _, callback_url = login_via(client, "/sso/auth/login/google-oauth2/")
    response = client.get(local_path(callback_url))
    assert response.status_code == 302
    assert str(response["Location"]).startswith("http://beta.localhost/auth/handoff/?token=")


def test_google_does_not_log_in_an_existing_account_it_was_never_connected_to(
    world: World, idp: FakeIdentityProvider
) -> None:
    idp.next_user = FakeUser(sub="google-99", email=world.ben.email)
    client = public_client()
    _, callback_url = login_via(client, "/sso/auth/login/google-oauth2/")
    before = counts()
    assert client.get(local_path(callback_url)).status_code == 403
    assert counts() == before


def test_google_login_with_an_unverified_email_is_refused(world: World, idp: FakeIdentityProvider) -> None:
    idp.next_user = FakeUser(sub="google-78", email=world.ben.email, email_verified=False)
    client = public_client()
    _, callback_url = login_via(client, "/sso/auth/login/google-oauth2/")
    before = counts()
    response = client.get(local_path(callback_url))
    assert response.status_code == 403
    assert "Your email address is not verified" in response.content.decode()
    assert counts() == before


def test_provider_buttons_show_only_when_configured(settings: Any) -> None:
    settings.SOCIAL_AUTH_GITHUB_KEY = ""
    settings.SOCIAL_AUTH_GOOGLE_OAUTH2_KEY = ""
    assert "Log in with GitHub" not in public_client().get("/login/").content.decode()
    assert public_client().post("/sso/auth/login/github/").status_code == 404
    settings.SOCIAL_AUTH_GITHUB_KEY, settings.SOCIAL_AUTH_GITHUB_SECRET = "id", "secret"
    page = public_client().get("/login/").content.decode()
    assert "Log in with GitHub" in page
    assert "Log in with Google" not in page


def test_password_login_is_refused_where_the_organization_requires_sso(
    world: World, idp: FakeIdentityProvider
) -> None:
    configure_sso(world.alpha, idp, domain="alpha.test", required=True)
    # Bound once Amy has logged in by Alpha's provider.
    UserSocialAuth.objects.create(user=world.amy, provider="oidc", uid=f"{world.alpha.pk}:okta-amy")
    client = public_client()
    response = client.post("/login/", {"username": "Amy@alpha.test", "password": world.password})
    assert response.status_code == 200
    body = response.content.decode()
    assert "Alpha requires single sign-on for addresses at alpha.test" in body
    assert '<a href="/sso/alpha/login/">log in with Alpha SSO</a>' in body
    assert "_auth_user_id" not in client.session
    # Members who never used Alpha's SSO keep their password; other domains too.
    assert (
        client.post("/login/", {"username": world.alice.email, "password": world.password}).status_code == 302
    )
    other = public_client().post("/login/", {"username": world.ben.email, "password": world.password})
    assert other.status_code == 302


def test_a_member_bound_to_sso_cannot_use_github_or_google_instead(
    world: World, idp: FakeIdentityProvider
) -> None:
    configure_sso(world.alpha, idp, domain="alpha.test", required=True)
    UserSocialAuth.objects.create(user=world.amy, provider="oidc", uid=f"{world.alpha.pk}:okta-amy")
    idp.next_user = FakeUser(sub="google-amy", email=world.amy.email)
    client = public_client()
    client.force_login(world.amy)
    _, callback_url = login_via(client, "/sso/auth/login/google-oauth2/")
    response = client.get(local_path(callback_url))
    assert response.status_code == 403
    assert "requires its single sign-on" in response.content.decode()
    assert not UserSocialAuth.objects.filter(provider="google-oauth2").exists()


def test_the_client_secret_is_encrypted_at_rest(world: World, idp: FakeIdentityProvider) -> None:
    sso = configure_sso(world.alpha, idp, domain="alpha.test")
    stored = OrganizationSSO.objects.values_list("client_secret_encrypted", flat=True).get(pk=sso.pk)
    assert OIDC_CLIENT[1] not in stored
    assert OrganizationSSO.objects.get(pk=sso.pk).client_secret == OIDC_CLIENT[1]
