"""The object-level rules of membership changes, at the service layer."""

import pytest

from apps.core.errors import Conflict, Forbidden
from apps.tenancy import identity
from apps.tenancy.audit import Actor
from apps.tenancy.models import AuditEvent, Membership
from tests.conftest import World
from tests.factories import make_user

pytestmark = pytest.mark.django_db
Role = Membership.Role


def _membership(world: World, user_email: str) -> Membership:
    return Membership.objects.get(organization=world.alpha, user__email=user_email)


def _admin(world: World) -> Actor:
    _membership(world, "amy@alpha.test")
    Membership.objects.filter(organization=world.alpha, user=world.amy).update(role=Role.ADMIN)
    return Actor(user=world.amy)


def test_an_admin_cannot_demote_or_remove_an_owner(world: World) -> None:
    admin = _admin(world)
    owner = _membership(world, "alice@alpha.test")
    with pytest.raises(Forbidden, match="Only owners"):
        identity.member_change_role(actor=admin, membership=owner, role=Role.MEMBER)
    with pytest.raises(Forbidden, match="Only owners"):
        identity.member_remove(actor=admin, membership=owner)
    assert _membership(world, "alice@alpha.test").role == Role.OWNER


def test_an_admin_cannot_make_anyone_owner(world: World) -> None:
    admin = _admin(world)
    with pytest.raises(Forbidden):
        identity.member_change_role(
            actor=admin, membership=_membership(world, "amy@alpha.test"), role=Role.OWNER
        )
    with pytest.raises(Forbidden):
        identity.invitation_create(
            actor=admin, organization=world.alpha, email="x@y.test", role=Role.OWNER, accept_url_base=""
        )


def test_the_last_owner_can_neither_leave_nor_be_demoted(world: World) -> None:
    owner = Actor(user=world.alice)
    mine = _membership(world, "alice@alpha.test")
    with pytest.raises(Conflict, match="needs an owner"):
        identity.member_remove(actor=owner, membership=mine)
    with pytest.raises(Conflict, match="needs an owner"):
        identity.member_change_role(actor=owner, membership=mine, role=Role.ADMIN)


def test_a_transfer_makes_the_other_member_owner_and_the_owner_admin(world: World) -> None:
    target = _membership(world, "amy@alpha.test")
    identity.ownership_transfer(actor=Actor(user=world.alice), organization=world.alpha, to=target)
    assert _membership(world, "amy@alpha.test").role == Role.OWNER
    assert _membership(world, "alice@alpha.test").role == Role.ADMIN
    event = AuditEvent.objects.filter(action="organization.ownership_transferred").get()
    assert event.changes == {"before": {"owner": "alice@alpha.test"}, "after": {"owner": "amy@alpha.test"}}


def test_with_two_owners_one_may_leave(world: World) -> None:
    Membership.objects.filter(organization=world.alpha, user=world.amy).update(role=Role.OWNER)
    identity.member_remove(actor=Actor(user=world.alice), membership=_membership(world, "alice@alpha.test"))
    assert not Membership.objects.filter(organization=world.alpha, user=world.alice).exists()
    assert AuditEvent.objects.filter(action="member.left", actor=world.alice).exists()


def test_anyone_may_leave(world: World) -> None:
    identity.member_remove(actor=Actor(user=world.amy), membership=_membership(world, "amy@alpha.test"))
    assert not Membership.objects.filter(organization=world.alpha, user=world.amy).exists()


def test_an_invitation_is_accepted_once_by_its_addressee(world: World) -> None:
    _, link = identity.invitation_create(
        actor=Actor(user=world.alice),
        organization=world.alpha,
        email="New@Person.test",
        role=Role.VIEWER,
        accept_url_base="http://localhost",
    )
    token = link.rstrip("/").rsplit("/", 1)[1]
    with pytest.raises(Forbidden, match=r"for new@person\.test"):
        identity.invitation_accept(actor=Actor(user=world.olga), token=token)
    person = make_user("new@person.test")
    membership = identity.invitation_accept(actor=Actor(user=person), token=token)
    assert membership.role == Role.VIEWER
    assert identity.invitation_accept(actor=Actor(user=person), token=token) == membership  # twice is fine


def test_audit_events_cannot_be_rewritten(world: World) -> None:
    event = AuditEvent.objects.create(action="probe")
    event.action = "changed"
    with pytest.raises(PermissionError):
        event.save()
    with pytest.raises(PermissionError):
        event.delete()
    with pytest.raises(PermissionError):
        AuditEvent.objects.filter(pk=event.pk).update(action="x")
    with pytest.raises(PermissionError):
        AuditEvent.objects.filter(pk=event.pk).delete()


def test_signing_up_is_audited(world: World) -> None:
    from tests.conftest import client_for

    client_for(None).post(
        "/signup/",
        {
            "email": "zed@zeta.test",
            "password": "a long and unusual passphrase",
            "organization_name": "Zeta",
            "slug": "zeta",
        },
        HTTP_USER_AGENT="pytest-browser",
    )
    event = AuditEvent.objects.get(action="organization.created")
    assert event.actor_email == "zed@zeta.test"
    assert event.user_agent == "pytest-browser"
    assert event.request_id
