"""Knowledge of one organization (tenant schema).

PostgreSQL is the record: every source and every chunk (its text, provenance,
version and usage) lives here. The vector index is Chroma's (apps/knowledge/store.py):
one collection per organization, rebuilt from these rows when it is lost, written
to after the rows (a chunk whose `indexed_at` is empty is still to be sent, e.g.
because Chroma was unreachable; a periodic task sends it, under the same id, so a
retry never duplicates).

- KnowledgeSource: what chunks come from: a workspace's repository, an uploaded
  document, a run's experience, or notes. Its status and progress show on the page.
- KnowledgeChunk: one piece of a source. Chunks are never edited: a new version of
  the same (source, path) supersedes the old one (kept, marked superseded, for the
  history), and search returns current chunks only.
- KnowledgePolicy: the organization's retention rules and embedding model (one row;
  defaults when absent).
"""

from __future__ import annotations

from typing import ClassVar

from django.db import models
from django.db.models import Q


class KnowledgeSource(models.Model):
    class Kind(models.TextChoices):
        REPOSITORY = "repository", "Repository"
        DOCUMENT = "document", "Document"
        EXPERIENCE = "experience", "Experience"
        NOTE = "note", "Note"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        INDEXING = "indexing", "Indexing"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"
        DELETING = "deleting", "Deleting"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    name = models.CharField(max_length=200)
    # A repository: the workspace whose /workspace checkout is indexed.
    workspace = models.ForeignKey(
        "workspaces.Workspace", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # A document: its file name and media type; an experience: the agent run it distils.
    uri = models.CharField(max_length=500, blank=True)
    media_type = models.CharField(max_length=100, blank=True)
    run_id = models.CharField(max_length=64, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    progress_done = models.PositiveIntegerField(default=0)
    progress_total = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    chunk_count = models.PositiveIntegerField(default=0)  # current (not superseded) chunks
    # A repository: the commit indexed last; the next index reads `git diff` from it.
    last_commit = models.CharField(max_length=64, blank=True)
    indexed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # Users live in the public schema; a plain id keeps this table free of a cross-schema key.
    created_by_id = models.BigIntegerField(null=True, blank=True)

    class Meta:
        ordering: ClassVar[list[str]] = ["-created_at", "-id"]
        indexes: ClassVar[list[models.Index]] = [models.Index(fields=["kind"], name="knowledge_source_kind")]

    def __str__(self) -> str:
        return f"{self.kind}: {self.name}"


class KnowledgeChunk(models.Model):
    # Chroma's id for it: stable for the same source, path, version and position, so
    # sending it twice overwrites instead of adding.
    key = models.CharField(max_length=80, unique=True)
    source = models.ForeignKey(KnowledgeSource, on_delete=models.CASCADE, related_name="chunks")
    kind = models.CharField(max_length=16, choices=KnowledgeSource.Kind.choices)
    path = models.CharField(max_length=500, blank=True)
    title = models.CharField(max_length=300, blank=True)
    start_line = models.PositiveIntegerField(null=True, blank=True)
    end_line = models.PositiveIntegerField(null=True, blank=True)
    commit = models.CharField(max_length=64, blank=True)
    run_id = models.CharField(max_length=64, blank=True)  # provenance of an experience
    text = models.TextField()
    content_hash = models.CharField(max_length=64)  # sha256 of the text
    version = models.PositiveIntegerField(default=1)  # of (source, path)
    superseded_at = models.DateTimeField(null=True, blank=True)
    indexed_at = models.DateTimeField(null=True, blank=True)  # sent to the vector index
    # Usage feedback: retrieved, and retrieved by a run that then succeeded.
    retrieved_count = models.PositiveIntegerField(default=0)
    useful_count = models.PositiveIntegerField(default=0)
    last_retrieved_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    metadata = models.JSONField(default=dict, blank=True)

    class Meta:
        indexes: ClassVar[list[models.Index]] = [
            models.Index(fields=["source", "path"], name="knowledge_chunk_path"),
            models.Index(fields=["content_hash"], name="knowledge_chunk_hash"),
            models.Index(
                fields=["created_at"], condition=Q(superseded_at__isnull=True), name="knowledge_chunk_current"
            ),
            models.Index(
                fields=["id"], condition=Q(indexed_at__isnull=True), name="knowledge_chunk_unindexed"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.path or self.title or self.key} v{self.version}"


class KnowledgePolicy(models.Model):
    """Retention of the organization's knowledge; pruning applies it (apps/knowledge/pruning.py).
    Also which model embeds it (apps/knowledge/services.py, "the embedding model")."""

    max_items = models.PositiveIntegerField(default=200_000)  # current chunks, all kinds
    max_age_days = models.PositiveIntegerField(default=365)  # since last retrieved (or created)
    # Per kind: {"experience": {"max_items": 5000, "max_age_days": 90}, ...}
    per_kind = models.JSONField(default=dict, blank=True)
    # Superseded versions kept per (source, path), for the history.
    keep_versions = models.PositiveIntegerField(default=3)
    # The embedding model chosen: "" the offline MiniLM, else an embedding model of the LLM
    # gateway's catalog. Chunks are embedded with it and sent to its own collection.
    embedding_model = models.CharField(max_length=100, blank=True, default="")
    # The model whose collection searches read: the chosen one once every current chunk
    # has been embedded with it; until then the previous one (vectors never mix).
    search_embedding_model = models.CharField(max_length=100, blank=True, default="")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return "knowledge policy"

    @property
    def reindexing(self) -> bool:
        """The chosen model's collection is still being filled; searches use the previous one."""
        return self.embedding_model != self.search_embedding_model


class KnowledgeRunSync(models.Model):
    """A run's session memory distilled into the organization's experience (apps/knowledge/sync.py):
    one row per run, so distilling it again changes nothing and returns what was done."""

    run_id = models.CharField(max_length=64, unique=True)
    outcome = models.CharField(max_length=32)
    result = models.JSONField(default=dict, blank=True)  # counts: added, duplicates, credited...
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"run {self.run_id} distilled ({self.outcome})"
