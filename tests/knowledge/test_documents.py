"""Uploaded documents, through the service and the real embedded index: Markdown split
at its headings and found by search with its name, lines and heading; HTML without its
scripts and styles, its headings kept; a PDF's text page by page; the same file again
changes nothing, a new version of it supersedes the old; bad uploads (unsupported type,
too large, empty, not UTF-8, not a PDF) are refused on the file field with what to do."""

from typing import Any

import pytest
from django.test import override_settings
from django_tenants.utils import schema_context

from apps.core.errors import Invalid
from apps.knowledge import services
from apps.knowledge.documents import document_upload, html_to_text, pdf_to_text
from apps.knowledge.models import KnowledgeChunk, KnowledgeSource
from apps.tenancy.audit import Actor
from apps.tenancy.models import AuditEvent
from tests.conftest import World

pytestmark = pytest.mark.django_db

GUIDE = """# Deployment guide

How the warehouse service is deployed.

## Rolling restarts

Restart the pods one at a time with `kubectl rollout restart`; the load balancer drains
each pod for thirty seconds before it stops.

## Database migrations

Run the migrations before the new pods start; they must be backwards compatible for one release.
"""

PAGE = """<!doctype html><html><head><title>Returns policy</title>
<style>body { color: red }</style><script>window.trackingPixel = "do-not-index";</script></head>
<body><h1>Returns</h1><p>Customers may return unopened parcels within
<b>thirty days</b> for a full refund.</p>
<h2>Damaged goods</h2><p>Damaged goods are replaced free of charge after a photo is sent.</p>
<noscript>Enable JavaScript</noscript></body></html>"""


def minimal_pdf(*pages: str) -> bytes:
    """A valid PDF with one line of Helvetica text per page (xref offsets computed)."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>"]
    kids = " ".join(f"{4 + 2 * index} 0 R" for index in range(len(pages)))
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>")
    objects.append("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for index, text in enumerate(pages):
        content = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET"
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {5 + 2 * index} 0 R"
            " /Resources << /Font << /F1 3 0 R >> >> >>"
        )
        objects.append(f"<< /Length {len(content)} >>\nstream\n{content}\nendstream")
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{offset:010d} 00000 n \n" for offset in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def upload(world: World, name: str, data: bytes, media_type: str = "") -> Any:
    return document_upload(
        organization=world.alpha, actor=Actor(user=world.alice), name=name, data=data, media_type=media_type
    )


def test_a_markdown_document_is_split_at_its_headings_and_found_with_its_provenance(
    world: World, knowledge_index: Any
) -> None:
    with schema_context(world.alpha.schema_name):
        outcome = upload(world, "deploy.md", GUIDE.encode())
        source = outcome.source
        assert (outcome.created, outcome.queued) == (True, False)
        assert (source.kind, source.name, source.uri, source.media_type) == (
            "document",
            "deploy.md",
            "deploy.md",
            "text/markdown",
        )
        assert (source.status, source.progress_done, source.progress_total) == ("ready", 1, 1)
        assert source.chunk_count == KnowledgeChunk.objects.filter(source=source).count() >= 2
        hits = services.search(
            organization=world.alpha, query="how long does the load balancer drain a pod", k=3
        )
        top = hits[0]
        assert (top.source_name, top.path, top.kind) == ("deploy.md", "deploy.md", "document")
        assert "Rolling restarts" in top.title
        assert "thirty seconds" in top.text
        assert top.start_line is not None
        assert GUIDE.splitlines()[top.start_line - 1] == "## Rolling restarts"
        assert AuditEvent.objects.filter(
            action="knowledge.document_uploaded", target_id=str(source.pk)
        ).exists()


def test_the_same_file_again_changes_nothing_and_a_new_version_supersedes_the_old(
    world: World, knowledge_index: Any
) -> None:
    with schema_context(world.alpha.schema_name):
        first = upload(world, "deploy.md", GUIDE.encode()).source
        rows = set(KnowledgeChunk.objects.filter(source=first).values_list("pk", flat=True))

        again = upload(world, "deploy.md", GUIDE.encode())
        assert again.source.pk == first.pk
        assert not again.created
        assert again.result is not None
        assert (again.result.added, again.result.superseded) == (0, 0)
        assert set(KnowledgeChunk.objects.filter(source=first).values_list("pk", flat=True)) == rows

        edited = GUIDE.replace("thirty seconds", "ninety seconds")
        changed = upload(world, "deploy.md", edited.encode())
        assert changed.result is not None
        assert (changed.result.added, changed.result.superseded) == (1, 1)
        assert KnowledgeSource.objects.filter(kind="document").count() == 1
        old = KnowledgeChunk.objects.get(source=first, superseded_at__isnull=False)
        assert "thirty seconds" in old.text
        hits = services.search(organization=world.alpha, query="load balancer drains each pod", k=5)
        assert any("ninety seconds" in hit.text for hit in hits)
        assert not any("thirty seconds" in hit.text for hit in hits)


def test_html_loses_its_scripts_and_styles_and_keeps_its_headings(world: World, knowledge_index: Any) -> None:
    text = html_to_text(PAGE)
    assert "# Returns" in text
    assert "## Damaged goods" in text
    assert "Customers may return unopened parcels within thirty days for a full refund." in text
    assert "trackingPixel" not in text
    assert "color: red" not in text
    assert "Enable JavaScript" not in text
    with schema_context(world.alpha.schema_name):
        source = upload(world, "returns.html", PAGE.encode()).source
        assert source.media_type == "text/html"
        chunks = list(KnowledgeChunk.objects.filter(source=source))
        assert {chunk.path for chunk in chunks} == {"returns.html"}
        assert any("Damaged goods" in chunk.title for chunk in chunks)
        assert not any("trackingPixel" in chunk.text for chunk in chunks)
        top = services.search(organization=world.alpha, query="replacement of damaged goods", k=1)[0]
        assert (top.path, top.kind) == ("returns.html", "document")


def test_a_pdf_is_read_page_by_page(world: World, knowledge_index: Any) -> None:
    data = minimal_pdf("Forklifts are inspected every Monday morning.", "Night shifts end at six.")
    assert pdf_to_text(data, "x.pdf") == (
        "## Page 1\n\nForklifts are inspected every Monday morning.\n\n## Page 2\n\nNight shifts end at six."
    )
    with schema_context(world.alpha.schema_name):
        source = upload(world, "safety.pdf", data).source
        assert (source.status, source.media_type) == ("ready", "application/pdf")
        top = services.search(organization=world.alpha, query="when are forklifts inspected", k=1)[0]
        assert (top.path, top.title) == ("safety.pdf", "Page 1")


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        (
            "photo.png",
            b"\x89PNG\r\n",
            "photo.png: .png is not a supported document type; upload Markdown (.md)",
        ),
        ("notes", b"plain", "notes: a file without a suffix is not a supported document type"),
        ("empty.md", b"", "empty.md is empty."),
        ("blank.txt", b"  \n\n", "blank.txt has no text to index."),
        ("latin.txt", "café".encode("latin-1"), "latin.txt is not UTF-8 text; save it as UTF-8"),
        ("fake.pdf", b"just text", "fake.pdf is not a PDF file (no %PDF- header)."),
        ("broken.pdf", b"%PDF-1.4\ngarbage", "broken.pdf could not be read as a PDF"),
        ("only-script.html", b"<script>x()</script>", "only-script.html has no text to index."),
        ("", b"text", "Give the file a name"),
    ],
)
def test_bad_uploads_are_refused_on_the_file_field(
    world: World, name: str, data: bytes, message: str
) -> None:
    with schema_context(world.alpha.schema_name), pytest.raises(Invalid) as refused:
        upload(world, name, data)
    assert refused.value.field == "file"
    assert refused.value.message.startswith(message), refused.value.message
    with schema_context(world.alpha.schema_name):
        assert not KnowledgeSource.objects.exists()


@override_settings(KNOWLEDGE_MAX_UPLOAD_BYTES=1024 * 1024)
def test_a_file_over_the_limit_is_refused_naming_the_limit(world: World) -> None:
    with schema_context(world.alpha.schema_name), pytest.raises(Invalid) as refused:
        upload(world, "big.md", b"a" * (1024 * 1024 + 1))
    assert refused.value.message == (
        "big.md is 1.1 MB, over the limit of 1 MB for a document (KNOWLEDGE_MAX_UPLOAD_BYTES);"
        " split it or upload a smaller one."
    )
    assert refused.value.code == "too_large"


def test_a_file_without_a_suffix_is_typed_by_its_media_type(world: World, knowledge_index: Any) -> None:
    with schema_context(world.alpha.schema_name):
        source = upload(world, "CHANGES", b"# Changes\n\nVersion 2 adds depots.\n", "text/markdown").source
        assert source.media_type == "text/markdown"
