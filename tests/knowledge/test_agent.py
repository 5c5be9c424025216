"""What an agent gets: the knowledge_search tool (its definition and its text results,
with provenance, session first) and the context hook (session then organization, within
the token budget); a run's start preloads and its end distils and frees the session."""

from typing import Any

import jsonschema
import pytest
from django_tenants.utils import schema_context

from apps.knowledge import agent, store
from apps.knowledge.models import KnowledgeChunk
from apps.knowledge.session import session_end, session_find, session_for
from apps.llm.tokens import estimate_text_tokens
from tests.conftest import World, free_port
from tests.knowledge.conftest import make_source, put_file

pytestmark = pytest.mark.django_db

MIGRATIONS = """# Database

## Migrations
Run `python manage.py migrate_schemas` to migrate every organization's schema and the template.

## Backups
Backups run nightly with pg_dump into the backups bucket; they are kept for thirty days.
"""
MODELS = '''"""Orders."""


class Order(models.Model):
    """An order of a customer; its total is the sum of its lines."""

    def total(self):
        return sum(line.amount for line in self.lines.all())
'''


@pytest.fixture
def run(knowledge_index: Any, world: World) -> Any:
    run_id = "run-agent"
    with schema_context(world.alpha.schema_name):
        put_file(
            make_source(world, world.alpha, kind="document", name="database.md"), "database.md", MIGRATIONS
        )
        put_file(
            make_source(world, world.alpha, kind="repository", name="shop"),
            "shop/orders.py",
            MODELS,
            "ab12cd34ef56",
        )
        yield run_id
    session_end(run_id)


def test_the_tool_is_described_with_a_valid_json_schema() -> None:
    assert agent.TOOL.name == "knowledge_search"
    jsonschema.Draft202012Validator.check_schema(agent.TOOL.parameters)
    validator = jsonschema.Draft202012Validator(agent.TOOL.parameters)
    assert validator.is_valid({"query": "migrations", "k": 3, "kind": "document"})
    assert not validator.is_valid({"k": 3})
    assert not validator.is_valid({"query": "x", "kind": "secrets"})


def test_the_tool_answers_with_passages_and_where_they_come_from(run: str, world: World) -> None:
    with schema_context(world.alpha.schema_name):
        text = agent.knowledge_search(world.alpha, run, {"query": "how do I migrate the database?", "k": 2})
        assert text.startswith("[1] database.md:")
        assert "(document: database.md)" in text
        assert "migrate_schemas" in text
        code = agent.knowledge_search(
            world.alpha, run, {"query": "order total", "k": 1, "kind": "repository"}
        )
        assert "shop/orders.py:" in code
        assert "(repository: shop @ ab12cd34ef56)" in code
        # What it found is now in the run's session, and remembered as retrieved.
        memory = session_for(run)
        assert {item.kind for item in memory.items} == {"snippet"}
        assert len(memory.retrieved_keys) == 3


def test_the_run_s_own_notes_come_first(run: str, world: World) -> None:
    with schema_context(world.alpha.schema_name):
        agent.remember(run, "Migrations on this branch need --fake-initial for the knowledge app.")
        text = agent.knowledge_search(world.alpha, run, {"query": "how do I run the migrations?", "k": 3})
        assert text.startswith("[1] this run's note")
        assert "[2] database.md:" in text


def test_bad_arguments_give_a_text_saying_what_to_fix(run: str, world: World) -> None:
    with schema_context(world.alpha.schema_name):
        assert "query" in agent.knowledge_search(world.alpha, run, {"k": 2})
        assert "empty" in agent.knowledge_search(world.alpha, run, {"query": " "})
        assert "1 to 10" in agent.knowledge_search(world.alpha, run, {"query": "x", "k": 99})
        assert "Unknown kind" in agent.knowledge_search(world.alpha, run, {"query": "x", "kind": "secrets"})
        assert "Unknown argument 'limit'" in agent.knowledge_search(
            world.alpha, run, {"query": "x", "limit": 3}
        )
        assert agent.knowledge_search(world.alpha, run, ["migrations"]).startswith("knowledge_search error")


def test_the_hook_gives_the_session_first_then_the_organization_within_the_budget(
    run: str, world: World
) -> None:
    with schema_context(world.alpha.schema_name):
        agent.remember(run, "The staging database refuses migrations during business hours.")
        block = agent.context_for(world.alpha, run, "run the database migrations", token_budget=400)
        assert block.startswith(agent.CONTEXT_HEADER)
        assert estimate_text_tokens(block) <= 400
        note = block.index("this run's note")
        document = block.index("database.md:")
        assert note < document
        assert "migrate_schemas" in block

        small = agent.context_for(world.alpha, run, "run the database migrations", token_budget=45)
        assert estimate_text_tokens(small) <= 45
        assert small.startswith(agent.CONTEXT_HEADER)

        assert agent.context_for(world.alpha, run, "run the database migrations", token_budget=5) == ""
        assert agent.context_for(world.alpha, run, "") == ""


def test_the_hook_s_default_budget_is_the_setting(run: str, world: World, settings: Any) -> None:
    settings.KNOWLEDGE_CONTEXT_TOKENS = 60
    with schema_context(world.alpha.schema_name):
        block = agent.context_for(world.alpha, run, "database backups")
        assert block
        assert estimate_text_tokens(block) <= 60


def test_with_the_index_down_the_hook_gives_the_session_and_the_tool_says_why(
    run: str, world: World, settings: Any
) -> None:
    with schema_context(world.alpha.schema_name):
        agent.remember(run, "Backups of staging are taken hourly.")
        settings.CHROMA_URL = f"http://127.0.0.1:{free_port()}"
        store.clients_reset()
        try:
            block = agent.context_for(world.alpha, run, "how often are backups taken?")
            assert "this run's note" in block
            assert "database.md" not in block
            text = agent.knowledge_search(world.alpha, run, {"query": "backups"})
            assert "cannot be searched right now" in text
            assert "Backups of staging" in text
        finally:
            store.clients_reset()


def test_a_run_starts_preloaded_and_its_end_distils_and_frees_it(run: str, world: World) -> None:
    with schema_context(world.alpha.schema_name):
        assert (
            agent.run_start(organization=world.alpha, run_id=run, task_text="Add a migration for orders") > 0
        )
        agent.remember(run, "Order totals are computed in Python, not SQL.", key="order-totals")
        result = agent.run_end(
            organization=world.alpha, run_id=run, outcome="succeeded", summary="Migration added"
        )
        assert result.added == 2
        assert result.credited > 0
        assert session_find(run) is None
        assert KnowledgeChunk.objects.filter(kind="experience", run_id=run).count() == 2
