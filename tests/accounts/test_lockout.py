"""Login throttling: failed logins lock the email, then the IP, with 429 and Retry-After."""

import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from django.test import Client

from apps.accounts.lockout import lockout_clear
from apps.tenancy.models import AuditEvent
from tests.conftest import World, host
from tests.factories import PASSWORD

if TYPE_CHECKING:
    from django.test.client import _MonkeyPatchedWSGIResponse

pytestmark = pytest.mark.django_db

_addresses = itertools.count(1)
EMAILS = ["amy@alpha.test", "alice@alpha.test", "bob@beta.test", "nobody@nowhere.test"]


@pytest.fixture
def ip() -> Iterator[str]:
    """A client address of its own per test, so counts never leak between tests or runs."""
    address = f"198.51.100.{next(_addresses) % 250 + 1}"
    lockout_clear(ip=address)
    for email in EMAILS:
        lockout_clear(email=email)
    yield address
    lockout_clear(ip=address)
    for email in EMAILS:
        lockout_clear(email=email)


def _login(ip: str, email: str, password: str) -> "_MonkeyPatchedWSGIResponse":
    client = Client(HTTP_HOST=host(), REMOTE_ADDR=ip)
    return client.post("/login/", {"username": email, "password": password})


def test_five_wrong_passwords_lock_the_account_even_for_the_right_one(world: World, ip: str) -> None:
    for _ in range(4):
        response = _login(ip, "amy@alpha.test", "wrong")
        assert response.status_code == 200
        assert b"enter a correct email and password" in response.content
    fifth = _login(ip, "amy@alpha.test", "wrong")
    assert fifth.status_code == 429
    response = _login(ip, "amy@alpha.test", PASSWORD)
    assert response.status_code == 429
    assert 14 * 60 < int(response["Retry-After"]) <= 15 * 60
    page = response.content.decode()
    assert "Too many failed attempts for this account. Try again in 15 minutes." in page
    assert 'value="amy@alpha.test"' in page  # the form is shown again, filled in
    # Another address does not help: the lock is on the account.
    assert _login("203.0.113.9", "AMY@alpha.test", PASSWORD).status_code == 429
    lockout_clear(ip="203.0.113.9")

    assert AuditEvent.objects.filter(action="auth.login_failed", target_id=str(world.amy.pk)).count() == 5
    locked = AuditEvent.objects.get(action="auth.locked_out")
    assert locked.organization is None
    assert locked.changes["after"]["scope"] == "email"
    assert not AuditEvent.objects.filter(action="auth.login", target_id=str(world.amy.pk)).exists()


def test_other_accounts_from_the_same_ip_log_in_until_the_ip_limit(world: World, ip: str) -> None:
    for _ in range(5):
        _login(ip, "amy@alpha.test", "wrong")
    assert _login(ip, "amy@alpha.test", PASSWORD).status_code == 429
    assert _login(ip, "alice@alpha.test", PASSWORD).status_code == 302  # unaffected

    # 20 failures from one IP lock the IP, whichever accounts they were for.
    for email in ["bob@beta.test"] * 4 + ["nobody@nowhere.test"] * 5 + ["alice@alpha.test"] * 4:
        _login(ip, email, "wrong")
    # 5 + 4 + 5 + 4 = 18 so far; alice is still fine.
    assert _login(ip, "alice@alpha.test", PASSWORD).status_code == 302
    _login(ip, "bob@beta.test", "wrong")  # 19
    ipl = _login(ip, "ben@beta.test", "wrong")  # 20
    assert ipl.status_code == 429
    response = _login(ip, "alice@alpha.test", PASSWORD)
    assert response.status_code == 429
    assert "Too many failed attempts for your network." in response.content.decode()
    assert int(response["Retry-After"]) > 0
    # The same accounts from elsewhere are fine.
    assert _login("203.0.113.10", "alice@alpha.test", PASSWORD).status_code == 302
    lockout_clear(ip="203.0.113.10", email="ben@beta.test")


def test_a_successful_login_resets_the_accounts_count(world: World, ip: str) -> None:
    for _ in range(4):
        _login(ip, "amy@alpha.test", "wrong")
    assert _login(ip, "amy@alpha.test", PASSWORD).status_code == 302
    assert AuditEvent.objects.filter(action="auth.login", target_id=str(world.amy.pk)).exists()
    for _ in range(4):
        assert _login(ip, "amy@alpha.test", "wrong").status_code == 200
    assert _login(ip, "amy@alpha.test", PASSWORD).status_code == 302


def test_an_empty_form_is_not_counted_as_a_guess(world: World, ip: str) -> None:
    for _ in range(6):
        assert _login(ip, "amy@alpha.test", "").status_code == 200
    assert _login(ip, "amy@alpha.test", PASSWORD).status_code == 302
    assert not AuditEvent.objects.filter(action="auth.login_failed").exists()


def test_the_back_office_login_locks_out_guessing_too(world: World, ip: str) -> None:
    from apps.accounts.models import User

    User.objects.filter(pk=world.bob.pk).update(is_staff=True)
    client = Client(HTTP_HOST=host(), REMOTE_ADDR=ip)
    for _ in range(5):
        response = client.post("/admin/login/", {"username": "bob@beta.test", "password": "wrong"})
    assert response.status_code == 429
    assert "Too many failed attempts for this account" in response.content.decode()
    locked = client.post("/admin/login/?next=/admin/", {"username": "bob@beta.test", "password": PASSWORD})
    assert locked.status_code == 429
    lockout_clear(email="bob@beta.test")
    allowed = client.post("/admin/login/?next=/admin/", {"username": "bob@beta.test", "password": PASSWORD})
    assert allowed.status_code == 302
    assert allowed["Location"] == "/admin/"
