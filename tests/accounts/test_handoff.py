import pytest
from django.core import signing
from django.test import Client

from apps.accounts.handoff import SALT, handoff_token
from apps.accounts.models import User
from tests.conftest import World

pytestmark = pytest.mark.django_db


def _redeem(token: str, host: str = "alpha.localhost") -> Client:
    client = Client(HTTP_HOST=host)
    client.response = client.get("/auth/handoff/", {"token": token})  # type: ignore[attr-defined]
    return client


def test_a_handoff_logs_in_on_the_organization_host_once(world: World) -> None:
    token = handoff_token(user=world.amy, host="alpha.localhost", next_path="/")
    first = _redeem(token)
    assert first.response.status_code == 302  # type: ignore[attr-defined]
    assert first.get("/").status_code == 200
    second = _redeem(token)
    assert second.response.status_code == 400  # type: ignore[attr-defined]
    assert b"This sign-in link has expired" in second.response.content  # type: ignore[attr-defined]
    assert second.get("/").status_code == 302


def test_a_tampered_or_foreign_token_logs_nobody_in(world: World) -> None:
    forged = signing.dumps({"u": world.amy.pk, "h": "x", "n": "/", "j": "1"}, salt=SALT)
    assert _redeem(forged).response.status_code == 400  # type: ignore[attr-defined]
    assert _redeem("not-a-token").response.status_code == 400  # type: ignore[attr-defined]
    wrong_salt = signing.dumps({"u": world.amy.pk}, salt="other")
    assert _redeem(wrong_salt).response.status_code == 400  # type: ignore[attr-defined]


def test_a_password_change_voids_outstanding_handoffs(world: World) -> None:
    amy = User.objects.get(pk=world.amy.pk)  # not the shared object: the world outlives this test
    token = handoff_token(user=amy, host="alpha.localhost", next_path="/")
    amy.set_password("a brand new passphrase")
    amy.save()
    assert _redeem(token).response.status_code == 400  # type: ignore[attr-defined]


def test_a_handoff_does_not_grant_membership(world: World) -> None:
    client = _redeem(handoff_token(user=world.ben, host="alpha.localhost", next_path="/"))
    assert client.get("/").status_code == 403


def test_a_handoff_never_redirects_off_the_host(world: World) -> None:
    client = _redeem(handoff_token(user=world.amy, host="alpha.localhost", next_path="//evil.example.com/"))
    assert client.response["Location"] == "/"  # type: ignore[attr-defined]


def test_a_token_for_one_organization_does_not_work_on_another(world: World) -> None:
    token = handoff_token(user=world.amy, host="alpha.localhost", next_path="/")
    assert _redeem(token, host="beta.localhost").response.status_code == 400  # type: ignore[attr-defined]
