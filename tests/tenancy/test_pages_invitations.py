"""Accepting an invitation on the public site: the right account, a new account,
the wrong account, and links that expired, were revoked or were used."""

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.accounts.models import User
from apps.tenancy import identity
from apps.tenancy.audit import Actor
from apps.tenancy.models import AuditEvent, Invitation, Membership
from tests.conftest import World, client_for

pytestmark = pytest.mark.django_db

PASSWORD = "a long and unusual passphrase"


def _invite(world: World, email: str, role: str = "member") -> tuple[Invitation, str]:
    invitation, link = identity.invitation_create(
        actor=Actor(user=world.alice),
        organization=world.alpha,
        email=email,
        role=role,
        accept_url_base="http://localhost",
    )
    return invitation, "/" + link.split("/", 3)[3]


def test_the_page_names_the_organization_the_inviter_and_the_role(world: World) -> None:
    _, path = _invite(world, "new@example.test", role="admin")
    response = client_for(None).get(path)
    assert response.status_code == 200
    page = response.content.decode()
    assert "Join Alpha" in page
    assert "Alice (alice@alpha.test)" in page
    assert "<strong>admin</strong>" in page
    assert "Sign up and join" in page
    assert "/login/?next=http%3A%2F%2Flocalhost%2Finvitations%2F" in page


def test_an_existing_account_is_asked_to_log_in(world: World) -> None:
    _, path = _invite(world, world.olga.email)
    page = client_for(None).get(path).content.decode()
    assert "Log in to accept" in page
    assert "Sign up and join" not in page


def test_accepting_with_the_invited_account(world: World) -> None:
    _, path = _invite(world, world.olga.email, role="viewer")
    client = client_for(world.olga)
    assert "Accept and join Alpha" in client.get(path).content.decode()
    response = client.post(path)
    assert response.status_code == 302
    assert response["Location"].startswith("http://alpha.localhost/auth/handoff/?token=")
    membership = Membership.objects.get(organization=world.alpha, user=world.olga)
    assert membership.role == "viewer"
    assert AuditEvent.objects.filter(organization=world.alpha, action="invitation.accepted").exists()
    # The handoff lands on the organization's dashboard, logged in.
    alpha = client_for(None, world.alpha)
    landed = alpha.get(response["Location"], follow=True)
    assert landed.status_code == 200
    assert "You are viewer of this organization." in landed.content.decode()


def test_signing_up_with_the_invited_email_accepts_and_logs_in(world: World) -> None:
    _, path = _invite(world, "Fresh@Example.test")
    client = client_for(None)
    response = client.post(path + "signup/", {"name": "Fresh Person", "password": PASSWORD})
    assert response.status_code == 302
    assert response["Location"].startswith("http://alpha.localhost/auth/handoff/?token=")
    user = User.objects.get(email="fresh@example.test")
    assert user.name == "Fresh Person"
    assert user.check_password(PASSWORD)
    assert Membership.objects.get(organization=world.alpha, user=user).role == "member"
    assert client.session["_auth_user_id"] == str(user.pk)


def test_a_weak_password_is_explained_and_nothing_is_created(world: World) -> None:
    _, path = _invite(world, "weak@example.test")
    response = client_for(None).post(path + "signup/", {"password": "123"})
    assert response.status_code == 400
    assert "This password is too short." in response.content.decode()
    assert not User.objects.filter(email="weak@example.test").exists()


def test_signing_up_for_an_address_that_has_an_account_is_refused(world: World) -> None:
    _, path = _invite(world, world.olga.email)
    response = client_for(None).post(path + "signup/", {"password": PASSWORD})
    assert response.status_code == 400
    assert "An account with this email exists. Log in to accept instead." in response.content.decode()


def test_the_wrong_account_is_refused_with_403(world: World) -> None:
    _, path = _invite(world, "someone.else@example.test")
    client = client_for(world.olga)
    page = client.get(path)
    assert page.status_code == 403
    assert "It was sent to <strong>someone.else@example.test</strong>" in page.content.decode()
    accept = client.post(path)
    assert accept.status_code == 403
    assert not Membership.objects.filter(organization=world.alpha, user=world.olga).exists()


def test_an_expired_invitation_is_gone(world: World) -> None:
    invitation, path = _invite(world, world.olga.email)
    Invitation.objects.filter(pk=invitation.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    client = client_for(world.olga)
    for response in (client.get(path), client.post(path)):
        assert response.status_code == 410
        assert "This invitation has expired. Ask Alice to invite you again." in response.content.decode()
    assert not Membership.objects.filter(organization=world.alpha, user=world.olga).exists()


def test_a_revoked_invitation_is_gone(world: World) -> None:
    invitation, path = _invite(world, world.olga.email)
    identity.invitation_revoke(actor=Actor(user=world.alice), invitation=invitation)
    client = client_for(world.olga)
    for response in (client.get(path), client.post(path), client_for(None).post(path + "signup/", {})):
        assert response.status_code == 410
        assert "This invitation was revoked." in response.content.decode()
    assert not Membership.objects.filter(organization=world.alpha, user=world.olga).exists()


def test_a_used_invitation_is_gone_for_others_and_fine_for_its_user(world: World) -> None:
    _, path = _invite(world, world.olga.email)
    olga = client_for(world.olga)
    olga.post(path)
    again = olga.get(path)
    assert again.status_code == 200
    assert "You accepted this invitation already." in again.content.decode()
    other = client_for(None).get(path)
    assert other.status_code == 410
    assert "This invitation was already used." in other.content.decode()


def test_an_unknown_link_is_not_found(world: World) -> None:
    response = client_for(None).get("/invitations/not-a-real-token/")
    assert response.status_code == 404
    assert "This invitation link is not valid." in response.content.decode()


def test_anonymous_accept_shows_the_page_instead(world: World) -> None:
    _, path = _invite(world, "anon@example.test")
    response = client_for(None).post(path)
    assert response.status_code == 200
    assert not Membership.objects.filter(organization=world.alpha, user__email="anon@example.test").exists()


def test_logging_in_from_the_invitation_comes_back_to_it(world: World) -> None:
    _, path = _invite(world, world.olga.email)
    client = client_for(None)
    response = client.post(
        "/login/",
        {"username": world.olga.email, "password": world.password, "next": "http://localhost" + path},
    )
    assert response.status_code == 302
    assert response["Location"] == "http://localhost" + path
    assert "Accept and join Alpha" in client.get(path).content.decode()
