"""Uploaded documents into the knowledge store: Markdown, plain text, HTML and PDF.

    source = document_upload(organization=org, actor=actor, name="guide.md", data=raw)

Each upload is checked first (size against KNOWLEDGE_MAX_UPLOAD_BYTES, a supported
type, not empty, decodable: a clear `Invalid` on the `file` field otherwise, so a
400), then turned into text: HTML through the standard library's parser, scripts
and styles dropped and headings kept as Markdown headings (`## Title`) so the
Markdown chunker splits at them; PDF page by page through pypdf. The text is chunked
as Markdown (or as plain text) and put under the document's file name.

A document is one source per file name: uploading the same name again replaces its
chunks (the old version is superseded and kept for the history), and uploading the
same bytes again changes nothing.
"""

from __future__ import annotations

import io
import logging
import math
import re
from dataclasses import dataclass, replace
from html.parser import HTMLParser
from pathlib import PurePosixPath
from typing import Final

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from apps.core.errors import Invalid, NotFound, ServiceError
from apps.knowledge import services
from apps.knowledge.chunking import Chunk, chunk_file
from apps.knowledge.models import KnowledgeSource
from apps.knowledge.services import PutResult
from apps.tenancy.audit import Actor, audit_record
from apps.tenancy.models import Organization

logger = logging.getLogger(__name__)

MIB: Final = 1024 * 1024
MAX_NAME_LENGTH: Final = 200


@dataclass(frozen=True)
class DocumentType:
    label: str
    media_type: str
    suffixes: tuple[str, ...]
    media_types: tuple[str, ...]  # what a browser or curl may send for it


MARKDOWN = DocumentType(
    "Markdown", "text/markdown", (".md", ".markdown", ".mdown"), ("text/markdown", "text/x-markdown")
)
TEXT = DocumentType("plain text", "text/plain", (".txt", ".text", ".rst", ".log"), ("text/plain",))
HTML = DocumentType("HTML", "text/html", (".html", ".htm", ".xhtml"), ("text/html", "application/xhtml+xml"))
PDF = DocumentType("PDF", "application/pdf", (".pdf",), ("application/pdf",))
DOCUMENT_TYPES: Final = (MARKDOWN, TEXT, HTML, PDF)
SUPPORTED: Final = "Markdown (.md), plain text (.txt), HTML (.html) and PDF (.pdf)"


def max_upload_bytes() -> int:
    return int(settings.KNOWLEDGE_MAX_UPLOAD_BYTES)


def size_in_mb(size: int, *, round_up: bool = False) -> str:
    tenths = math.ceil(size * 10 / MIB) if round_up else round(size * 10 / MIB)
    return f"{tenths / 10:.1f}".removesuffix(".0") + " MB"


def document_name(name: str) -> str:
    """The file's own name (no folders), checked: what the document is known by."""
    name = PurePosixPath((name or "").replace("\\", "/")).name.strip()
    if not name or name in {".", ".."}:
        raise Invalid("Give the file a name, e.g. guide.md.", field="file")
    if len(name) > MAX_NAME_LENGTH or any(ord(char) < 32 or ord(char) == 127 for char in name):
        raise Invalid(
            f"The file name must be at most {MAX_NAME_LENGTH} characters, without control characters.",
            field="file",
        )
    return name


def document_type(name: str, media_type: str = "") -> DocumentType:
    """By the file name's suffix; the media type decides only when the name has no known suffix."""
    suffix = PurePosixPath(name).suffix.lower()
    for kind in DOCUMENT_TYPES:
        if suffix in kind.suffixes:
            return kind
    essence = media_type.split(";", 1)[0].strip().lower()
    if not suffix:
        for kind in DOCUMENT_TYPES:
            if essence in kind.media_types:
                return kind
    shown = suffix or "a file without a suffix"
    raise Invalid(
        f"{name}: {shown} is not a supported document type; upload {SUPPORTED}.",
        code="unsupported_type",
        field="file",
    )


def check_size(size: int, name: str = "The file") -> None:
    limit = max_upload_bytes()
    if size > limit:
        raise Invalid(
            f"{name} is {size_in_mb(size, round_up=True)}, over the limit of {size_in_mb(limit)} for a"
            " document (KNOWLEDGE_MAX_UPLOAD_BYTES); split it or upload a smaller one.",
            code="too_large",
            field="file",
        )


# --- to text -----------------------------------------------------------------------------------------


def decode_text(data: bytes, name: str) -> str:
    """UTF-8 (with or without a byte order mark) or UTF-16 with one; anything else is refused."""
    encoding = "utf-16" if data.startswith((b"\xff\xfe", b"\xfe\xff")) else "utf-8-sig"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError:
        raise Invalid(
            f"{name} is not UTF-8 text; save it as UTF-8 and upload it again.",
            code="undecodable",
            field="file",
        ) from None
    if "\x00" in text:
        raise Invalid(
            f"{name} looks binary (it contains NUL bytes), not text.", code="undecodable", field="file"
        )
    return text.replace("\r\n", "\n").replace("\r", "\n")


class _HtmlToText(HTMLParser):
    """HTML as Markdown-ish text: headings as `#` lines, paragraphs and list items on
    lines of their own, <pre> kept as it is; scripts, styles and the like dropped."""

    DROPPED: Final = frozenset({"script", "style", "noscript", "template", "svg", "head", "iframe", "object"})
    BLOCKS: Final = frozenset(
        {
            "p", "div", "section", "article", "main", "header", "footer", "aside", "nav", "br", "hr",
            "table", "tr", "ul", "ol", "dl", "dt", "dd", "blockquote", "figure", "figcaption", "form",
            "pre", "title", "body", "html", "details", "summary",
        }
    )  # fmt: skip
    HEADINGS: Final = {f"h{level}": level for level in range(1, 7)}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.dropped_depth = 0
        self.pre_depth = 0
        self.title = ""
        self._in_title = False

    def _newline(self, count: int = 1) -> None:
        self.parts.append("\n" * count)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.DROPPED:
            if tag == "head":
                return  # its <title> is wanted; its scripts and styles are dropped by their own tags
            self.dropped_depth += 1
            return
        if tag == "title":
            self._in_title = True
            return
        if tag in self.HEADINGS:
            self._newline(2)
            self.parts.append("#" * self.HEADINGS[tag] + " ")
        elif tag == "li":
            self._newline()
            self.parts.append("- ")
        elif tag == "pre":
            self.pre_depth += 1
            self._newline(2)
            self.parts.append("```\n")
        elif tag in {"td", "th"}:
            self.parts.append(" " if self.parts and self.parts[-1].endswith("|") else "| ")
        elif tag in self.BLOCKS and tag != "tr":
            self._newline(2 if tag in {"p", "div", "section", "article", "table", "blockquote"} else 1)

    def handle_endtag(self, tag: str) -> None:
        if tag in self.DROPPED:
            if tag != "head":
                self.dropped_depth = max(0, self.dropped_depth - 1)
            return
        if tag == "title":
            self._in_title = False
            return
        if tag == "pre":
            self.pre_depth = max(0, self.pre_depth - 1)
            self.parts.append("\n```")
            self._newline(2)
        elif tag in {"td", "th"}:
            self.parts.append(" |")
        elif tag in self.HEADINGS or tag in self.BLOCKS:
            self._newline(2 if tag in self.HEADINGS or tag in {"p", "table", "blockquote"} else 1)

    def handle_data(self, data: str) -> None:
        if self.dropped_depth:
            return
        if self._in_title:
            self.title += data
            return
        if self.pre_depth:
            self.parts.append(data)
        else:
            self.parts.append(re.sub(r"\s+", " ", data))

    def text(self) -> str:
        # Between ``` fences (a <pre>) the text stays as it was; elsewhere each line is trimmed.
        segments = "".join(self.parts).split("```")
        for index in range(0, len(segments), 2):
            lines = (line.strip() for line in segments[index].split("\n"))
            segments[index] = re.sub(r"\n{3,}", "\n\n", "\n".join(lines))
        text = "```".join(segments).strip()
        title = re.sub(r"\s+", " ", self.title).strip()
        if title and not text.startswith("# "):
            text = f"# {title}\n\n{text}" if text else f"# {title}"
        return text


def html_to_text(html: str) -> str:
    parser = _HtmlToText()
    parser.feed(html)
    parser.close()
    return parser.text()


def pdf_to_text(data: bytes, name: str) -> str:
    """Each page's text under a `## Page N` heading, so a chunk names the page it came from."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise Invalid(
                f"{name} is an encrypted PDF; upload one without a password.",
                code="undecodable",
                field="file",
            )
        pages = [page.extract_text() or "" for page in reader.pages]
    except Invalid:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError) as exc:
        logger.info("Unreadable PDF %s: %s", name, exc)
        raise Invalid(
            f"{name} could not be read as a PDF ({exc}).", code="undecodable", field="file"
        ) from None
    sections = [f"## Page {number}\n\n{text.strip()}" for number, text in enumerate(pages, 1) if text.strip()]
    return "\n\n".join(sections)


@dataclass(frozen=True)
class DocumentText:
    name: str
    kind: DocumentType
    text: str
    # The name the chunker sees: HTML and PDF become Markdown, so they are split at headings.
    chunk_path: str


def document_text(*, name: str, data: bytes, media_type: str = "") -> DocumentText:
    """The checked, decoded text of an upload, or `Invalid` (400) on the `file` field."""
    name = document_name(name)
    check_size(len(data), name)
    kind = document_type(name, media_type)
    if not data:
        raise Invalid(f"{name} is empty.", code="empty", field="file")
    if kind is PDF:
        if not data.startswith(b"%PDF-"):
            raise Invalid(f"{name} is not a PDF file (no %PDF- header).", code="undecodable", field="file")
        text = pdf_to_text(data, name)
    else:
        text = decode_text(data, name)
        if kind is HTML:
            text = html_to_text(text)
    if not text.strip():
        raise Invalid(f"{name} has no text to index.", code="empty", field="file")
    stem = PurePosixPath(name).stem or name
    chunk_path = name if kind in {MARKDOWN, TEXT} else f"{stem}.md"
    return DocumentText(name=name, kind=kind, text=text, chunk_path=chunk_path)


# --- into the store -----------------------------------------------------------------------------------

# Up to this many chunks a document is embedded and stored while the upload waits (a few
# seconds at most); a larger one is stored by the worker (202, the source shows progress).
SYNC_MAX_CHUNKS: Final = 300
# pg_advisory_xact_lock(namespace, hashtext(name)): two uploads of one new name make one source.
UPLOAD_LOCK_NAMESPACE: Final = 0x4B44  # "KD"


@dataclass(frozen=True)
class UploadOutcome:
    source: KnowledgeSource
    created: bool  # a new document, not a new version of one of the same name
    queued: bool  # left to the worker (large); the source is pending until it is done
    result: PutResult | None  # what changed, when stored at once


def document_chunks(document: DocumentText, *, source_id: int) -> list[Chunk]:
    """Chunked as Markdown (HTML, PDF, .md) or plain text, under the document's own name."""
    chunks = chunk_file(document.chunk_path, document.text, source=f"document:{source_id}")
    if document.chunk_path == document.name:
        return chunks
    return [
        replace(
            chunk,
            path=document.name,
            title=document.name if chunk.title == document.chunk_path else chunk.title,
            metadata={**chunk.metadata, "converted_from": document.kind.label},
        )
        for chunk in chunks
    ]


def _put(source: KnowledgeSource, document: DocumentText, chunks: list[Chunk]) -> PutResult:
    result = services.chunks_put(source=source, path=document.name, chunks=chunks)
    KnowledgeSource.objects.filter(pk=source.pk).update(
        status=KnowledgeSource.Status.READY,
        error="",
        progress_done=1,
        progress_total=1,
        indexed_at=timezone.now(),
        updated_at=timezone.now(),
    )
    return result


def document_upload(
    *, organization: Organization, actor: Actor, name: str, data: bytes, media_type: str = ""
) -> UploadOutcome:
    """Store an uploaded document's chunks: a new source, or a new version of the document
    of the same name (identical bytes change nothing). Bad input: `Invalid` on `file`."""
    services.check_organization(organization)
    document = document_text(name=name, data=data, media_type=media_type)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", [UPLOAD_LOCK_NAMESPACE, document.name]
            )
        source = KnowledgeSource.objects.filter(kind=KnowledgeSource.Kind.DOCUMENT, uri=document.name).first()
        created = source is None
        if source is None:
            source = services.source_create(
                organization=organization,
                kind=KnowledgeSource.Kind.DOCUMENT,
                name=document.name,
                uri=document.name,
                media_type=document.kind.media_type,
                actor=actor,
            )
        chunks = document_chunks(document, source_id=source.pk)
        queued = len(chunks) > SYNC_MAX_CHUNKS
        KnowledgeSource.objects.filter(pk=source.pk).update(
            status=KnowledgeSource.Status.PENDING if queued else KnowledgeSource.Status.INDEXING,
            media_type=document.kind.media_type,
            error="",
            progress_done=0,
            progress_total=1,
            updated_at=timezone.now(),
        )
        result = None
        if queued:
            from apps.knowledge.tasks import index_document_task

            source_id, text, kind = source.pk, document.text, document.kind.label
            transaction.on_commit(lambda: index_document_task.delay(source_id, text, kind))
        else:
            result = _put(source, document, chunks)
        audit_record(
            actor=actor,
            organization=organization,
            action="knowledge.document_uploaded",
            target=source,
            after={
                "name": document.name,
                "type": document.kind.label,
                "bytes": len(data),
                "chunks": len(chunks),
                "queued": queued,
                **({"added": result.added, "superseded": result.superseded} if result else {}),
            },
        )
    source.refresh_from_db()
    return UploadOutcome(source=source, created=created, queued=queued, result=result)


def document_index(*, source_id: int, text: str, kind_label: str) -> str:
    """The worker's half of a large upload: chunk and store the text (already checked and
    converted by document_upload). Its status: ready, failed with the reason, or gone."""
    source = KnowledgeSource.objects.filter(pk=source_id, kind=KnowledgeSource.Kind.DOCUMENT).first()
    if source is None:
        return "gone"
    kind = next((item for item in DOCUMENT_TYPES if item.label == kind_label), TEXT)
    stem = PurePosixPath(source.uri).stem or source.uri
    document = DocumentText(
        name=source.uri,
        kind=kind,
        text=text,
        chunk_path=source.uri if kind in {MARKDOWN, TEXT} else f"{stem}.md",
    )
    KnowledgeSource.objects.filter(pk=source_id).update(status=KnowledgeSource.Status.INDEXING)
    try:
        _put(source, document, document_chunks(document, source_id=source_id))
    except ServiceError as exc:
        if isinstance(exc, NotFound):
            return "gone"
        KnowledgeSource.objects.filter(pk=source_id).update(
            status=KnowledgeSource.Status.FAILED, error=exc.message[:2000]
        )
        return KnowledgeSource.Status.FAILED
    return KnowledgeSource.Status.READY
