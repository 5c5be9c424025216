"""Regressions from the security review of the identity work."""

import pytest

from apps.accounts.lockout import failure_record, lockout_check, lockout_clear
from apps.core.errors import Gone
from apps.tenancy import identity
from apps.tenancy.api import audit_csv_rows
from apps.tenancy.audit import Actor
from apps.tenancy.hosts import is_safe_redirect
from apps.tenancy.models import AuditEvent, Membership
from tests.conftest import World
from tests.factories import make_user

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example\\.localhost/",
        "http://alpha.localhost/\\evil.example",
        "/\\evil.example",
        "http://alpha.localhost/\tx",
    ],
)
def test_a_next_url_with_a_backslash_or_control_character_is_not_followed(url: str) -> None:
    assert not is_safe_redirect(url)


def test_ordinary_next_urls_still_are() -> None:
    assert is_safe_redirect("http://alpha.localhost/settings/members/?tab=1")
    assert is_safe_redirect("/orgs/")


def test_a_removed_member_cannot_come_back_with_the_old_invitation_link(world: World) -> None:
    _, link = identity.invitation_create(
        actor=Actor(user=world.alice), organization=world.alpha, email="dora@alpha.test", role="admin",
        accept_url_base="http://localhost",
    )  # fmt: skip
    token = link.rstrip("/").rsplit("/", 1)[1]
    dora = make_user("dora@alpha.test")
    membership = identity.invitation_accept(actor=Actor(user=dora), token=token)
    assert identity.invitation_accept(actor=Actor(user=dora), token=token) == membership  # reopening is fine
    identity.member_remove(actor=Actor(user=world.alice), membership=membership)
    with pytest.raises(Gone, match="already used"):
        identity.invitation_accept(actor=Actor(user=dora), token=token)
    assert not Membership.objects.filter(user=dora, organization=world.alpha).exists()


def test_look_alike_spellings_of_an_address_share_its_lockout() -> None:
    lockout_clear(email="victim@example.com")
    for _ in range(5):
        failure_record(email="victim@\uff45xample.com", ip=None)  # a full-width "e"
    assert lockout_check(email="victim@example.com", ip=None) is not None
    lockout_clear(email="victim@example.com")


def test_the_audit_export_does_not_hand_spreadsheets_formulas(world: World) -> None:
    AuditEvent.objects.create(
        organization=world.alpha, action="probe", user_agent='=HYPERLINK("http://x")', actor_email="@sum"
    )
    rows = "".join(audit_csv_rows(AuditEvent.objects.filter(action="probe")))
    assert "'=HYPERLINK" in rows
    assert "'@sum" in rows


def test_keys_a_member_created_are_revoked_when_they_leave_or_stop_managing_keys(world: World) -> None:
    from apps.tenancy.models import ApiKey

    Membership.objects.filter(organization=world.alpha, user=world.amy).update(role="admin")
    amy = Actor(user=world.amy)
    first, _ = identity.api_key_create(actor=amy, organization=world.alpha, name="amy-1", scopes=["admin"])
    membership = Membership.objects.get(organization=world.alpha, user=world.amy)
    identity.member_change_role(actor=Actor(user=world.alice), membership=membership, role="member")
    assert ApiKey.objects.get(pk=first.pk).revoked_at is not None

    Membership.objects.filter(pk=membership.pk).update(role="admin")
    second, _ = identity.api_key_create(actor=amy, organization=world.alpha, name="amy-2", scopes=["admin"])
    identity.member_remove(actor=Actor(user=world.alice), membership=Membership.objects.get(pk=membership.pk))
    assert ApiKey.objects.get(pk=second.pk).revoked_at is not None
    reasons = AuditEvent.objects.filter(action="api_key.revoked").values_list("changes", flat=True)
    assert {r["after"]["reason"] for r in reasons} == {
        "creator no longer manages keys",
        "creator left the organization",
    }
