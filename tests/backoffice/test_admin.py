"""The back office: Django's admin for platform staff, on the public host only."""

import pytest
from django.test import Client

from apps.accounts.models import User
from apps.core.errors import Conflict, Invalid
from apps.tenancy.audit import Actor
from apps.tenancy.backoffice import organization_suspend
from apps.tenancy.identity import api_key_create
from apps.tenancy.models import ApiKey, AuditEvent, Membership, Organization
from tests.conftest import World, client_for
from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db

ORGS = "/admin/tenancy/organization/"


@pytest.fixture
def staff() -> User:
    return User.objects.create_user("sam@agentyard.test", PASSWORD, is_staff=True, is_superuser=True)


@pytest.fixture
def back_office(staff: User) -> Client:
    return client_for(staff)


def _alpha(world: World) -> Organization:
    """A fresh copy: world's objects are shared by every test, so tests never change them."""
    return Organization.objects.get(pk=world.alpha.pk)


def _change_url(organization: Organization) -> str:
    return f"{ORGS}{organization.pk}/change/"


def test_staff_can_list_and_search_organizations(world: World, back_office: Client) -> None:
    page = back_office.get(ORGS).content.decode()
    assert _change_url(world.alpha) in page
    assert _change_url(world.beta) in page
    found = back_office.get(ORGS, {"q": "alph"}).content.decode()
    assert _change_url(world.alpha) in found
    assert _change_url(world.beta) not in found
    assert back_office.get(ORGS, {"status__exact": "suspended"}).status_code == 200


def test_staff_can_open_every_back_office_list(world: World, back_office: Client) -> None:
    for url in [
        "/admin/",
        ORGS,
        _change_url(world.alpha),
        "/admin/accounts/user/",
        f"/admin/accounts/user/{world.amy.pk}/change/",
        "/admin/accounts/user/add/",
        "/admin/tenancy/membership/",
        "/admin/tenancy/apikey/",
        "/admin/tenancy/auditevent/",
    ]:
        assert back_office.get(url).status_code == 200, url
    found = back_office.get("/admin/accounts/user/", {"q": "AMY@alpha"}).content.decode()
    assert "amy@alpha.test" in found
    assert "bob@beta.test" not in found


@pytest.mark.parametrize("path", ["/admin/", ORGS, "/admin/tenancy/auditevent/"])
def test_anonymous_visitors_and_non_staff_are_sent_to_the_admin_login(world: World, path: str) -> None:
    for user in [None, world.olga, world.alice]:
        response = client_for(user).get(path)
        assert response.status_code == 302, user
        assert response["Location"].startswith("/admin/login/?next="), user


def test_the_admin_login_refuses_people_who_are_not_staff(world: World) -> None:
    response = client_for(None).post("/admin/login/", {"username": "olga@nowhere.test", "password": PASSWORD})
    assert response.status_code == 200
    assert b"staff account" in response.content
    assert client_for(world.olga).get(ORGS).status_code == 302


def test_there_is_no_admin_on_an_organization_host(world: World) -> None:
    alice = User.objects.get(pk=world.alice.pk)  # world's objects are shared: change a copy
    alice.is_staff = alice.is_superuser = True
    alice.save()
    for user in [None, alice]:
        client = client_for(user, world.alpha)
        for path in ["/admin/", "/admin/login/", ORGS]:
            assert client.get(path).status_code == 404, (user, path)


def _key_status(raw: str, organization: Organization) -> tuple[int, dict[str, object]]:
    response = client_for(None, organization).get("/api/v1/organization", HTTP_AUTHORIZATION=f"Bearer {raw}")
    return response.status_code, response.json()


def test_suspending_asks_for_a_reason_and_shuts_the_organization_off_until_reactivated(
    world: World, back_office: Client, staff: User
) -> None:
    _, raw = api_key_create(
        actor=Actor(user=world.alice), organization=world.alpha, name="ci", scopes=["organization:read"]
    )
    amy = client_for(world.amy, world.alpha)
    assert amy.get("/").status_code == 200
    assert _key_status(raw, world.alpha)[0] == 200

    # The change page offers the flow; it asks for a reason first.
    assert "suspend/?ids=" in back_office.get(_change_url(world.alpha)).content.decode()
    form = back_office.get(f"{ORGS}suspend/", {"ids": world.alpha.pk})
    assert form.status_code == 200
    assert b'name="reason"' in form.content
    refused = back_office.post(f"{ORGS}suspend/", {"ids": str(world.alpha.pk), "reason": "  "})
    assert refused.status_code == 400
    assert b"This field is required" in refused.content
    assert _alpha(world).status == Organization.Status.ACTIVE

    response = back_office.post(
        f"{ORGS}suspend/", {"ids": str(world.alpha.pk), "reason": "Unpaid invoices since March"}
    )
    assert response.status_code == 302
    assert response["Location"] == _change_url(world.alpha)
    alpha = _alpha(world)
    assert alpha.status == Organization.Status.SUSPENDED
    assert alpha.status_detail == "Unpaid invoices since March"
    event = AuditEvent.objects.get(action="organization.suspended")
    assert event.organization_id == world.alpha.pk
    assert event.actor_email == staff.email
    assert event.changes["after"]["reason"] == "Unpaid invoices since March"
    assert event.changes["before"]["status"] == "active"

    page = amy.get("/")
    assert page.status_code == 403
    assert b"suspended" in page.content
    status, body = _key_status(raw, world.alpha)
    assert status == 403
    assert body["error"]["code"] == "organization_suspended"  # type: ignore[index]
    assert client_for(world.bob, world.beta).get("/").status_code == 200  # others are untouched

    assert "reactivate/?ids=" in back_office.get(_change_url(world.alpha)).content.decode()
    response = back_office.post(f"{ORGS}reactivate/", {"ids": str(world.alpha.pk), "reason": "Paid in full"})
    assert response.status_code == 302
    alpha = _alpha(world)
    assert alpha.status == Organization.Status.ACTIVE
    assert alpha.status_detail == ""
    assert (
        AuditEvent.objects.get(action="organization.reactivated").changes["after"]["reason"] == "Paid in full"
    )
    assert amy.get("/").status_code == 200
    assert _key_status(raw, world.alpha)[0] == 200


def test_the_list_actions_lead_to_the_reason_form(world: World, back_office: Client) -> None:
    response = back_office.post(
        ORGS, {"action": "suspend_selected", "_selected_action": [world.alpha.pk, world.beta.pk]}
    )
    assert response.status_code == 302
    form = back_office.get(response["Location"])
    assert b"Alpha" in form.content
    assert b"Beta" in form.content
    ids = response["Location"].split("ids=")[1]
    assert back_office.post(f"{ORGS}suspend/", {"ids": ids, "reason": "Abuse report 42"}).status_code == 302
    assert set(Organization.objects.filter(slug__in=["alpha", "beta"]).values_list("status", flat=True)) == {
        "suspended"
    }
    assert AuditEvent.objects.filter(action="organization.suspended").count() == 2


def test_suspending_twice_or_without_a_reason_changes_nothing(world: World, staff: User) -> None:
    actor = Actor(user=staff)
    with pytest.raises(Invalid):
        organization_suspend(actor=actor, organization=_alpha(world), reason=" ")
    organization_suspend(actor=actor, organization=_alpha(world), reason="spam")
    with pytest.raises(Conflict):
        organization_suspend(actor=actor, organization=_alpha(world), reason="again")
    assert AuditEvent.objects.filter(action="organization.suspended").count() == 1


def test_reactivating_an_active_organization_is_refused_with_a_message(
    world: World, back_office: Client
) -> None:
    response = back_office.post(
        f"{ORGS}reactivate/", {"ids": str(world.alpha.pk), "reason": "why not"}, follow=True
    )
    assert response.status_code == 200
    assert b"only an organization that is suspended can be reactivated" in response.content
    assert not AuditEvent.objects.filter(action="organization.reactivated").exists()


def test_audit_events_cannot_be_added_changed_or_deleted(
    world: World, back_office: Client, staff: User
) -> None:
    organization_suspend(actor=Actor(user=staff), organization=_alpha(world), reason="spam")
    event = AuditEvent.objects.get(action="organization.suspended")
    base = "/admin/tenancy/auditevent/"
    listing = back_office.get(base, {"q": "sam@agentyard"})
    assert listing.status_code == 200
    assert b"organization.suspended" in listing.content
    assert back_office.get(base, {"action": "organization.suspended"}).status_code == 200
    assert back_office.get(base, {"organization__id__exact": world.alpha.pk}).status_code == 200
    page = back_office.get(f"{base}{event.pk}/change/")
    assert page.status_code == 200
    assert b'name="_save"' not in page.content  # shown read-only
    assert back_office.post(f"{base}{event.pk}/change/", {"action": "forged"}).status_code == 403
    assert back_office.post(f"{base}{event.pk}/delete/", {"post": "yes"}).status_code == 403
    assert back_office.get(f"{base}add/").status_code == 403
    bulk = back_office.post(
        base, {"action": "delete_selected", "_selected_action": [event.pk], "post": "yes"}
    )
    assert bulk.status_code in {200, 302}
    event.refresh_from_db()
    assert event.action == "organization.suspended"


def test_api_keys_are_revoked_from_the_list_and_their_hash_never_shown(
    world: World, back_office: Client
) -> None:
    key, _ = api_key_create(
        actor=Actor(user=world.alice), organization=world.alpha, name="deploy", scopes=["admin"]
    )
    base = "/admin/tenancy/apikey/"
    assert key.secret_hash not in back_office.get(base).content.decode()
    assert key.secret_hash not in back_office.get(f"{base}{key.pk}/change/").content.decode()
    response = back_office.post(base, {"action": "revoke_selected", "_selected_action": [key.pk]})
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.revoked_at is not None
    event = AuditEvent.objects.get(action="api_key.revoked")
    assert event.organization_id == world.alpha.pk
    assert event.actor_email == "sam@agentyard.test"
    assert back_office.post(f"{base}{key.pk}/delete/", {"post": "yes"}).status_code == 403
    assert ApiKey.objects.filter(pk=key.pk).exists()


def test_every_admin_change_is_audited(world: World, back_office: Client) -> None:
    membership = Membership.objects.get(user=world.amy, organization=world.alpha)
    url = f"/admin/tenancy/membership/{membership.pk}/change/"
    response = back_office.post(url, {"user": world.amy.pk, "organization": world.alpha.pk, "role": "admin"})
    assert response.status_code == 302, response.content
    event = AuditEvent.objects.get(action="admin.change")
    assert event.organization_id == world.alpha.pk
    assert event.actor_email == "sam@agentyard.test"
    assert event.changes["before"] == {"role": "member"}
    assert event.changes["after"]["role"] == "admin"

    response = back_office.post(
        "/admin/accounts/user/add/",
        {
            "email": "New.Person@Example.test",
            "name": "New Person",
            "usable_password": "true",
            "password1": PASSWORD,
            "password2": PASSWORD,
        },
    )
    assert response.status_code == 302, response.content
    created = User.objects.get(email="new.person@example.test")
    assert created.check_password(PASSWORD)
    added = AuditEvent.objects.get(action="admin.add")
    assert added.target_id == str(created.pk)
    assert added.organization is None
    assert PASSWORD not in str(added.changes)

    duplicate = back_office.post(
        "/admin/accounts/user/add/",
        {"email": "AMY@alpha.test", "usable_password": "true", "password1": PASSWORD, "password2": PASSWORD},
    )
    assert duplicate.status_code == 200
    assert b"already exists" in duplicate.content

    response = back_office.post(f"/admin/tenancy/membership/{membership.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    deleted = AuditEvent.objects.get(action="admin.delete")
    assert deleted.organization_id == world.alpha.pk
    assert not Membership.objects.filter(pk=membership.pk).exists()
