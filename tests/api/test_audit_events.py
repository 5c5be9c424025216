"""/api/v1/audit-events: the log of changes, filtered, paged, and exported as CSV."""

import csv
import io

import pytest
from django.test import Client

from tests.api.conftest import API, error_of, key_client, new_key, send_json
from tests.conftest import World

pytestmark = pytest.mark.django_db


def _make_history(client: Client) -> None:
    assert send_json(client, "patch", "/organization", {"name": "Alpha, renamed"}).status_code == 200
    assert send_json(client, "post", "/invitations", {"email": "hist@example.test"}).status_code == 201


def test_every_change_is_listed_newest_first(world: World) -> None:
    _, raw = new_key(world, ["admin"])
    client = key_client(raw, HTTP_USER_AGENT="auditor/2", HTTP_X_REQUEST_ID="trace-7")
    _make_history(client)
    rows = client.get(f"{API}/audit-events").json()["results"]
    assert [row["action"] for row in rows[:3]] == [
        "invitation.created",
        "organization.updated",
        "api_key.created",
    ]
    assert rows[0]["ip"] == "127.0.0.1"
    assert rows[0]["user_agent"] == "auditor/2"
    assert rows[0]["request_id"] == "trace-7"


def test_audit_events_filter_by_action_prefix(world: World, admin_client: Client) -> None:
    _make_history(admin_client)
    rows = admin_client.get(f"{API}/audit-events", {"action": "invitation."}).json()["results"]
    assert [row["action"] for row in rows] == ["invitation.created"]
    exact = admin_client.get(f"{API}/audit-events", {"action": "organization.updated"}).json()["results"]
    assert [row["changes"] for row in exact] == [
        {"before": {"name": "Alpha"}, "after": {"name": "Alpha, renamed"}}
    ]


def test_a_since_that_is_not_a_date_is_a_400(world: World, admin_client: Client) -> None:
    response = admin_client.get(f"{API}/audit-events", {"since": "last tuesday"})
    assert response.status_code == 400
    assert "since" in error_of(response)["fields"]


def test_audit_events_of_another_organization_never_show(world: World, admin_client: Client) -> None:
    _, beta_raw = new_key(world, ["admin"], organization=world.beta)
    _make_history(key_client(beta_raw))
    rows = admin_client.get(f"{API}/audit-events", {"page_size": 200}).json()["results"]
    assert rows
    assert all(row["action"] != "invitation.created" for row in rows)


def test_the_audit_log_pages_by_cursor(world: World, admin_client: Client) -> None:
    _make_history(admin_client)
    first = admin_client.get(f"{API}/audit-events", {"page_size": 1}).json()
    assert len(first["results"]) == 1
    second = admin_client.get(first["next"].replace("http://localhost", "")).json()
    assert len(second["results"]) == 1
    assert second["results"][0]["id"] != first["results"][0]["id"]


def test_the_csv_export_has_a_header_and_one_row_per_event(world: World, admin_client: Client) -> None:
    _make_history(admin_client)
    response = admin_client.get(f"{API}/audit-events/export", {"action": "organization."})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/csv")
    assert response.headers["Content-Disposition"] == 'attachment; filename="alpha-audit.csv"'
    rows = list(csv.DictReader(io.StringIO(response.getvalue().decode())))
    assert len(rows) == 1
    assert rows[0]["action"] == "organization.updated"
    assert rows[0]["actor"].startswith("key:")
    assert rows[0]["target"] == "Alpha, renamed"
    assert rows[0]["ip"] == "127.0.0.1"
    assert "Alpha, renamed" in rows[0]["changes"]


def test_the_audit_log_needs_the_audit_scope(world: World) -> None:
    _, raw = new_key(world, ["members:read"])
    for path in ("/audit-events", "/audit-events/export"):
        response = key_client(raw).get(API + path)
        assert response.status_code == 403
        assert "audit:read" in error_of(response)["message"]


@pytest.mark.parametrize(
    ("since", "status"),
    [
        # An offset PostgreSQL refuses (beyond ±15:59) but ISO 8601 allows: was a 500.
        ("0971-11-25T09:07:57.051002-18:44", 200),
        # Before the first day of the calendar once in UTC.
        ("0001-01-01T00:00:00+05:00", 400),
        ("9999-12-31T23:59:59-05:00", 400),
    ],
)
def test_a_since_at_the_edge_of_the_calendar_is_answered_without_a_500(
    world: World, admin_client: Client, since: str, status: int
) -> None:
    response = admin_client.get(f"{API}/audit-events", {"since": since})
    assert response.status_code == status
    if status == 400:
        assert error_of(response)["fields"] == {"since": ["This date is out of range."]}
