"""/api/v1/members: listing with filters and cursor pages, role changes, removal,
and the rule that an organization always keeps an owner."""

from typing import Any
from urllib.parse import urlsplit

import pytest
from django.test import Client

from apps.tenancy.models import AuditEvent, Membership
from tests.api.conftest import API, error_of, key_client, new_key, send_json
from tests.conftest import World, client_for
from tests.factories import make_user

pytestmark = pytest.mark.django_db


def _membership(world: World, email: str, role: str = Membership.Role.MEMBER) -> Membership:
    return Membership.objects.create(user=make_user(email), organization=world.alpha, role=role)


def _amy(world: World) -> Membership:
    return Membership.objects.get(organization=world.alpha, user=world.amy)


def _alice(world: World) -> Membership:
    return Membership.objects.get(organization=world.alpha, user=world.alice)


def test_listing_members_shows_only_this_organizations_people(world: World, admin_client: Client) -> None:
    response = admin_client.get(f"{API}/members")
    assert response.status_code == 200
    rows = response.json()["results"]
    assert {(row["email"], row["role"]) for row in rows} == {
        ("alice@alpha.test", "owner"),
        ("amy@alpha.test", "member"),
    }


def test_members_can_be_filtered_by_role(world: World, admin_client: Client) -> None:
    _membership(world, "ada@alpha.test", Membership.Role.ADMIN)
    owners = admin_client.get(f"{API}/members", {"role": "owner"}).json()["results"]
    admins = admin_client.get(f"{API}/members", {"role": "admin"}).json()["results"]
    assert [row["email"] for row in owners] == ["alice@alpha.test"]
    assert [row["email"] for row in admins] == ["ada@alpha.test"]


def test_a_role_filter_that_is_not_a_role_is_a_400_on_that_field(world: World, admin_client: Client) -> None:
    response = admin_client.get(f"{API}/members", {"role": "emperor"})
    assert response.status_code == 400
    assert list(error_of(response)["fields"]) == ["role"]


def test_members_can_be_filtered_by_email(world: World, admin_client: Client) -> None:
    rows = admin_client.get(f"{API}/members", {"email": "AMY@"}).json()["results"]
    assert [row["email"] for row in rows] == ["amy@alpha.test"]


def test_cursor_pages_follow_the_next_link_to_the_end_without_repeats(
    world: World, admin_client: Client
) -> None:
    for index in range(5):
        _membership(world, f"paged{index}@alpha.test")
    seen: list[str] = []
    url: str | None = f"{API}/members?page_size=2"
    pages = 0
    while url:
        page = admin_client.get(url)
        assert page.status_code == 200
        body = page.json()
        assert len(body["results"]) <= 2
        seen += [row["email"] for row in body["results"]]
        pages += 1
        next_url = body["next"]
        url = None if next_url is None else f"{urlsplit(next_url).path}?{urlsplit(next_url).query}"
    assert pages == 4
    assert len(seen) == len(set(seen)) == 7
    assert body["previous"] is not None


@pytest.mark.parametrize("size", ["0", "-1", "many"])
def test_a_page_size_that_is_not_a_positive_number_falls_back_to_the_default(
    world: World, admin_client: Client, size: str
) -> None:
    response = admin_client.get(f"{API}/members", {"page_size": size})
    assert response.status_code == 200
    assert len(response.json()["results"]) == 2


def test_a_page_size_above_the_maximum_is_capped(world: World, admin_client: Client) -> None:
    response = admin_client.get(f"{API}/members", {"page_size": "100000"})
    assert response.status_code == 200


def test_a_forged_cursor_is_a_404_not_a_500(world: World, admin_client: Client) -> None:
    response = admin_client.get(f"{API}/members", {"cursor": "not-a-cursor"})
    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


def test_reading_one_member_gives_an_etag(world: World, admin_client: Client) -> None:
    response = admin_client.get(f"{API}/members/{_amy(world).pk}")
    assert response.status_code == 200
    assert response.json()["email"] == "amy@alpha.test"
    assert response.headers["ETag"]


def test_a_member_of_another_organization_is_404(world: World, admin_client: Client) -> None:
    ben = Membership.objects.get(organization=world.beta, user=world.ben)
    for method in ("get", "delete"):
        response = getattr(admin_client, method)(f"{API}/members/{ben.pk}")
        assert response.status_code == 404
        assert error_of(response)["code"] == "not_found"
    assert Membership.objects.filter(pk=ben.pk).exists()


def test_changing_a_role_is_saved_and_audited(world: World, admin_client: Client) -> None:
    amy = _amy(world)
    response = send_json(admin_client, "patch", f"/members/{amy.pk}", {"role": "admin"})
    assert response.status_code == 200, response.content
    assert response.json()["role"] == "admin"
    event = AuditEvent.objects.get(organization=world.alpha, action="member.role_changed")
    assert event.changes == {"before": {"role": "member"}, "after": {"role": "admin"}}
    assert event.target_id == str(amy.pk)


def test_a_role_change_with_a_stale_etag_is_a_412(world: World, admin_client: Client) -> None:
    amy = _amy(world)
    stale = admin_client.get(f"{API}/members/{amy.pk}").headers["ETag"]
    assert send_json(admin_client, "patch", f"/members/{amy.pk}", {"role": "viewer"}).status_code == 200
    response = send_json(admin_client, "patch", f"/members/{amy.pk}", {"role": "admin"}, HTTP_IF_MATCH=stale)
    assert response.status_code == 412
    assert _amy(world).role == "viewer"


@pytest.mark.parametrize(
    "body", [{"role": "emperor"}, {"role": 3}, {"role": None}, {"role": "admin", "email": "x"}]
)
def test_a_bad_role_change_is_a_400_with_field_errors(
    world: World, admin_client: Client, body: dict[str, Any]
) -> None:
    response = send_json(admin_client, "patch", f"/members/{_amy(world).pk}", body)
    assert response.status_code == 400
    assert error_of(response)["fields"]
    assert _amy(world).role == "member"


def test_the_last_owner_cannot_step_down(world: World) -> None:
    alice = _alice(world)
    response = send_json(
        client_for(world.alice, world.alpha), "patch", f"/members/{alice.pk}", {"role": "admin"}
    )
    assert response.status_code == 409
    error = error_of(response)
    assert error["code"] == "last_owner"
    assert "owner" in error["message"]
    assert _alice(world).role == "owner"


def test_the_last_owner_cannot_leave(world: World) -> None:
    alice = _alice(world)
    response = client_for(world.alice, world.alpha).delete(f"{API}/members/{alice.pk}")
    assert response.status_code == 409
    assert error_of(response)["code"] == "last_owner"
    assert Membership.objects.filter(pk=alice.pk).exists()


def test_an_owner_can_remove_another_owner_but_not_the_last_one(world: World) -> None:
    second = _membership(world, "otto@alpha.test", Membership.Role.OWNER)
    client = client_for(world.alice, world.alpha)
    assert client.delete(f"{API}/members/{second.pk}").status_code == 204
    response = client.delete(f"{API}/members/{_alice(world).pk}")
    assert response.status_code == 409
    assert error_of(response)["code"] == "last_owner"


def test_only_an_owner_may_remove_an_owner(world: World) -> None:
    Membership.objects.filter(pk=_amy(world).pk).update(role=Membership.Role.ADMIN)
    response = client_for(world.amy, world.alpha).delete(f"{API}/members/{_alice(world).pk}")
    assert response.status_code == 403
    assert error_of(response)["code"] == "owner_only"
    _, raw = new_key(world, ["members:write"])
    by_key = key_client(raw).delete(f"{API}/members/{_alice(world).pk}")
    assert by_key.status_code == 403
    assert Membership.objects.filter(pk=_alice(world).pk).exists()


def test_removing_a_member_is_a_204_and_audited(world: World, admin_client: Client) -> None:
    amy = _amy(world)
    response = admin_client.delete(f"{API}/members/{amy.pk}", HTTP_USER_AGENT="cleanup-script")
    assert response.status_code == 204
    assert not Membership.objects.filter(pk=amy.pk).exists()
    event = AuditEvent.objects.get(organization=world.alpha, action="member.removed")
    assert event.changes == {"before": {"role": "member", "email": "amy@alpha.test"}}
    assert event.user_agent == "cleanup-script"
    assert event.request_id


def test_anyone_may_leave_and_it_is_audited_as_leaving(world: World) -> None:
    amy = _amy(world)
    response = client_for(world.amy, world.alpha).delete(f"{API}/members/{amy.pk}")
    assert response.status_code == 204
    event = AuditEvent.objects.get(organization=world.alpha, action="member.left")
    assert event.actor_email == "amy@alpha.test"


def test_ownership_is_handed_over_by_an_owner(world: World) -> None:
    amy = _amy(world)
    response = send_json(
        client_for(world.alice, world.alpha),
        "post",
        "/organization/transfer-ownership",
        {"member_id": amy.pk},
    )
    assert response.status_code == 200, response.content
    assert response.json()["role"] == "owner"
    assert _alice(world).role == "admin"
    assert AuditEvent.objects.filter(
        organization=world.alpha, action="organization.ownership_transferred"
    ).exists()


@pytest.mark.parametrize("body", [{"member_id": "amy"}, {"member_id": 999999}, {}, {"member_id": 1, "x": 1}])
def test_a_bad_ownership_transfer_is_a_400(world: World, body: dict[str, Any]) -> None:
    response = send_json(
        client_for(world.alice, world.alpha), "post", "/organization/transfer-ownership", body
    )
    assert response.status_code == 400
    assert error_of(response)["fields"]
    assert _alice(world).role == "owner"


def test_a_key_cannot_hand_over_ownership(world: World, admin_client: Client) -> None:
    response = send_json(
        admin_client, "post", "/organization/transfer-ownership", {"member_id": _amy(world).pk}
    )
    assert response.status_code == 403
    assert error_of(response)["code"] == "owner_only"
