"""/api/v1/prompts over HTTP: a template's life (create, new versions, diff, roll back,
render) as a script would live it, roles and scopes, bad input as 4xx with the
error body, and another organization's templates out of reach."""

from typing import Any

import pytest
from django.test import Client

from apps.prompts.models import PromptVersion
from tests.api.conftest import error_of, key_client, new_key, send_json
from tests.conftest import World, client_for
from tests.prompts.conftest import in_schema, make_template

pytestmark = pytest.mark.django_db

API = "/api/v1"
AGENT = {
    "name": "triage",
    "description": "Sorts incoming issues",
    "body": (
        "Label this issue: {{ title }}\n{% if labels %}Known labels: {{ labels | join(', ') }}\n{% endif %}"
    ),
    "variables": [
        {"name": "title", "type": "string", "description": "The issue's title"},
        {"name": "labels", "type": "list", "required": False},
    ],
    "message": "First cut",
}


def _post(client: Client, path: str, body: Any) -> Any:
    return send_json(client, "post", path, body)


def test_a_template_s_life_over_the_api(alpha_api: Client) -> None:
    created = _post(alpha_api, "/prompts", AGENT)
    assert created.status_code == 201, created.content
    template = created.json()
    assert template["name"] == "triage"
    assert template["current_version"] == 1
    assert template["variables"][0] == {
        "name": "title", "type": "string", "required": True, "description": "The issue's title"
    }  # fmt: skip
    prompt = f"/prompts/{template['id']}"

    rendered = _post(
        alpha_api, f"{prompt}/render", {"variables": {"title": "Crash on start", "labels": ["bug"]}}
    )
    assert rendered.status_code == 200
    assert rendered.json() == {
        "text": "Label this issue: Crash on start\nKnown labels: bug\n",
        "name": "triage",
        "version": 1,
        "source": "organization",
    }

    v2 = _post(
        alpha_api,
        f"{prompt}/versions",
        {"body": "Label this issue in one word: {{ title }}\n", "message": "Shorter", "base_version": 1},
    )
    assert v2.status_code == 201, v2.content
    assert v2.json()["version"] == 2
    assert [v["name"] for v in v2.json()["variables"]] == ["title", "labels"]  # kept when left out

    stale = _post(alpha_api, f"{prompt}/versions", {"body": "Other {{ title }}", "base_version": 1})
    assert stale.status_code == 409
    assert error_of(stale)["code"] == "version_conflict"

    diff = alpha_api.get(API + f"{prompt}/diff")  # default: the current version against the one before
    assert diff.status_code == 200
    body = diff.json()
    assert (body["from_version"], body["to_version"], body["identical"]) == (1, 2, False)
    assert "\n-Label this issue: {{ title }}\n" in body["diff"]
    assert (
        "\n-{% endif %}\n\\ No newline at end of file\n+Label this issue in one word: {{ title }}\n"
        in body["diff"]
    )
    assert body["diff"].startswith("--- triage v1\n+++ triage v2\n")

    rolled = _post(alpha_api, f"{prompt}/rollback", {"version": 1, "message": "Back to the first cut"})
    assert rolled.status_code == 201
    assert (rolled.json()["version"], rolled.json()["restored_from"]) == (3, 1)
    assert rolled.json()["body"] == AGENT["body"]

    history = alpha_api.get(API + f"{prompt}/versions").json()["results"]
    assert [(v["version"], v["message"]) for v in history] == [
        (3, "Back to the first cut"), (2, "Shorter"), (1, "First cut")
    ]  # fmt: skip
    old = alpha_api.get(API + f"{prompt}/versions/2")
    assert old.json()["body"] == "Label this issue in one word: {{ title }}\n"
    pinned = _post(alpha_api, f"{prompt}/render", {"version": 2, "variables": {"title": "X"}})
    assert pinned.json()["text"] == "Label this issue in one word: X\n"

    # What an agent calls: by name, the organization's own template.
    by_name = _post(alpha_api, "/prompts/render", {"name": "triage", "variables": {"title": "Y"}})
    assert by_name.json()["version"] == 3
    assert by_name.json()["text"].startswith("Label this issue: Y")

    listed = alpha_api.get(API + "/prompts").json()["results"]
    assert [(t["name"], t["current_version"]) for t in listed] == [("triage", 3)]

    described = send_json(alpha_api, "patch", prompt, {"description": "Sorts issues by label"})
    assert described.json()["description"] == "Sorts issues by label"
    assert alpha_api.delete(API + prompt).status_code == 204
    assert alpha_api.get(API + prompt).status_code == 404


def test_a_missing_variable_is_a_400_naming_it(alpha_api: Client, world: World) -> None:
    template = make_template(world)
    response = _post(alpha_api, f"/prompts/{template.pk}/render", {"variables": {}})
    assert response.status_code == 400
    assert error_of(response) == {
        "code": "prompt_variable_missing",
        "message": "The template greeting v1 needs the variable 'who'.",
        "fields": {},
    }
    undeclared = _post(alpha_api, f"/prompts/{template.pk}/render", {"variables": {"who": "a", "extra": 1}})
    assert error_of(undeclared)["code"] == "prompt_variable_undeclared"


def test_a_sandbox_escape_in_a_draft_preview_is_a_400(alpha_api: Client, world: World) -> None:
    template = make_template(world)
    response = _post(
        alpha_api,
        f"/prompts/{template.pk}/render",
        {"body": "{{ who.__class__.__mro__[1].__subclasses__() }}", "variables": {"who": "x"}},
    )
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "prompt_unsafe"
    assert "__class__" in error["message"]
    draft = _post(
        alpha_api, f"/prompts/{template.pk}/render", {"body": "Yo {{ who }}", "variables": {"who": "x"}}
    )
    assert draft.json() == {"text": "Yo x", "name": "greeting", "version": None, "source": "draft"}
    both = _post(alpha_api, f"/prompts/{template.pk}/render", {"body": "Yo", "version": 1})
    assert (both.status_code, error_of(both)["fields"]) == (400, {"version": [error_of(both)["message"]]})
    declared_draft = _post(
        alpha_api,
        f"/prompts/{template.pk}/render",
        {"body": "{{ n + 1 }}", "declarations": [{"name": "n", "type": "integer"}], "variables": {"n": 41}},
    )
    assert declared_draft.json()["text"] == "42"


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({**AGENT, "name": "Bad Name"}, "invalid_name", "name"),
        ({**AGENT, "body": "{{ title }} {{ nope }}"}, "prompt_variable_undeclared", "body"),
        ({**AGENT, "body": "{% if title %}open"}, "prompt_syntax_error", "body"),
        ({**AGENT, "variables": [{"name": "title", "type": "text"}]}, "invalid_variables", "variables"),
        ({**AGENT, "variables": "title"}, "invalid_variables", "variables"),
        ({**AGENT, "surprise": 1}, "invalid", "surprise"),
        ({"name": "x"}, "invalid", "body"),
    ],
)
def test_bad_input_is_a_400_on_its_field_and_nothing_is_written(
    alpha_api: Client, world: World, body: dict[str, Any], code: str, field: str
) -> None:
    response = _post(alpha_api, "/prompts", body)
    assert response.status_code == 400, response.content
    error = error_of(response)
    assert error["code"] == code
    assert field in error["fields"]
    with in_schema(world.alpha):
        assert not PromptVersion.objects.exists()


def test_unknown_things_are_404(alpha_api: Client, world: World) -> None:
    template = make_template(world)
    assert alpha_api.get(f"{API}/prompts/999999").status_code == 404
    missing = alpha_api.get(f"{API}/prompts/{template.pk}/versions/7")
    assert missing.status_code == 404
    assert error_of(missing)["message"] == "The prompt template greeting has no version 7."
    assert _post(alpha_api, f"/prompts/{template.pk}/rollback", {"version": 7}).status_code == 404
    assert alpha_api.get(f"{API}/prompts/{template.pk}/diff?from_version=1&to_version=5").status_code == 404
    bad_query = alpha_api.get(f"{API}/prompts/{template.pk}/diff?from_version=x")
    assert bad_query.status_code == 400
    unknown = _post(alpha_api, "/prompts/render", {"name": "nothing-here"})
    assert error_of(unknown)["code"] == "template_not_found"


def test_defaults_are_listed_and_render_by_name_until_overridden(alpha_api: Client, world: World) -> None:
    defaults = {d["name"]: d for d in alpha_api.get(f"{API}/prompts/defaults").json()}
    assert defaults["agent.system"]["overridden"] is False
    assert defaults["agent.system"]["variables"][0]["name"] == "task"
    rendered = _post(alpha_api, "/prompts/render", {"name": "agent.system", "variables": {"task": "Ship it"}})
    assert rendered.json()["source"] == "default"
    assert rendered.json()["text"].rstrip().endswith("Ship it")
    make_template(world, name="agent.system", body="Do {{ task }}", variables=[{"name": "task"}])
    assert {d["name"]: d for d in alpha_api.get(f"{API}/prompts/defaults").json()}["agent.system"][
        "overridden"
    ]
    mine = _post(alpha_api, "/prompts/render", {"name": "agent.system", "variables": {"task": "Ship it"}})
    assert (mine.json()["text"], mine.json()["source"]) == ("Do Ship it", "organization")


def test_viewers_and_read_keys_read_and_preview_but_do_not_change(world: World) -> None:
    template = make_template(world)
    _, raw = new_key(world, ["prompts:read"], name="reader")
    reader = key_client(raw)
    assert reader.get(f"{API}/prompts/{template.pk}").status_code == 200
    assert _post(reader, f"/prompts/{template.pk}/render", {"variables": {"who": "r"}}).status_code == 200
    refused = _post(reader, f"/prompts/{template.pk}/versions", {"body": "Bye {{ who }}"})
    assert refused.status_code == 403
    assert error_of(refused)["message"] == "This API key lacks the scope prompts:write."
    _, other = new_key(world, ["workspaces:read"], name="unrelated")
    assert key_client(other).get(f"{API}/prompts").status_code == 403

    from apps.tenancy.models import Membership
    from tests.factories import make_user

    viewer = make_user("vera@alpha.test", "Vera")
    Membership.objects.create(user=viewer, organization=world.alpha, role=Membership.Role.VIEWER)
    browser = client_for(viewer, world.alpha)
    assert browser.get(f"{API}/prompts").status_code == 200
    assert _post(browser, f"/prompts/{template.pk}/rollback", {"version": 1}).status_code == 403
    # A member (not only owners and admins) may edit prompts.
    amy = client_for(world.amy, world.alpha)
    assert _post(amy, f"/prompts/{template.pk}/versions", {"body": "Hey {{ who }}"}).status_code == 201


def test_another_organization_s_templates_are_out_of_reach(world: World, beta_api: Client) -> None:
    template = make_template(world, name="alpha-only", body="Alpha secret {{ who }}")
    assert beta_api.get(f"{API}/prompts/{template.pk}").status_code == 404
    assert _post(beta_api, f"/prompts/{template.pk}/render", {"variables": {"who": "x"}}).status_code == 404
    assert _post(beta_api, f"/prompts/{template.pk}/rollback", {"version": 1}).status_code == 404
    assert beta_api.get(f"{API}/prompts").json()["results"] == []
    by_name = _post(beta_api, "/prompts/render", {"name": "alpha-only", "variables": {"who": "x"}})
    assert by_name.status_code == 404
    assert "Alpha secret" not in by_name.content.decode()
