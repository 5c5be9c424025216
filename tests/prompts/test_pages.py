"""The prompt template pages, as a member uses them: the list with the platform's
defaults, customizing a default, editing (a new version), the history, a diff,
an old version, rolling back, previewing with variables, deleting; viewers read
only, and bad input is shown on its field with a 4xx."""

import re

import pytest

from apps.prompts.models import PromptTemplate, PromptVersion
from apps.tenancy.models import AuditEvent, Membership
from tests.conftest import World, client_for
from tests.factories import make_user
from tests.prompts.conftest import in_schema, make_template

pytestmark = pytest.mark.django_db

VARIABLES = (
    'task = { type = "string" }\nrepository = { type = "string", required = false, default = "the repo" }'
)


def _versions(page: str) -> list[str]:
    return re.findall(r'data-testid="version-row" data-version="(\d+)"', page)


def test_a_member_customizes_a_default_edits_diffs_and_rolls_back(world: World) -> None:
    amy = client_for(world.amy, world.alpha)
    listing = amy.get("/prompts/")
    assert listing.status_code == 200
    page = listing.content.decode()
    assert 'href="/prompts/" aria-current="page">Prompts</a>' in page  # in the sidebar
    assert "No templates yet" in page
    assert 'data-testid="prompt-default" data-name="agent.system"' in page
    assert 'href="/prompts/new/?default=agent.system"' in page

    form = amy.get("/prompts/new/?default=agent.system").content.decode()
    assert 'value="agent.system"' in form
    assert "task = { type = &quot;string&quot;, required = true" in form  # the variables as TOML lines

    created = amy.post(
        "/prompts/new/",
        {
            "name": "agent.system",
            "description": "Our agent",
            "body": "You work on {{ repository }}.\nTask: {{ task }}\n",
            "variables": VARIABLES,
            "message": "Ours",
        },
        follow=True,
    )
    assert created.status_code == 200
    page = created.content.decode()
    assert "The prompt template agent.system was created (version 1)." in page
    with in_schema(world.alpha):
        template = PromptTemplate.objects.get(name="agent.system")
    assert f"/prompts/{template.pk}/" in created.redirect_chain[-1][0]
    assert _versions(page) == ["1"]
    assert "agent.system" not in re.findall(r'data-testid="prompt-default" data-name="([^"]+)"',
                                            amy.get("/prompts/").content.decode())  # fmt: skip

    edit = amy.get(f"/prompts/{template.pk}/edit/").content.decode()
    assert 'name="base_version" value="1"' in edit
    saved = amy.post(
        f"/prompts/{template.pk}/edit/",
        {
            "body": "You work on {{ repository }}.\nBe brief.\nTask: {{ task }}\n",
            "variables": VARIABLES,
            "message": "Brevity",
            "base_version": "1",
        },
        follow=True,
    )
    page = saved.content.decode()
    assert "Version 2 of agent.system was saved and is current." in page
    assert _versions(page) == ["2", "1"]
    assert 'data-testid="current-version">v2<' in page

    diff = amy.get(f"/prompts/{template.pk}/diff/").content.decode()
    assert '<span class="diff-added">+Be brief.</span>' in diff
    assert '<span class="diff-hunk">@@ -1,2 +1,3 @@</span>' in diff

    old = amy.get(f"/prompts/{template.pk}/versions/1/").content.decode()
    assert "Roll back to this version" in old
    rolled = amy.post(f"/prompts/{template.pk}/rollback/", {"version": "1"}, follow=True)
    page = rolled.content.decode()
    assert "Rolled back: version 3 restores version 1 and is current." in page
    assert _versions(page) == ["3", "2", "1"]
    assert "(restores v1)" in page

    preview = amy.post(f"/prompts/{template.pk}/preview/", {"values": '{"task": "Fix it"}'})
    assert preview.status_code == 200
    assert 'data-testid="preview">You work on the repo.\nTask: Fix it\n</pre>' in preview.content.decode()
    missing = amy.post(f"/prompts/{template.pk}/preview/", {"values": "{}"})
    assert missing.status_code == 400
    assert "needs the variable &#x27;task&#x27;" in missing.content.decode()

    actions = list(
        AuditEvent.objects.filter(organization=world.alpha, target_id=str(template.pk))
        .order_by("pk")
        .values_list("action", flat=True)
    )
    assert actions == ["prompt.created", "prompt.version_created", "prompt.rolled_back"]

    deleted = amy.post(f"/prompts/{template.pk}/delete/", follow=True)
    assert "The platform&#x27;s default of that name applies again." in deleted.content.decode()
    with in_schema(world.alpha):
        assert not PromptVersion.objects.exists()


def test_bad_input_is_shown_on_its_field_and_nothing_is_saved(world: World) -> None:
    alice = client_for(world.alice, world.alpha)
    undeclared = alice.post("/prompts/new/", {"name": "x", "body": "Hi {{ who }}", "variables": ""})
    assert undeclared.status_code == 400
    assert "The template uses &#x27;who&#x27;, which is not declared" in undeclared.content.decode()
    bad_toml = alice.post("/prompts/new/", {"name": "x", "body": "Hi", "variables": "who = {"})
    assert bad_toml.status_code == 400
    assert "The variables are not valid TOML" in bad_toml.content.decode()
    bad_name = alice.post("/prompts/new/", {"name": "Bad Name", "body": "Hi", "variables": ""})
    assert bad_name.status_code == 400
    assert "A template name has 1 to 100 characters" in bad_name.content.decode()
    with in_schema(world.alpha):
        assert not PromptTemplate.objects.exists()

    template = make_template(world)
    stale = alice.post(
        f"/prompts/{template.pk}/edit/",
        {"body": "Yo {{ who }}", "variables": 'who = { type = "string" }', "base_version": "5"},
    )
    assert stale.status_code == 409
    assert "review it and edit again" in stale.content.decode()
    bad_json = alice.post(f"/prompts/{template.pk}/preview/", {"values": "{nope"})
    assert bad_json.status_code == 400
    assert "Not valid JSON" in bad_json.content.decode()
    assert alice.get(f"/prompts/{template.pk}/versions/9/").status_code == 404
    assert alice.get(f"/prompts/{template.pk}/diff/?from_version=abc").status_code == 404
    assert alice.get("/prompts/999999/").status_code == 404


def test_viewers_read_and_preview_but_cannot_change(world: World) -> None:
    template = make_template(world)
    viewer = make_user("vic@alpha.test", "Vic")
    Membership.objects.create(user=viewer, organization=world.alpha, role=Membership.Role.VIEWER)
    vic = client_for(viewer, world.alpha)
    page = vic.get(f"/prompts/{template.pk}/").content.decode()
    assert "Hello {{ who }}!" in page
    assert "/edit/" not in page
    assert "Roll back" not in page
    assert vic.get("/prompts/new/").status_code == 403
    assert vic.post(f"/prompts/{template.pk}/rollback/", {"version": "1"}).status_code == 403
    assert vic.post(f"/prompts/{template.pk}/delete/").status_code == 403
    preview = vic.post(f"/prompts/{template.pk}/preview/", {"values": '{"who": "Vic"}'})
    assert 'data-testid="preview">Hello Vic!</pre>' in preview.content.decode()


def test_another_organization_s_template_pages_are_not_found(world: World) -> None:
    template = make_template(world, name="alpha-private", body="Alpha secret {{ who }}")
    ben_on_beta = client_for(world.bob, world.beta)
    response = ben_on_beta.get(f"/prompts/{template.pk}/")
    assert response.status_code == 404
    assert "Alpha secret" not in ben_on_beta.get("/prompts/").content.decode()
