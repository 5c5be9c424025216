"""The audit log page and its CSV export: owners and admins only, filtered, paginated."""

import csv
import io
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.tenancy.audit import Actor, audit_record
from apps.tenancy.models import Membership
from tests.conftest import World, client_for

pytestmark = pytest.mark.django_db


def _events(world: World) -> None:
    audit_record(actor=Actor(user=world.alice), organization=world.alpha, action="invitation.created")
    audit_record(actor=Actor(user=world.amy), organization=world.alpha, action="member.left")
    audit_record(actor=Actor(user=world.bob), organization=world.beta, action="invitation.created")


def test_owners_see_the_log_of_their_organization_only(world: World) -> None:
    _events(world)
    response = client_for(world.alice, world.alpha).get("/audit/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "invitation.created" in page
    assert "member.left" in page
    assert "bob@beta.test" not in page
    assert 'href="/audit/export.csv"' in page


@pytest.mark.parametrize("role", ["member", "viewer", "billing"])
def test_other_roles_are_refused_with_403(world: World, role: str) -> None:
    Membership.objects.filter(organization=world.alpha, user=world.amy).update(role=role)
    client = client_for(world.amy, world.alpha)
    for path in ("/audit/", "/audit/export.csv"):
        response = client.get(path)
        assert response.status_code == 403
        assert "read and export the audit log" in response.content.decode()


def test_filters_by_action_prefix_and_actor(world: World) -> None:
    _events(world)
    client = client_for(world.alice, world.alpha)
    by_action = client.get("/audit/", {"action": "member."}).content.decode()
    assert 'data-action="member.left"' in by_action
    assert 'data-action="invitation.created"' not in by_action
    by_actor = client.get("/audit/", {"actor": "alice@"}).content.decode()
    assert 'data-action="invitation.created"' in by_actor
    assert 'data-action="member.left"' not in by_actor


def test_filters_by_an_inclusive_date_range(world: World) -> None:
    _events(world)
    today = timezone.now().date()
    client = client_for(world.alice, world.alpha)
    same_day = client.get(
        "/audit/", {"since": today.isoformat(), "until": today.isoformat()}
    ).content.decode()
    assert 'data-action="member.left"' in same_day
    yesterday = (today - timedelta(days=1)).isoformat()
    before = client.get("/audit/", {"until": yesterday}).content.decode()
    assert 'data-action="member.left"' not in before
    assert "No events match." in before


def test_bad_filters_are_explained(world: World) -> None:
    client = client_for(world.alice, world.alpha)
    response = client.get("/audit/", {"since": "yesterday-ish"})
    assert response.status_code == 400
    assert "Enter a valid date." in response.content.decode()
    backwards = client.get("/audit/", {"since": "2026-02-02", "until": "2026-01-01"})
    assert backwards.status_code == 400
    assert "The end of the range is before its start." in backwards.content.decode()
    assert client.get("/audit/export.csv", {"since": "nope"}).status_code == 400


def test_the_log_is_paginated(world: World) -> None:
    for number in range(55):
        audit_record(actor=Actor(user=world.alice), organization=world.alpha, action=f"test.event{number}")
    client = client_for(world.alice, world.alpha)
    first = client.get("/audit/", {"action": "test."}).content.decode()
    assert first.count('data-testid="audit-row"') == 50
    assert "Page 1 of 2" in first
    assert "?action=test.&amp;page=2" in first
    second = client.get("/audit/", {"action": "test.", "page": "2"}).content.decode()
    assert second.count('data-testid="audit-row"') == 5
    assert client.get("/audit/", {"page": "999"}).status_code == 200
    assert client.get("/audit/", {"page": "x"}).status_code == 200


def test_export_streams_the_filtered_log_as_csv(world: World) -> None:
    _events(world)
    response = client_for(world.alice, world.alpha).get("/audit/export.csv", {"action": "member."})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"] == 'attachment; filename="alpha-audit.csv"'
    rows = list(csv.reader(io.StringIO(response.getvalue().decode())))
    assert rows[0][:3] == ["time", "actor", "action"]
    assert [row[2] for row in rows[1:]] == ["member.left"]
