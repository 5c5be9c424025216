"""Indexing a workspace's git repository, on the real runtime and the real embedded index:
the first index reads every text file of HEAD (vendored, binary and oversized files left
out), search finds what was committed with its path, lines and commit; after an edit
and a commit, indexing again touches only what changed (the edited file's changed
chunks get a new version, the old one is superseded and no longer found; a deleted
file's and a renamed file's old chunks go; an untouched file keeps its rows); a rewritten
history starts over; a stopped workspace, a folder that is no repository and a
repository without commits are refused or fail with a reason a person can act on; with
Chroma unreachable the index still completes and the pending chunks are sent later, once."""

from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings
from django_tenants.utils import schema_context

from apps.core.errors import Conflict
from apps.knowledge import services, store
from apps.knowledge.ingest import repository_index, repository_source_create
from apps.knowledge.models import KnowledgeChunk, KnowledgeSource
from apps.tenancy.audit import Actor
from apps.workspaces import services as workspace_services
from apps.workspaces.models import Workspace
from tests.conftest import World, free_port
from tests.workspaces.conftest import Cleanup, make_workspace, workspaces_cleanup  # noqa: F401

pytestmark = pytest.mark.django_db

IDENTITY = {
    "GIT_AUTHOR_NAME": "Fixture",
    "GIT_AUTHOR_EMAIL": "fixture@example.test",
    "GIT_COMMITTER_NAME": "Fixture",
    "GIT_COMMITTER_EMAIL": "fixture@example.test",
}

BILLING_V1 = '''"""Billing: invoices and their totals."""


def compute_invoice_total(lines):
    """The sum of quantity times unit price over the invoice lines, before tax."""
    return sum(line.quantity * line.unit_price for line in lines)


def apply_late_fee(total, days_late):
    """A late invoice costs one percent more per week."""
    return total * (1 + 0.01 * (days_late // 7))
'''

BILLING_V2 = BILLING_V1.replace(
    "return sum(line.quantity * line.unit_price for line in lines)",
    "subtotal = sum(line.quantity * line.unit_price for line in lines)\n"
    "    return round(subtotal * (1 + VAT_RATE), 2)  # now with value added tax",
).replace(
    '"""Billing: invoices and their totals."""', '"""Billing: invoices and their totals."""\n\nVAT_RATE = 0.2'
)

UNTOUCHED = '''def parse_shipping_label(text):
    """Reads the carrier, tracking number and weight from a shipping label."""
    carrier, number, weight = text.split("|")
    return carrier.strip(), number.strip(), float(weight)
'''

README = "# Warehouse\n\nThe warehouse service keeps stock levels of every depot in sync.\n"


def sh(workspace: Workspace, world: World, command: str) -> str:
    outcome = workspace_services.workspace_exec(
        actor=Actor(user=world.alice), workspace=workspace, command=command, env=IDENTITY, timeout=60
    )
    assert outcome.exit_code == 0, (command, outcome.stdout, outcome.stderr)
    return outcome.stdout


def write(workspace: Workspace, world: World, path: str, text: str | bytes) -> None:
    data = text.encode() if isinstance(text, str) else text
    workspace_services.workspace_file_write(
        actor=Actor(user=world.alice), workspace=workspace, path=path, data=data
    )


@pytest.fixture
def repo(
    world: World,
    runtime_server: Any,
    workspaces_cleanup: Cleanup,  # noqa: F811
    knowledge_index: Any,
) -> Iterator[Workspace]:
    """A running workspace of Alpha with a committed repository in its top folder."""
    workspace = make_workspace(world, name="kb-repo")
    workspaces_cleanup.append((world.alpha, workspace))
    with schema_context(world.alpha.schema_name):
        write(workspace, world, "src/billing.py", BILLING_V1)
        write(workspace, world, "src/shipping.py", UNTOUCHED)
        write(
            workspace,
            world,
            "src/util.py",
            "def clamp(value, low, high):\n    return max(low, min(value, high))\n",
        )
        write(workspace, world, "README.md", README)
        write(workspace, world, "node_modules/left-pad/index.js", "module.exports = function leftPad() {}\n")
        write(workspace, world, "logo.dat", b"\x89PNG\r\n\x1a\n\x00\x00\x00binary")
        write(workspace, world, "data/huge.txt", b"warehouse " * 60_000)
        sh(workspace, world, "git init -q -b main && git add -A && git commit -qm first")
        yield workspace


def _head(workspace: Workspace, world: World) -> str:
    return sh(workspace, world, "git rev-parse HEAD").strip()


def _current(source: KnowledgeSource) -> dict[str, list[KnowledgeChunk]]:
    by_path: dict[str, list[KnowledgeChunk]] = {}
    for chunk in KnowledgeChunk.objects.filter(source=source, superseded_at__isnull=True).order_by("id"):
        by_path.setdefault(chunk.path, []).append(chunk)
    return by_path


def test_first_index_reads_the_committed_text_files_and_search_finds_them_with_provenance(
    world: World, repo: Workspace
) -> None:
    with schema_context(world.alpha.schema_name):
        head = _head(repo, world)
        source = repository_source_create(
            organization=world.alpha, actor=Actor(user=world.alice), workspace=repo
        )
        assert (source.status, source.name, source.uri) == ("pending", "kb-repo", "")

        outcome = repository_index(source_id=source.pk)

        source.refresh_from_db()
        assert (source.status, source.error, source.last_commit) == ("ready", "", head)
        assert outcome.full
        assert (outcome.files_put, outcome.files_deleted) == (4, 0)
        # node_modules/ and the 600 KB file skipped unread; logo.dat read and found binary.
        assert outcome.skipped == 3
        assert source.progress_done == source.progress_total == 5
        chunks = _current(source)
        assert set(chunks) == {"src/billing.py", "src/shipping.py", "src/util.py", "README.md"}
        assert source.chunk_count == sum(len(rows) for rows in chunks.values())
        assert {chunk.commit for rows in chunks.values() for chunk in rows} == {head}
        assert KnowledgeChunk.objects.filter(source=source, indexed_at__isnull=True).count() == 0

        hits = services.search(organization=world.alpha, query="compute the invoice total before tax", k=3)
        top = hits[0]
        assert (top.path, top.commit, top.source_name, top.kind) == (
            "src/billing.py",
            head,
            "kb-repo",
            "repository",
        )
        assert "compute_invoice_total" in top.text
        assert top.location.startswith("src/billing.py:")
        assert top.start_line is not None
        assert top.end_line is not None
        lines = BILLING_V1.splitlines()[top.start_line - 1 : top.end_line]
        assert "def compute_invoice_total(lines):" in lines


def test_an_edit_committed_is_indexed_alone_and_the_old_version_is_no_longer_found(
    world: World, repo: Workspace
) -> None:
    with schema_context(world.alpha.schema_name):
        source = repository_source_create(
            organization=world.alpha, actor=Actor(user=world.alice), workspace=repo
        )
        repository_index(source_id=source.pk)
        before = _current(source)
        old_total = next(chunk for chunk in before["src/billing.py"] if "compute_invoice_total" in chunk.text)

        write(repo, world, "src/billing.py", BILLING_V2)
        sh(repo, world, "git rm -q README.md && git mv src/util.py src/helpers.py && git commit -qam second")
        write(repo, world, "src/shipping.py", UNTOUCHED + "\n# an uncommitted edit is not indexed\n")
        head = _head(repo, world)

        outcome = repository_index(source_id=source.pk)

        source.refresh_from_db()
        assert (source.status, source.last_commit) == ("ready", head)
        assert not outcome.full
        assert (outcome.files_put, outcome.files_deleted) == (2, 2)  # billing + helpers; README + util
        assert source.progress_done == source.progress_total == 4
        after = _current(source)
        assert set(after) == {"src/billing.py", "src/shipping.py", "src/helpers.py"}
        # Untouched: the very same rows, still version 1.
        assert [chunk.pk for chunk in after["src/shipping.py"]] == [
            chunk.pk for chunk in before["src/shipping.py"]
        ]
        assert {chunk.version for chunk in after["src/shipping.py"]} == {1}
        assert "uncommitted" not in "".join(chunk.text for chunk in after["src/shipping.py"])
        # Edited: the changed chunks at version 2, the old one superseded and kept for the history.
        new_total = next(chunk for chunk in after["src/billing.py"] if "compute_invoice_total" in chunk.text)
        assert new_total.version == 2
        assert new_total.commit == head
        assert "VAT_RATE" in new_total.text
        old_total.refresh_from_db()
        assert old_total.superseded_at is not None
        assert outcome.chunks_superseded >= 1
        assert (
            KnowledgeChunk.objects.filter(source=source, path="README.md", superseded_at__isnull=True).count()
            == 0
        )
        assert KnowledgeChunk.objects.filter(source=source, path="README.md").count() == len(
            before["README.md"]
        )
        assert source.chunk_count == sum(len(rows) for rows in after.values())

        hits = services.search(
            organization=world.alpha, query="compute the invoice total with value added tax", k=10
        )
        keys = {hit.key for hit in hits}
        assert new_total.key in keys
        assert old_total.key not in keys
        assert not any(hit.path in {"README.md", "src/util.py"} for hit in hits)
        assert (
            store.current_index().count() == KnowledgeChunk.objects.filter(superseded_at__isnull=True).count()
        )

        # Nothing new: nothing read, nothing changed.
        again = repository_index(source_id=source.pk)
        assert (again.files_put, again.files_deleted, again.chunks_added) == (0, 0, 0)
        assert _current(source).keys() == after.keys()


def test_a_rewritten_history_starts_over_from_the_full_tree(world: World, repo: Workspace) -> None:
    with schema_context(world.alpha.schema_name):
        source = repository_source_create(
            organization=world.alpha, actor=Actor(user=world.alice), workspace=repo
        )
        repository_index(source_id=source.pk)
        sh(
            repo,
            world,
            "git checkout -q --orphan fresh && git rm -q --cached -r . && git add src/shipping.py"
            " && git commit -qm 'only shipping' && git branch -D main -q"
            " && git reflog expire --expire=now --all && git gc -q --prune=now",
        )
        outcome = repository_index(source_id=source.pk)
        source.refresh_from_db()
        assert outcome.full
        assert (source.status, source.last_commit) == ("ready", _head(repo, world))
        assert set(_current(source)) == {"src/shipping.py"}
        assert outcome.chunks_added == 0  # shipping.py's chunks were already there, unchanged


def test_a_folder_of_a_repository_is_indexed_with_paths_relative_to_it(world: World, repo: Workspace) -> None:
    with schema_context(world.alpha.schema_name):
        source = repository_source_create(
            organization=world.alpha, actor=Actor(user=world.alice), workspace=repo, path="src"
        )
        assert source.name == "kb-repo/src"
        repository_index(source_id=source.pk)
        assert set(_current(source)) == {"billing.py", "shipping.py", "util.py"}
        write(repo, world, "src/billing.py", BILLING_V2)
        write(repo, world, "README.md", README + "\nMore.\n")
        sh(repo, world, "git commit -qam 'billing and readme'")
        outcome = repository_index(source_id=source.pk)
        assert (outcome.files_put, outcome.files_deleted) == (1, 0)  # README.md is outside src/


def test_what_cannot_be_indexed_is_refused_or_fails_with_a_reason(
    world: World,
    runtime_server: Any,
    workspaces_cleanup: Cleanup,  # noqa: F811
    knowledge_index: Any,
) -> None:
    actor = Actor(user=world.alice)
    workspace = make_workspace(world, name="kb-misc")
    workspaces_cleanup.append((world.alpha, workspace))
    with schema_context(world.alpha.schema_name):
        sh(workspace, world, "mkdir -p plain empty && echo hi > plain/a.txt && git -C empty init -q")
        plain = repository_source_create(
            organization=world.alpha, actor=actor, workspace=workspace, path="plain"
        )
        repository_index(source_id=plain.pk)
        plain.refresh_from_db()
        assert (plain.status, plain.error) == ("failed", "plain/ is not a git repository.")

        empty = repository_source_create(
            organization=world.alpha, actor=actor, workspace=workspace, path="empty"
        )
        repository_index(source_id=empty.pk)
        empty.refresh_from_db()
        assert (empty.status, empty.error) == (
            "failed",
            "The repository has no commits yet; commit something, then index it.",
        )

        with pytest.raises(Conflict, match="already a knowledge source"):
            repository_source_create(organization=world.alpha, actor=actor, workspace=workspace, path="plain")

        stopped = make_workspace(world, name="kb-stopped", start=False)
        workspaces_cleanup.append((world.alpha, stopped))
        with pytest.raises(Conflict, match="kb-stopped is stopped; start it"):
            repository_source_create(organization=world.alpha, actor=actor, workspace=stopped)

        # A workspace stopped after its source was made: the index fails, saying so.
        sh(workspace, world, "git -C empty commit -q --allow-empty -m first")
        workspace_services.workspace_stop(actor=actor, organization=world.alpha, workspace=workspace)
        repository_index(source_id=empty.pk)
        empty.refresh_from_db()
        assert empty.status == "failed"
        assert empty.error == "The workspace kb-misc is stopped; start it, then index its repository."


def test_with_chroma_unreachable_the_index_completes_and_pending_chunks_are_sent_once_later(
    world: World, repo: Workspace
) -> None:
    with schema_context(world.alpha.schema_name):
        source = repository_source_create(
            organization=world.alpha, actor=Actor(user=world.alice), workspace=repo
        )
        with override_settings(CHROMA_URL=f"http://127.0.0.1:{free_port()}"):
            store.clients_reset()
            assert services.store_available() is not None
            repository_index(source_id=source.pk)
        store.clients_reset()
        source.refresh_from_db()
        assert source.status == "ready"
        pending = KnowledgeChunk.objects.filter(source=source, indexed_at__isnull=True).count()
        assert pending == source.chunk_count > 0
        assert store.current_index().count() == 0

        assert services.index_pending() == {"sent": pending, "removed": 0}
        assert services.index_pending() == {"sent": 0, "removed": 0}
        assert store.current_index().count() == pending
        hits = services.search(organization=world.alpha, query="stock levels of every depot", k=1)
        assert hits[0].path == "README.md"
