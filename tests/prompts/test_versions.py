"""Versions through the services: each edit is a new version, a roll back is a new
version equal to an old one with the history kept, diffs are unified diffs, a
consumer renders the current version or a pinned one, the shipped file default
serves until the organization has its own template of that name, and every
change is audited with who made it."""

import pytest

from apps.core.errors import Conflict, Invalid, NotFound
from apps.prompts import selectors, services
from apps.prompts.models import PromptTemplate, PromptVersion
from apps.prompts.rendering import PromptError
from apps.tenancy.audit import Actor
from apps.tenancy.models import AuditEvent
from tests.conftest import World
from tests.prompts.conftest import in_schema, make_template

pytestmark = pytest.mark.django_db

V1 = "You review code.\nBe brief.\nReview: {{ diff }}\n"
V2 = "You review code.\nBe thorough and kind.\nReview: {{ diff }}\nLanguage: {{ language }}\n"
DIFF = [{"name": "diff", "type": "string"}]
DIFF_LANGUAGE = [*DIFF, {"name": "language", "type": "string", "required": False, "default": "Python"}]


def _history(template: PromptTemplate) -> list[tuple[int, str, int | None]]:
    return [
        (version.number, version.message, version.restored_from)
        for version in selectors.versions_list(template=template)
    ]


def test_edit_diff_roll_back_and_render_pinned_versions(world: World) -> None:
    alice, amy = Actor(user=world.alice), Actor(user=world.amy)
    template = make_template(world, name="review", body=V1, variables=DIFF, description="Code review")
    with in_schema(world.alpha):
        assert services.template_render("review", variables={"diff": "+x"}).text == (
            "You review code.\nBe brief.\nReview: +x\n"
        )
        v2 = services.version_create(
            actor=amy,
            organization=world.alpha,
            template=template,
            body=V2,
            variables=DIFF_LANGUAGE,
            message="More thorough",
            base_version=1,
        )
        assert v2.number == 2
        assert v2.created_by_id == world.amy.pk

        # The current version serves by default; a consumer that pinned version 1 still gets it.
        current = services.template_render("review", variables={"diff": "+x"})
        assert (current.version, current.source) == (2, "organization")
        assert current.text.endswith("Be thorough and kind.\nReview: +x\nLanguage: Python\n")
        pinned = services.template_render("review", version=1, variables={"diff": "+x"})
        assert (pinned.version, pinned.text) == (1, "You review code.\nBe brief.\nReview: +x\n")
        with pytest.raises(PromptError) as caught:  # version 1 does not declare language
            services.template_render("review", version=1, variables={"diff": "+x", "language": "Go"})
        assert caught.value.code == "prompt_variable_undeclared"

        diff = selectors.versions_diff(template=template, from_number=1, to_number=2)
        assert diff["diff"] == (
            "--- review v1\n+++ review v2\n@@ -1,3 +1,4 @@\n You review code.\n-Be brief.\n"
            "+Be thorough and kind.\n Review: {{ diff }}\n+Language: {{ language }}\n"
        )
        assert diff["variables"] == {"added": ["language"], "removed": [], "changed": []}
        assert diff["identical"] is False

        v3 = services.template_rollback(actor=alice, organization=world.alpha, template=template, number=1)
        assert (v3.number, v3.body, v3.restored_from) == (3, V1, 1)
        assert [v["name"] for v in v3.variables] == ["diff"]
        assert _history(template) == [
            (3, "Roll back to version 1", 1),
            (2, "More thorough", None),
            (1, "Created", None),
        ]
        assert services.template_render("review", variables={"diff": "+y"}).version == 3
        assert selectors.versions_diff(template=template, from_number=1, to_number=3)["identical"] is True
        assert selectors.versions_diff(template=template, from_number=1, to_number=3)["diff"] == ""

        with pytest.raises(Conflict) as conflict:
            services.template_rollback(actor=alice, organization=world.alpha, template=template, number=1)
        assert conflict.value.message == "Version 3 is already the same as version 1."

    actions = list(
        AuditEvent.objects.filter(organization=world.alpha, target_id=str(template.pk))
        .order_by("pk")
        .values_list("action", "actor_email")
    )
    assert actions == [
        ("prompt.created", "alice@alpha.test"),
        ("prompt.version_created", "amy@alpha.test"),
        ("prompt.rolled_back", "alice@alpha.test"),
    ]
    rolled_back = AuditEvent.objects.filter(organization=world.alpha, action="prompt.rolled_back").get()
    assert rolled_back.changes["before"]["version"] == 2
    assert rolled_back.changes["after"]["restored_from"] == 1
    assert "body" not in rolled_back.changes["after"]  # a fingerprint, not the text


def test_a_stale_editor_gets_a_conflict_instead_of_overwriting(world: World) -> None:
    template = make_template(world)
    with in_schema(world.alpha):
        services.version_create(
            actor=Actor(user=world.amy), organization=world.alpha, template=template, body="Hi {{ who }}.",
            base_version=1,
        )  # fmt: skip
        with pytest.raises(Conflict) as caught:
            services.version_create(
                actor=Actor(user=world.alice), organization=world.alpha, template=template,
                body="Hey {{ who }}.", base_version=1,
            )  # fmt: skip
        assert caught.value.code == "version_conflict"
        assert "Version 2 was saved since you started from version 1" in caught.value.message
        assert PromptVersion.objects.filter(template=template).count() == 2


def test_a_bad_new_version_changes_nothing(world: World) -> None:
    template = make_template(world)
    actor = Actor(user=world.alice)
    with in_schema(world.alpha):
        for body, variables, code in [
            ("Hello {{ whom }}!", None, "prompt_variable_undeclared"),
            ("Hello {{ who }!", None, "prompt_syntax_error"),
            ("Hello {{ who }}!", None, "no_change"),
            ("Hi", [{"name": "who", "type": "strng"}], "invalid_variables"),
        ]:
            with pytest.raises(Invalid) as caught:
                services.version_create(
                    actor=actor, organization=world.alpha, template=template, body=body, variables=variables
                )
            assert caught.value.code == code
        template.refresh_from_db()
        assert template.current_version is not None
        assert template.current_version.number == 1
        assert PromptVersion.objects.filter(template=template).count() == 1
    assert AuditEvent.objects.filter(organization=world.alpha, action="prompt.version_created").count() == 0


def test_names_are_unique_per_organization_and_checked(world: World) -> None:
    make_template(world, name="shared-name")
    make_template(world, world.beta, name="shared-name", body="Beta's {{ who }}")
    with pytest.raises(Conflict) as caught:
        make_template(world, name="shared-name")
    assert (caught.value.code, caught.value.field) == ("name_taken", "name")
    for bad in ["", "Has Space", "UPPER", "-dash-first", "x" * 101, "a/b"]:
        with pytest.raises(Invalid) as invalid:
            make_template(world, name=bad)
        assert invalid.value.field == "name"
    with in_schema(world.beta):
        assert services.template_render("shared-name", variables={"who": "b"}).text == "Beta's b"
    with in_schema(world.alpha):
        assert services.template_render("shared-name", variables={"who": "a"}).text == "Hello a!"


def test_the_file_default_serves_until_the_organization_has_its_own(world: World) -> None:
    with in_schema(world.alpha):
        shipped = services.template_render("pr.description", variables={"task": "T", "changes": ["c1"]})
        assert (shipped.source, shipped.version) == ("default", None)
        assert "- c1" in shipped.text
        with pytest.raises(NotFound) as caught:
            services.template_render("pr.description", version=2, variables={"task": "T", "changes": []})
        assert "has no version 2" in caught.value.message
        with pytest.raises(NotFound) as unknown:
            services.template_render("no-such-prompt")
        assert unknown.value.message == "No prompt template is named no-such-prompt."
    own = make_template(
        world,
        name="pr.description",
        body="PR for {{ task }}: {{ changes | join(', ') }}",
        variables=[{"name": "task", "type": "string"}, {"name": "changes", "type": "list"}],
    )
    with in_schema(world.alpha):
        mine = services.template_render("pr.description", variables={"task": "T", "changes": ["a", "b"]})
        assert (mine.text, mine.source, mine.version) == ("PR for T: a, b", "organization", 1)
    with in_schema(world.beta):  # Beta still gets the platform's
        assert (
            services.template_render("pr.description", variables={"task": "T", "changes": []}).source
            == "default"
        )
    with in_schema(world.alpha):
        services.template_delete(actor=Actor(user=world.alice), organization=world.alpha, template=own)
        assert not PromptVersion.objects.exists()
        again = services.template_render("pr.description", variables={"task": "T", "changes": []})
        assert again.source == "default"
    assert AuditEvent.objects.filter(organization=world.alpha, action="prompt.deleted").get().changes == {
        "before": {"name": "pr.description", "versions": 1}
    }


def test_a_pinned_version_that_does_not_exist_is_not_found(world: World) -> None:
    make_template(world)
    with in_schema(world.alpha):
        with pytest.raises(NotFound) as caught:
            services.template_render("greeting", version=9, variables={"who": "x"})
        assert caught.value.message == "The prompt template greeting has no version 9."
