"""The members page: who sees it, who may manage, and every refusal as a clear 4xx."""

import pytest
from django.core import mail

from apps.accounts.models import User
from apps.tenancy.models import AuditEvent, Invitation, Membership
from tests.conftest import World, client_for
from tests.factories import make_user

pytestmark = pytest.mark.django_db


def _membership(world: World, user: User) -> Membership:
    return Membership.objects.get(organization=world.alpha, user=user)


def _admin(world: World, email: str = "adam@alpha.test") -> User:
    user = make_user(email, "Adam")
    Membership.objects.create(organization=world.alpha, user=user, role=Membership.Role.ADMIN)
    return user


def test_the_owner_sees_members_with_management_controls(world: World) -> None:
    response = client_for(world.alice, world.alpha).get("/settings/members/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "alice@alpha.test" in page
    assert "amy@alpha.test" in page
    assert "Send invitation" in page
    assert "Transfer ownership" in page
    assert f"/settings/members/{_membership(world, world.amy).pk}/remove/" in page
    assert "Leave organization" in page


@pytest.mark.parametrize("role", ["member", "viewer", "billing"])
def test_other_roles_see_the_list_but_no_management_controls(world: World, role: str) -> None:
    Membership.objects.filter(organization=world.alpha, user=world.amy).update(role=role)
    response = client_for(world.amy, world.alpha).get("/settings/members/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "alice@alpha.test" in page
    assert "Send invitation" not in page
    assert "/remove/" not in page
    assert "/role/" not in page
    assert "Transfer ownership" not in page
    assert "Leave organization" in page  # anyone may leave


def test_a_member_cannot_manage_by_posting_directly(world: World) -> None:
    client = client_for(world.amy, world.alpha)
    alice = _membership(world, world.alice)
    refused = [
        client.post("/settings/members/invite/", {"email": "x@new.test", "role": "member"}),
        client.post(f"/settings/members/{alice.pk}/role/", {"role": "viewer"}),
        client.post(f"/settings/members/{alice.pk}/remove/"),
        client.post("/settings/members/transfer/", {"member_id": alice.pk}),
    ]
    assert [response.status_code for response in refused] == [403, 403, 403, 403]
    assert "Not allowed" in refused[0].content.decode()
    assert "invite people and revoke invitations" in refused[0].content.decode()
    assert "(member)" in refused[0].content.decode()
    assert not Invitation.objects.filter(email="x@new.test").exists()
    assert _membership(world, world.alice).role == "owner"


def test_outsiders_are_refused(world: World) -> None:
    assert client_for(world.ben, world.alpha).get("/settings/members/").status_code == 403
    anonymous = client_for(None, world.alpha).get("/settings/members/")
    assert anonymous.status_code == 302
    assert "/login/" in anonymous["Location"]


def test_inviting_sends_an_email_and_lists_the_invitation(world: World) -> None:
    client = client_for(world.alice, world.alpha)
    response = client.post("/settings/members/invite/", {"email": "Newbie@Example.test", "role": "admin"})
    assert response.status_code == 200
    page = response.content.decode()
    assert "Invitation sent to newbie@example.test as admin." in page
    assert "http://localhost/invitations/" in page  # the link, shown to the inviter this once
    invitation = Invitation.objects.get(organization=world.alpha, email="newbie@example.test")
    assert invitation.role == "admin"
    assert client.get("/settings/members/").content.decode().count("newbie@example.test") >= 1
    assert "http://localhost/invitations/" not in client.get("/settings/members/").content.decode()


def test_invitation_email_goes_out_on_commit(
    world: World, django_capture_on_commit_callbacks: object
) -> None:
    client = client_for(world.alice, world.alpha)
    with django_capture_on_commit_callbacks(execute=True):  # type: ignore[operator]
        client.post("/settings/members/invite/", {"email": "mail@example.test", "role": "member"})
    assert mail.outbox[-1].to == ["mail@example.test"]
    assert "/invitations/" in mail.outbox[-1].body


def test_inviting_an_existing_member_is_a_409_on_the_form(world: World) -> None:
    response = client_for(world.alice, world.alpha).post(
        "/settings/members/invite/", {"email": "amy@alpha.test", "role": "member"}
    )
    assert response.status_code == 409
    assert "amy@alpha.test is already a member." in response.content.decode()


def test_inviting_twice_is_a_409(world: World) -> None:
    client = client_for(world.alice, world.alpha)
    client.post("/settings/members/invite/", {"email": "twice@example.test", "role": "member"})
    again = client.post("/settings/members/invite/", {"email": "twice@example.test", "role": "member"})
    assert again.status_code == 409
    assert "already has an open invitation" in again.content.decode()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"email": "not-an-email", "role": "member"}, "Enter a valid email address."),
        ({"email": "x@example.test", "role": "wizard"}, "Unknown role wizard."),
    ],
)
def test_bad_invitations_are_explained(world: World, data: dict[str, str], message: str) -> None:
    response = client_for(world.alice, world.alpha).post("/settings/members/invite/", data)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not Invitation.objects.filter(organization=world.alpha, email=data["email"]).exists()


def test_an_admin_cannot_invite_an_owner(world: World) -> None:
    admin = _admin(world)
    response = client_for(admin, world.alpha).post(
        "/settings/members/invite/", {"email": "boss@example.test", "role": "owner"}
    )
    assert response.status_code == 400  # not even offered to admins
    assert "Unknown role owner." in response.content.decode()


def test_revoking_an_invitation_and_revoking_it_twice(world: World) -> None:
    client = client_for(world.alice, world.alpha)
    client.post("/settings/members/invite/", {"email": "gone@example.test", "role": "member"})
    invitation = Invitation.objects.get(email="gone@example.test")
    response = client.post(f"/settings/invitations/{invitation.pk}/revoke/", follow=True)
    assert response.status_code == 200
    assert "The invitation for gone@example.test was revoked." in response.content.decode()
    invitation.refresh_from_db()
    assert invitation.status == "revoked"
    again = client.post(f"/settings/invitations/{invitation.pk}/revoke/")
    assert again.status_code == 409
    assert "This invitation is already revoked." in again.content.decode()


def test_changing_a_role(world: World) -> None:
    amy = _membership(world, world.amy)
    response = client_for(world.alice, world.alpha).post(
        f"/settings/members/{amy.pk}/role/", {"role": "viewer"}, follow=True
    )
    assert response.status_code == 200
    assert "amy@alpha.test is now viewer." in response.content.decode()
    amy.refresh_from_db()
    assert amy.role == "viewer"
    assert AuditEvent.objects.filter(organization=world.alpha, action="member.role_changed").exists()


def test_an_unknown_role_is_refused(world: World) -> None:
    amy = _membership(world, world.amy)
    response = client_for(world.alice, world.alpha).post(
        f"/settings/members/{amy.pk}/role/", {"role": "wizard"}
    )
    assert response.status_code == 400
    assert "Unknown role wizard." in response.content.decode()
    amy.refresh_from_db()
    assert amy.role == "member"


def test_demoting_the_last_owner_is_a_409(world: World) -> None:
    alice = _membership(world, world.alice)
    response = client_for(world.alice, world.alpha).post(
        f"/settings/members/{alice.pk}/role/", {"role": "admin"}
    )
    assert response.status_code == 409
    assert "An organization needs an owner" in response.content.decode()
    alice.refresh_from_db()
    assert alice.role == "owner"


def test_an_admin_cannot_touch_an_owner(world: World) -> None:
    admin = _admin(world)
    alice = _membership(world, world.alice)
    client = client_for(admin, world.alpha)
    page = client.get("/settings/members/").content.decode()
    assert f"/settings/members/{alice.pk}/remove/" not in page
    response = client.post(f"/settings/members/{alice.pk}/role/", {"role": "member"})
    assert response.status_code == 403
    assert "Only owners may grant or take away the owner role." in response.content.decode()


def test_removing_a_member(world: World) -> None:
    amy = _membership(world, world.amy)
    response = client_for(world.alice, world.alpha).post(f"/settings/members/{amy.pk}/remove/", follow=True)
    assert "amy@alpha.test was removed from Alpha." in response.content.decode()
    assert not Membership.objects.filter(pk=amy.pk).exists()


def test_removing_the_last_owner_is_a_409(world: World) -> None:
    alice = _membership(world, world.alice)
    response = client_for(world.alice, world.alpha).post(f"/settings/members/{alice.pk}/remove/")
    assert response.status_code == 409
    assert "An organization needs an owner: make someone else owner first." in response.content.decode()
    assert Membership.objects.filter(pk=alice.pk).exists()


def test_a_member_of_another_organization_is_not_found(world: World) -> None:
    ben = Membership.objects.get(organization=world.beta, user=world.ben)
    response = client_for(world.alice, world.alpha).post(f"/settings/members/{ben.pk}/remove/")
    assert response.status_code == 404
    assert Membership.objects.filter(pk=ben.pk).exists()


def test_a_member_may_leave(world: World) -> None:
    response = client_for(world.amy, world.alpha).post("/settings/members/leave/")
    assert response.status_code == 302
    assert response["Location"] == "http://localhost/orgs/"
    assert not Membership.objects.filter(organization=world.alpha, user=world.amy).exists()
    assert AuditEvent.objects.filter(organization=world.alpha, action="member.left").exists()


def test_the_last_owner_cannot_leave(world: World) -> None:
    response = client_for(world.alice, world.alpha).post("/settings/members/leave/")
    assert response.status_code == 409
    assert "An organization needs an owner" in response.content.decode()


def test_transferring_ownership(world: World) -> None:
    amy = _membership(world, world.amy)
    response = client_for(world.alice, world.alpha).post(
        "/settings/members/transfer/", {"member_id": amy.pk}, follow=True
    )
    assert "amy@alpha.test is now the owner; you are an admin." in response.content.decode()
    amy.refresh_from_db()
    assert amy.role == "owner"
    assert _membership(world, world.alice).role == "admin"


def test_transferring_to_yourself_is_explained(world: World) -> None:
    alice = _membership(world, world.alice)
    response = client_for(world.alice, world.alpha).post(
        "/settings/members/transfer/", {"member_id": alice.pk}
    )
    assert response.status_code == 400
    assert "You are already an owner." in response.content.decode()


def test_an_admin_may_not_transfer_ownership(world: World) -> None:
    admin = _admin(world)
    response = client_for(admin, world.alpha).post(
        "/settings/members/transfer/", {"member_id": _membership(world, world.amy).pk}
    )
    assert response.status_code == 403
    assert "hand ownership to another member" in response.content.decode()


def test_post_only_pages_refuse_get(world: World) -> None:
    client = client_for(world.alice, world.alpha)
    assert client.get("/settings/members/invite/").status_code == 405
    assert client.get("/settings/members/leave/").status_code == 405
