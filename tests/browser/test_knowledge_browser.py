"""A member opens Knowledge from the sidebar, uploads a Markdown document, searches for a
phrase in it and sees the result with its provenance (document, path:lines) and score,
then deletes the document after confirming."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django_tenants.utils import schema_context
from playwright.sync_api import expect

from apps.knowledge.models import KnowledgeSource
from apps.tenancy.models import AuditEvent
from tests.conftest import LiveServer, World
from tests.knowledge.conftest import knowledge_index  # noqa: F401

pytestmark = pytest.mark.browser

DOCUMENT = """# Cold storage handbook

How the cold rooms of the warehouse are run.

## Temperature checks

The freezer rooms are checked every four hours; a reading above minus eighteen degrees
is reported to the shift lead at once.

## Loading dock

Pallets wait on the dock for at most ten minutes.
"""


@pytest.fixture
def cleanup(live_db: World) -> Iterator[None]:
    yield
    with schema_context(live_db.alpha.schema_name):
        KnowledgeSource.objects.filter(name="cold-storage.md").delete()
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {AuditEvent._meta.db_table} WHERE organization_id = %s"  # noqa: S608
            " AND action LIKE 'knowledge.%%'",
            [live_db.alpha.pk],
        )


def test_upload_a_document_search_it_and_delete_it(
    page: Any,
    asgi_server: LiveServer,
    world: World,
    knowledge_index: Path,  # noqa: F811
    cleanup: None,
    tmp_path: Path,
) -> None:
    document = tmp_path / "cold-storage.md"
    document.write_text(DOCUMENT)
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(asgi_server.url(path="/login/"))
    page.get_by_label("Email").fill(world.amy.email)
    page.get_by_label("Password").fill(world.password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Alpha")

    page.get_by_role("navigation", name="Organization").get_by_role("link", name="Knowledge").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Knowledge")
    expect(page.get_by_text("No knowledge yet.")).to_be_visible()

    page.get_by_label("Document", exact=True).set_input_files(str(document))
    page.get_by_role("button", name="Upload").click()
    expect(page.get_by_role("status")).to_contain_text("cold-storage.md was added")
    row = page.get_by_test_id("source-row").filter(has_text="cold-storage.md")
    expect(row.get_by_test_id("source-status")).to_have_text("Ready")
    expect(row.get_by_test_id("source-chunks")).not_to_have_text("0")

    page.get_by_role("searchbox", name="Search").fill("how often are the freezer rooms checked")
    page.get_by_role("button", name="Search", exact=True).click()
    first = page.get_by_test_id("search-hit").first
    expect(first.get_by_test_id("hit-source")).to_have_text("cold-storage.md")
    expect(first.get_by_test_id("hit-location")).to_have_text("cold-storage.md:5-8")
    expect(first).to_contain_text("checked every four hours")
    expect(first.get_by_test_id("hit-score")).to_contain_text("score 0.")
    expect(first).to_contain_text("Cold storage handbook > Temperature checks")

    row.get_by_role("button", name="Delete cold-storage.md").click()
    expect(page.get_by_role("status")).to_contain_text("cold-storage.md and its chunks were deleted.")
    expect(page.get_by_test_id("source-row")).to_have_count(0)
    with schema_context(world.alpha.schema_name):
        assert not KnowledgeSource.objects.filter(name="cold-storage.md").exists()
