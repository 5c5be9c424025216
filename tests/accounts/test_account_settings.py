"""/account/: a person changes their name, email and password on the public site."""

import pytest
from django.test import Client

from apps.accounts.models import User
from apps.tenancy.models import AuditEvent
from tests.conftest import World, client_for
from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "a much longer passphrase 2024"


def _profile(client: Client, **data: str) -> "object":
    return client.post("/account/", {"form": "profile", **data})


def test_the_page_needs_a_login_and_shows_the_account(world: World) -> None:
    response = client_for(None).get("/account/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=/account/")
    page = client_for(world.amy).get("/account/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'value="amy@alpha.test"' in html
    assert "Change password" in html
    assert 'data-testid="connected-logins"' in html  # the single sign-on section, included
    assert 'href="http://localhost/account/"' in client_for(world.amy).get("/orgs/").content.decode()


def test_the_account_page_is_not_on_an_organization_host(world: World) -> None:
    assert client_for(world.amy, world.alpha).get("/account/").status_code == 404


def test_changing_name_and_email_with_the_current_password(world: World) -> None:
    client = client_for(world.amy)
    response = client.post(
        "/account/",
        {"form": "profile", "name": "Amy Pond", "email": "Amy.Pond@Alpha.test", "current_password": PASSWORD},
    )
    assert response.status_code == 302
    assert response["Location"] == "/account/"
    amy = User.objects.get(pk=world.amy.pk)  # world's objects are shared by every test: read, never refresh
    assert (amy.name, amy.email) == ("Amy Pond", "amy.pond@alpha.test")
    event = AuditEvent.objects.get(action="account.email_changed")
    assert event.organization is None
    assert event.changes == {"before": {"email": "amy@alpha.test"}, "after": {"email": "amy.pond@alpha.test"}}
    assert "Your account was updated." in client.get("/account/").content.decode()
    # The new address logs in.
    assert (
        client_for(None)
        .post("/login/", {"username": "amy.pond@alpha.test", "password": PASSWORD})
        .status_code
        == 302
    )


def test_changing_only_the_name_needs_no_password(world: World) -> None:
    response = client_for(world.amy).post(
        "/account/", {"form": "profile", "name": "A. Amy", "email": "amy@alpha.test"}
    )
    assert response.status_code == 302
    assert User.objects.get(pk=world.amy.pk).name == "A. Amy"
    assert not AuditEvent.objects.filter(action="account.email_changed").exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"email": "new@alpha.test", "current_password": "wrong"}, "Your current password is not right."),
        ({"email": "new@alpha.test"}, "Your current password is not right."),
        ({"email": "ALICE@alpha.test", "current_password": PASSWORD}, "Another account uses this email."),
        ({"email": "not an email", "current_password": PASSWORD}, "Enter a valid email address."),
        ({"email": ""}, "This field is required."),
    ],
)
def test_a_bad_email_change_is_refused_and_changes_nothing(
    world: World, data: dict[str, str], message: str
) -> None:
    response = client_for(world.amy).post("/account/", {"form": "profile", "name": "Changed", **data})
    assert response.status_code == 400
    assert message in response.content.decode()
    amy = User.objects.get(pk=world.amy.pk)
    assert (amy.email, amy.name) == ("amy@alpha.test", "Amy")
    assert not AuditEvent.objects.filter(action__startswith="account.").exists()


def test_changing_the_password_keeps_the_session(world: World) -> None:
    client = client_for(world.amy)
    response = client.post(
        "/account/",
        {
            "form": "password",
            "old_password": PASSWORD,
            "new_password1": NEW_PASSWORD,
            "new_password2": NEW_PASSWORD,
        },
    )
    assert response.status_code == 302
    assert client.get("/account/").status_code == 200  # still logged in here
    assert User.objects.get(pk=world.amy.pk).check_password(NEW_PASSWORD)
    event = AuditEvent.objects.get(action="account.password_changed")
    assert event.organization is None
    assert event.target_id == str(world.amy.pk)
    assert NEW_PASSWORD not in str(event.changes)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"old_password": "wrong", "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
            "Your old password was entered incorrectly.",
        ),
        ({"old_password": PASSWORD, "new_password1": "12345678", "new_password2": "12345678"}, "too common"),
        ({"old_password": PASSWORD, "new_password1": "short", "new_password2": "short"}, "too short"),
        (
            {"old_password": PASSWORD, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD + "x"},
            "match",
        ),
    ],
)
def test_a_bad_password_change_is_refused_and_changes_nothing(
    world: World, data: dict[str, str], message: str
) -> None:
    response = client_for(world.amy).post("/account/", {"form": "password", **data})
    assert response.status_code == 400
    assert message in response.content.decode()
    assert User.objects.get(pk=world.amy.pk).check_password(PASSWORD)
    assert not AuditEvent.objects.filter(action="account.password_changed").exists()


def test_a_post_without_a_form_name_is_a_400_not_a_500(world: World) -> None:
    response = client_for(world.amy).post("/account/", {"name": "x"})
    assert response.status_code == 400
    assert "Choose which part of your account to change." in response.content.decode()
