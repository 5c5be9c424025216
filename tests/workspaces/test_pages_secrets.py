"""The Secrets page (Settings → Secrets): owners and admins list the organization's
secrets by name with their times, set one (the value in a password field, never
shown back), and delete one after a confirmation; other members get 403, bad names
are refused on the field, and another organization's secrets are out of reach."""

import re

import pytest

from apps.tenancy.models import AuditEvent, Membership
from apps.workspaces.models import Secret
from apps.workspaces.services import secret_value
from tests.conftest import World, client_for
from tests.factories import make_user
from tests.workspaces.conftest import in_schema

pytestmark = pytest.mark.django_db

VALUE = "ghp_page-token-value-0123456789"


def _rows(page: str) -> list[str]:
    return re.findall(r'data-testid="secret-row" data-name="([^"]+)"', page)


def test_an_owner_sets_replaces_and_deletes_a_secret_and_never_sees_its_value(world: World) -> None:
    alice = client_for(world.alice, world.alpha)
    empty = alice.get("/settings/secrets/")
    assert empty.status_code == 200
    assert empty["Cache-Control"] == "no-store"
    page = empty.content.decode()
    assert "No secrets yet." in page
    assert 'type="password"' in page
    assert 'href="/settings/secrets/" aria-current="page">Secrets</a>' in page  # in the sidebar

    saved = alice.post("/settings/secrets/new/", {"name": "GITHUB_TOKEN", "value": VALUE}, follow=True)
    assert saved.status_code == 200
    page = saved.content.decode()
    assert "The secret GITHUB_TOKEN was saved." in page
    assert _rows(page) == ["GITHUB_TOKEN"]
    assert "<time datetime=" in page  # created and updated
    assert VALUE not in page
    assert 'data-confirm="Delete the secret GITHUB_TOKEN?' in page
    with in_schema(world.alpha):
        assert secret_value(name="GITHUB_TOKEN") == VALUE

    replaced = alice.post("/settings/secrets/new/", {"name": "GITHUB_TOKEN", "value": "second"}, follow=True)
    assert "The secret GITHUB_TOKEN was replaced." in replaced.content.decode()
    with in_schema(world.alpha):
        assert secret_value(name="GITHUB_TOKEN") == "second"
        secret = Secret.objects.get(name="GITHUB_TOKEN")
    actions = list(
        AuditEvent.objects.filter(organization=world.alpha, target_id=str(secret.pk))
        .order_by("pk")
        .values_list("action", flat=True)
    )
    assert actions == ["secret.created", "secret.updated"]

    deleted = alice.post(f"/settings/secrets/{secret.pk}/delete/", follow=True)
    assert deleted.status_code == 200
    page = deleted.content.decode()
    assert "The secret GITHUB_TOKEN was deleted." in page
    assert _rows(page) == []
    with in_schema(world.alpha):
        assert not Secret.objects.exists()
    assert alice.post(f"/settings/secrets/{secret.pk}/delete/").status_code == 404


def test_the_workspaces_list_links_to_the_secrets_page_for_those_who_may_see_it(world: World) -> None:
    assert (
        'href="/settings/secrets/"'
        in client_for(world.alice, world.alpha).get("/workspaces/").content.decode()
    )
    page = client_for(world.amy, world.alpha).get("/workspaces/").content.decode()
    assert 'href="/settings/secrets/"' not in page


def test_bad_input_is_refused_on_its_field_and_the_value_is_not_shown_back(world: World) -> None:
    alice = client_for(world.alice, world.alpha)
    bad_name = alice.post("/settings/secrets/new/", {"name": "9-bad name", "value": VALUE})
    assert bad_name.status_code == 400
    page = bad_name.content.decode()
    name_field = page.split('for="id_name"')[1].split('for="id_value"')[0]
    assert "letters, digits and _, not starting with a digit" in name_field
    assert 'value="9-bad name"' in name_field  # the name stays to be corrected
    assert VALUE not in page

    no_value = alice.post("/settings/secrets/new/", {"name": "EMPTY", "value": ""})
    assert no_value.status_code == 400
    value_field = no_value.content.decode().split('for="id_value"')[1]
    assert "field-error" in value_field.split("</div>")[0]

    too_long = alice.post("/settings/secrets/new/", {"name": "N" * 65, "value": "x"})
    assert too_long.status_code == 400
    with in_schema(world.alpha):
        assert not Secret.objects.exists()


@pytest.mark.parametrize("role", [Membership.Role.MEMBER, Membership.Role.VIEWER, Membership.Role.BILLING])
def test_members_other_than_owners_and_admins_are_refused(world: World, role: str) -> None:
    with in_schema(world.alpha):
        secret = Secret.objects.create(name="KEPT", value_encrypted="x")
    person = make_user(f"{role}-secrets@alpha.test", role.title())
    Membership.objects.create(user=person, organization=world.alpha, role=role)
    client = client_for(person, world.alpha)
    assert client.get("/settings/secrets/").status_code == 403
    assert client.post("/settings/secrets/new/", {"name": "NEW", "value": "v"}).status_code == 403
    assert client.post(f"/settings/secrets/{secret.pk}/delete/").status_code == 403
    assert 'href="/settings/secrets/"' not in client.get("/").content.decode()  # no sidebar link
    with in_schema(world.alpha):
        assert list(Secret.objects.values_list("name", flat=True)) == ["KEPT"]


def test_an_admin_may_manage_secrets(world: World) -> None:
    admin = make_user("adele@alpha.test", "Adele")
    Membership.objects.create(user=admin, organization=world.alpha, role=Membership.Role.ADMIN)
    client = client_for(admin, world.alpha)
    assert client.post("/settings/secrets/new/", {"name": "ADMIN_SET", "value": "v"}).status_code == 302
    assert _rows(client.get("/settings/secrets/").content.decode()) == ["ADMIN_SET"]


def test_another_organizations_secrets_are_out_of_reach(world: World) -> None:
    with in_schema(world.alpha):
        alpha_secret = Secret.objects.create(name="ALPHA_ONLY", value_encrypted="x")
    bob = client_for(world.bob, world.beta)
    # On Beta's own host, Alpha's secret id finds nothing, and Alpha's names are not listed.
    assert bob.post(f"/settings/secrets/{alpha_secret.pk}/delete/").status_code == 404
    assert "ALPHA_ONLY" not in bob.get("/settings/secrets/").content.decode()
    # On Alpha's host, Bob (not a member) is refused everything.
    outsider = client_for(world.bob, world.alpha)
    assert outsider.get("/settings/secrets/").status_code == 403
    assert outsider.post(f"/settings/secrets/{alpha_secret.pk}/delete/").status_code == 403
    assert outsider.post("/settings/secrets/new/", {"name": "FROM_BETA", "value": "v"}).status_code == 403
    with in_schema(world.alpha):
        assert list(Secret.objects.values_list("name", flat=True)) == ["ALPHA_ONLY"]
