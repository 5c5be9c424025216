"""Confirming account email addresses: the link mailed on sign-up, invitation
sign-up and email change; confirming by POST only; expired, forged and stale
links; the banner and its throttled resend; provider-verified addresses."""

import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.core import mail, signing
from django.core.cache import cache
from django.core.mail import EmailMessage
from django.test import Client

from apps.accounts import email_confirmation
from apps.accounts.models import User
from apps.tenancy import identity
from apps.tenancy.audit import Actor
from apps.tenancy.models import AuditEvent
from tests.accounts.sso_helpers import fake_provider, local_path, login_via
from tests.conftest import World, client_for
from tests.factories import PASSWORD, make_user
from tests.fakes.oidc_provider import FakeIdentityProvider, FakeUser

pytestmark = pytest.mark.django_db

OnCommit = Callable[..., AbstractContextManager[Any]]
LINK = re.compile(r"http://localhost(/account/confirm/[^/\s]+/)")
SUBJECT = "Confirm your email address for Agentyard"


@pytest.fixture(autouse=True)
def no_provisioning(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sign-up queues its organization's provisioning on commit; these tests run
    their on-commit callbacks inside a transaction that is rolled back, so the
    worker must not be sent an organization that never existed."""
    from apps.tenancy.tasks import organization_provision_task

    monkeypatch.setattr(organization_provision_task, "delay", lambda *args, **kwargs: None)


def _confirmations(to: str) -> list[EmailMessage]:
    return [message for message in mail.outbox if message.subject == SUBJECT and message.to == [to]]


def _link_path(message: EmailMessage) -> str:
    found = LINK.search(str(message.body))
    assert found, message.body
    return found.group(1)


def _unverified(email: str) -> User:
    user = make_user(email)
    user.email_verified_at = None
    user.save(update_fields=["email_verified_at"])
    cache.delete(f"email-confirmation-sent:{user.pk}")
    return user


def _link_for(user: User) -> str:
    return email_confirmation.confirmation_path(email_confirmation.confirmation_token(user))


def test_signing_up_mails_one_link_that_confirms_on_post_only(
    world: World, django_capture_on_commit_callbacks: OnCommit
) -> None:
    client = client_for(None)
    data = {
        "email": "Carol@Example.test",
        "password": "a long and unusual passphrase",
        "organization_name": "Carol's Robots",
        "slug": "carols-robots",
    }
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post("/signup/", data).status_code == 302
    assert len(mail.outbox) == 1
    [message] = _confirmations("carol@example.test")
    user = User.objects.get(email="carol@example.test")
    assert user.email_verified_at is None
    path = _link_path(message)

    # Opening the link (as a mail scanner would) shows a button and confirms nothing.
    page = client_for(None).get(path)
    assert page.status_code == 200
    assert "Confirm carol@example.test" in page.content.decode()
    assert User.objects.get(pk=user.pk).email_verified_at is None
    assert not AuditEvent.objects.filter(action="account.email_confirmed").exists()

    # The POST confirms, from any browser, and is audited once.
    done = client_for(None).post(path)
    assert done.status_code == 200
    assert "Address confirmed" in done.content.decode()
    confirmed_at = User.objects.get(pk=user.pk).email_verified_at
    assert confirmed_at is not None
    event = AuditEvent.objects.get(action="account.email_confirmed")
    assert (event.organization, event.actor, event.target_id) == (None, user, str(user.pk))
    assert event.changes == {"after": {"email": "carol@example.test"}}
    assert client_for(None).post(path).status_code == 200  # again: harmless, not re-recorded
    assert User.objects.get(pk=user.pk).email_verified_at == confirmed_at
    assert AuditEvent.objects.filter(action="account.email_confirmed").count() == 1


def test_signing_up_by_invitation_still_mails_a_confirmation(
    world: World, django_capture_on_commit_callbacks: OnCommit
) -> None:
    _, link = identity.invitation_create(
        actor=Actor(user=world.alice),
        organization=world.alpha,
        email="fresh@example.test",
        role="member",
        accept_url_base="http://localhost",
    )
    mail.outbox.clear()
    # The inviter saw this link: following it proves nothing about the mailbox.
    with django_capture_on_commit_callbacks(execute=True):
        response = client_for(None).post(
            urlsplit(link).path + "signup/", {"name": "Fresh", "password": PASSWORD}
        )
    assert response.status_code == 302
    user = User.objects.get(email="fresh@example.test")
    assert user.email_verified_at is None
    [message] = mail.outbox
    assert (message.subject, message.to) == (SUBJECT, ["fresh@example.test"])
    assert client_for(None).post(_link_path(message)).status_code == 200
    assert User.objects.get(pk=user.pk).email_verified_at is not None


def test_an_expired_link_is_refused_and_changes_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = _unverified("late@example.test")
    path = _link_for(user)
    monkeypatch.setattr(email_confirmation, "MAX_AGE", -1)
    for response in (client_for(None).get(path), client_for(None).post(path)):
        assert response.status_code == 400
        assert "This confirmation link has expired" in response.content.decode()
    assert User.objects.get(pk=user.pk).email_verified_at is None
    assert not AuditEvent.objects.filter(action="account.email_confirmed").exists()


@pytest.mark.parametrize(
    "mangle",
    [
        lambda path: path[:-3] + ("A" if path[-3] != "A" else "B") + path[-2:],  # signature altered
        lambda path: path.replace("/confirm/", "/confirm/x"),  # payload altered
        lambda path: "/account/confirm/not-a-token/",
    ],
)
def test_a_forged_link_is_refused_and_changes_nothing(world: World, mangle: Callable[[str], str]) -> None:
    user = _unverified("forged@example.test")
    response = client_for(None).post(mangle(_link_for(user)))
    assert response.status_code == 400
    assert "This confirmation link is not valid" in response.content.decode()
    assert User.objects.get(pk=user.pk).email_verified_at is None


def test_a_link_from_another_salt_is_refused(world: World) -> None:
    """A value we signed for something else (the same key, another purpose) is no link."""
    user = _unverified("salt@example.test")
    token = signing.dumps({"user": user.pk, "email": user.email}, salt="something-else")
    assert client_for(None).post(f"/account/confirm/{token}/").status_code == 400
    assert User.objects.get(pk=user.pk).email_verified_at is None


def test_an_email_change_unconfirms_mails_the_new_address_and_kills_old_links(
    world: World, django_capture_on_commit_callbacks: OnCommit
) -> None:
    user = make_user("mover@example.test")
    assert user.email_verified_at is not None
    old_path = _link_for(user)  # a link for the old address, still within its three days
    cache.delete(f"email-confirmation-sent:{user.pk}")
    client = client_for(user)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/account/",
            {"form": "profile", "name": "", "email": "moved@example.test", "current_password": PASSWORD},
        )
    assert response.status_code == 302
    moved = User.objects.get(pk=user.pk)
    assert (moved.email, moved.email_verified_at) == ("moved@example.test", None)
    assert len(mail.outbox) == 1
    [message] = _confirmations("moved@example.test")

    stale = client_for(None).post(old_path)
    assert stale.status_code == 400
    assert "no longer has" in stale.content.decode()
    assert client_for(None).get(old_path).status_code == 400
    assert User.objects.get(pk=user.pk).email_verified_at is None

    assert client_for(None).post(_link_path(message)).status_code == 200
    assert User.objects.get(pk=user.pk).email_verified_at is not None


def test_changing_only_the_name_keeps_the_confirmation_and_mails_nothing(
    world: World, django_capture_on_commit_callbacks: OnCommit
) -> None:
    user = make_user("stay@example.test")
    with django_capture_on_commit_callbacks(execute=True):
        client_for(user).post("/account/", {"form": "profile", "name": "Stay", "email": "stay@example.test"})
    assert User.objects.get(pk=user.pk).email_verified_at == user.email_verified_at
    assert mail.outbox == []


def test_the_banner_shows_only_for_unconfirmed_addresses(world: World) -> None:
    user = _unverified("banner@example.test")
    public = client_for(user).get("/orgs/").content.decode()
    assert 'data-testid="email-unconfirmed"' in public
    assert "we sent a link to <strong>banner@example.test</strong>" in public
    assert 'action="http://localhost/account/confirm/resend/"' in public
    assert "at most one link a minute" in public
    assert 'data-testid="email-unconfirmed"' not in client_for(world.amy).get("/orgs/").content.decode()
    # On an organization's host the banner links to the account page on the public site.
    on_alpha = client_for(world.amy, world.alpha)
    assert 'data-testid="email-unconfirmed"' not in on_alpha.get("/").content.decode()
    User.objects.filter(pk=world.amy.pk).update(email_verified_at=None)
    page = client_for(User.objects.get(pk=world.amy.pk), world.alpha).get("/").content.decode()
    assert 'data-testid="email-unconfirmed"' in page
    assert 'href="http://localhost/account/">Resend it from your account</a>' in page


def test_resend_is_throttled_to_one_mail_a_minute(
    world: World, django_capture_on_commit_callbacks: OnCommit
) -> None:
    user = _unverified("again@example.test")
    client = client_for(user)
    with django_capture_on_commit_callbacks(execute=True):
        first = client.post("/account/confirm/resend/")
    assert first.status_code == 302
    assert first["Location"] == "/account/"
    assert len(_confirmations("again@example.test")) == 1
    assert (
        "We sent a new confirmation link to again@example.test." in client.get("/account/").content.decode()
    )

    with django_capture_on_commit_callbacks(execute=True):
        second = client.post("/account/confirm/resend/")
    assert second.status_code == 302
    assert len(_confirmations("again@example.test")) == 1
    assert "we send at most one a minute" in client.get("/account/").content.decode()

    cache.delete(f"email-confirmation-sent:{user.pk}")  # a minute later
    with django_capture_on_commit_callbacks(execute=True):
        client.post("/account/confirm/resend/")
    assert len(_confirmations("again@example.test")) == 2


def test_resend_needs_a_login_and_a_post_and_skips_confirmed_addresses(world: World) -> None:
    anonymous = client_for(None).post("/account/confirm/resend/")
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith("/login/")
    assert client_for(world.amy).get("/account/confirm/resend/").status_code == 405
    client = client_for(world.amy)
    assert client.post("/account/confirm/resend/").status_code == 302
    assert mail.outbox == []
    assert "amy@alpha.test is already confirmed." in client.get("/account/").content.decode()


def test_signup_right_after_is_throttled_like_a_resend(
    world: World, django_capture_on_commit_callbacks: OnCommit
) -> None:
    """The sign-up mail counts: pressing Resend at once sends nothing more."""
    user = _unverified("eager@example.test")
    with django_capture_on_commit_callbacks(execute=True):
        email_confirmation.email_confirmation_send(user=user, url_base="http://localhost")
    client = client_for(user)
    with django_capture_on_commit_callbacks(execute=True):
        client.post("/account/confirm/resend/")
    assert len(_confirmations("eager@example.test")) == 1


@pytest.fixture
def idp(settings: Any) -> Iterator[FakeIdentityProvider]:
    with fake_provider(settings) as provider:
        yield provider


def test_accounts_created_by_a_provider_login_are_confirmed(world: World, idp: FakeIdentityProvider) -> None:
    idp.next_user = FakeUser(sub="gh-2001", email="octo2@example.test", name="Octo", github_login="octo2")
    client: Client = client_for(None)
    _, callback_url = login_via(client, "/sso/auth/login/github/")
    assert client.get(local_path(callback_url)).status_code == 302
    assert User.objects.get(email="octo2@example.test").email_verified_at is not None
    assert mail.outbox == []
