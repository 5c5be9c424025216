"""A workspace's git repository into the knowledge store, first in full, then by git diff.

    source = repository_source_create(organization=org, actor=actor, workspace=ws, path="")
    # queued: the Celery task knowledge.index_source runs repository_index(source_id=...)

What is indexed is the repository's committed HEAD, not the working tree: a source's
`last_commit` then says exactly what its chunks are, the next index reads
`git diff --name-status <last_commit> HEAD` and touches only what changed (re-puts
added, modified, type-changed and copied files, deletes the chunks of deleted ones, both
for a rename), and uncommitted edits wait for their commit. When the last commit is no
longer in the repository (history rewritten) the index starts over from the full tree,
dropping the paths that are gone.

Git runs in the workspace's sandbox through the runtime (`git ls-tree`, `git diff`,
`git cat-file --batch`), with the output read as bytes, so sizes are exact and files that
are not UTF-8 are told apart instead of garbled. Text files only: a file is skipped when
it is larger than MAX_FILE_BYTES, empty, binary (a NUL byte in its first 8000 bytes, git's
own test), not UTF-8, a symlink or a submodule, lies under a vendored or generated
directory (node_modules, vendor, dist, ...), or is a lock file or minified bundle.

Progress (files done of files to do) and status (pending -> indexing -> ready or failed,
with a readable error) are written to the source as it goes, so the page can show them.
Chunks go through services.chunks_put, which keeps them in PostgreSQL first: when Chroma
is unreachable the index still completes, and the periodic knowledge.index_pending sends
the chunks later under the same keys (no duplicates). Safe to run twice: one run per
source at a time (a PostgreSQL advisory lock), and putting an unchanged file changes nothing.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from django.db import connection, transaction
from django.utils import timezone

from apps.core.errors import Conflict, Invalid, NotFound, ServiceError
from apps.knowledge import services
from apps.knowledge.models import KnowledgeChunk, KnowledgeSource
from apps.tenancy.audit import Actor, audit_record
from apps.tenancy.models import Organization
from apps.workspaces.models import Workspace
from apps.workspaces.runtime import runtime_client, runtime_errors, tenant
from apps.workspaces.services import reconciling
from apps.workspaces.validation import validate_path

logger = logging.getLogger(__name__)

Status = KnowledgeSource.Status

MAX_FILE_BYTES: Final = 512 * 1024
# One `git cat-file --batch` reads at most this much (and this many files): well inside the
# runtime's largest exec output, and progress moves every batch.
BATCH_BYTES: Final = 4 * 1024 * 1024
BATCH_FILES: Final = 200
LISTING_MAX_BYTES: Final = 16 * 1024 * 1024  # the runtime's largest exec output
GIT_TIMEOUT_SECONDS: Final = 300.0
# pg_advisory_lock(namespace, source id): one index run per source at a time.
INDEX_LOCK_NAMESPACE: Final = 0x4B49  # "KI"
PROGRESS_EVERY_SECONDS: Final = 1.0
GIT_ENV: Final = {"GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", "GIT_OPTIONAL_LOCKS": "0"}

SKIPPED_DIRECTORIES: Final = frozenset(
    {
        ".git", "node_modules", "bower_components", "vendor", "third_party", "third-party",
        "dist", "build", "out", "target", "coverage", "htmlcov", "__pycache__", ".venv", "venv",
        "env", ".tox", ".nox", ".mypy_cache", ".ruff_cache", ".pytest_cache", "site-packages",
        ".next", ".nuxt", ".cache", ".gradle", ".idea", ".terraform", "Pods",
    }
)  # fmt: skip
SKIPPED_FILES: Final = frozenset(
    {
        "package-lock.json", "yarn.lock", "pnpm-lock.yaml", "npm-shrinkwrap.json", "poetry.lock",
        "Pipfile.lock", "uv.lock", "Cargo.lock", "composer.lock", "Gemfile.lock", "go.sum",
        "mix.lock", "pubspec.lock", "flake.lock", "packages.lock.json",
    }
)  # fmt: skip
SKIPPED_SUFFIXES: Final = (
    ".min.js", ".min.css", ".map", ".lock",
    ".png", ".jpg", ".jpeg", ".gif", ".bmp", ".ico", ".webp", ".tif", ".tiff", ".psd",
    ".pdf", ".zip", ".gz", ".tgz", ".bz2", ".xz", ".zst", ".7z", ".rar", ".tar", ".jar", ".war",
    ".whl", ".egg", ".so", ".dylib", ".dll", ".exe", ".bin", ".o", ".a", ".class", ".pyc", ".pyo",
    ".woff", ".woff2", ".ttf", ".otf", ".eot", ".mp3", ".mp4", ".wav", ".ogg", ".webm", ".mov",
    ".avi", ".sqlite", ".sqlite3", ".db", ".parquet", ".npy", ".npz", ".pt", ".onnx",
    ".safetensors", ".gguf", ".pkl", ".pickle", ".ipynb",
)  # fmt: skip
SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
# What git says when HEAD names no commit yet (a fresh `git init`).
NO_COMMITS = re.compile(
    r"unknown revision|ambiguous argument 'HEAD'|Not a valid object name HEAD|Needed a single revision"
)


# --- git's output, parsed -------------------------------------------------------------------------


@dataclass(frozen=True)
class TreeEntry:
    """One entry of `git ls-tree -r -l -z HEAD`."""

    path: str
    mode: str
    kind: str  # blob, commit (a submodule), tree
    blob: str
    size: int  # -1 when git gives none


def parse_ls_tree(output: bytes) -> dict[str, TreeEntry]:
    """`<mode> SP <type> SP <object> SP+ <size> TAB <path>` records, NUL-terminated."""
    entries: dict[str, TreeEntry] = {}
    for record in output.split(b"\0"):
        if not record:
            continue
        meta, tab, raw_path = record.partition(b"\t")
        fields = meta.split()
        if not tab or len(fields) != 4:
            raise ValueError(f"unexpected git ls-tree record: {record[:200]!r}")
        mode, kind, blob, size = (value.decode("ascii") for value in fields)
        path = raw_path.decode("utf-8", errors="surrogateescape")
        entries[path] = TreeEntry(path, mode, kind, blob, int(size) if size.isdigit() else -1)
    return entries


@dataclass(frozen=True)
class Change:
    """One change of `git diff --name-status -z`: status letter, path, and the old path of
    a rename or copy."""

    status: str  # A, C, D, M, R, T (U and X do not occur between two commits)
    path: str
    old_path: str = ""


def parse_name_status(output: bytes) -> list[Change]:
    """`git diff --name-status -z -M`: `X\\0path\\0`, or `R086\\0old\\0new\\0` for renames and copies."""
    fields = [value.decode("utf-8", errors="surrogateescape") for value in output.split(b"\0")]
    if fields and fields[-1] == "":
        fields.pop()
    changes: list[Change] = []
    index = 0
    while index < len(fields):
        status = fields[index][:1]
        if not status:
            raise ValueError(f"unexpected git diff record at field {index}: {fields[index : index + 3]!r}")
        if status in {"R", "C"}:
            if index + 2 >= len(fields):
                raise ValueError("a rename in git diff's output without both paths")
            changes.append(Change(status, fields[index + 2], fields[index + 1]))
            index += 3
        else:
            if index + 1 >= len(fields):
                raise ValueError("a change in git diff's output without a path")
            changes.append(Change(status, fields[index + 1]))
            index += 2
    return changes


def parse_cat_file_batch(output: bytes) -> dict[str, bytes]:
    """`git cat-file --batch`: `<object> SP <type> SP <size> LF <contents> LF` per object,
    or `<object> SP missing LF`. Sizes are bytes, so contents are read exactly."""
    objects: dict[str, bytes] = {}
    position = 0
    while position < len(output):
        end = output.index(b"\n", position)
        header = output[position:end].decode("ascii", errors="replace").split()
        position = end + 1
        if len(header) == 2 and header[1] in {"missing", "ambiguous"}:
            continue
        if len(header) != 3 or not header[2].isdigit():
            raise ValueError(f"unexpected git cat-file header: {header!r}")
        size = int(header[2])
        if position + size > len(output):
            raise ValueError("git cat-file's output ends inside an object (cut short)")
        objects[header[0]] = output[position : position + size]
        position += size + 1  # and its LF
    return objects


# --- what is indexed ------------------------------------------------------------------------------


def skip_reason(entry: TreeEntry) -> str | None:
    """Why this tree entry is not indexed, before reading it; None when it may be."""
    if entry.kind != "blob":
        return "a submodule" if entry.kind == "commit" else "not a file"
    if entry.mode == "120000":
        return "a symlink"
    parts = entry.path.split("/")
    if any(part in SKIPPED_DIRECTORIES for part in parts[:-1]):
        return "in a vendored or generated directory"
    name = parts[-1].lower()
    if parts[-1] in SKIPPED_FILES or name.endswith(SKIPPED_SUFFIXES):
        return "a lock file, bundle or binary format"
    if entry.size == 0:
        return "empty"
    if entry.size > MAX_FILE_BYTES:
        return f"larger than {MAX_FILE_BYTES // 1024} KB"
    return None


def text_of(data: bytes) -> str | None:
    """The file's text, or None when it is binary (git's test: a NUL in the first 8000
    bytes) or not UTF-8."""
    if b"\0" in data[:8000]:
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    return text.replace("\r\n", "\n")


@dataclass
class IndexPlan:
    head: str
    puts: list[TreeEntry] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    full: bool = False
    skipped: dict[str, str] = field(default_factory=dict)  # path -> why

    @property
    def total(self) -> int:
        return len(self.puts) + len(self.deletes)


def plan_full(*, head: str, tree: dict[str, TreeEntry], indexed_paths: set[str]) -> IndexPlan:
    """Every eligible file of the tree; the chunks of paths no longer eligible are deleted."""
    plan = IndexPlan(head=head, full=True)
    for path in sorted(tree):
        reason = skip_reason(tree[path])
        if reason:
            plan.skipped[path] = reason
        else:
            plan.puts.append(tree[path])
    eligible = {entry.path for entry in plan.puts}
    plan.deletes = sorted(indexed_paths - eligible)
    return plan


def plan_incremental(*, head: str, tree: dict[str, TreeEntry], changes: list[Change]) -> IndexPlan:
    """Only what changed: put what was added or changed (and is eligible), delete what was
    deleted, renamed away, or is no longer eligible."""
    plan = IndexPlan(head=head)
    puts: dict[str, TreeEntry] = {}
    deletes: set[str] = set()
    for change in changes:
        if change.status == "R":
            deletes.add(change.old_path)
        if change.status == "D":
            deletes.add(change.path)
            continue
        entry = tree.get(change.path)
        reason = skip_reason(entry) if entry is not None else "not in HEAD"
        if entry is None or reason:
            plan.skipped[change.path] = reason or "not in HEAD"
            deletes.add(change.path)  # e.g. it grew past the limit: its old chunks must go
        else:
            puts[change.path] = entry
    plan.puts = [puts[path] for path in sorted(puts)]
    plan.deletes = sorted(deletes - set(puts))
    return plan


# --- git in the workspace -------------------------------------------------------------------------


@dataclass(frozen=True)
class GitResult:
    exit_code: int
    stdout: bytes
    stderr: str


def require_running(workspace: Workspace | None) -> Workspace:
    """The workspace whose repository is read: it must exist and run (git runs in its sandbox)."""
    if workspace is None:
        raise Conflict(
            "The workspace of this repository was removed, so it cannot be indexed again;"
            " its chunks stay until you delete the source.",
            code="workspace_missing",
        )
    if workspace.state == Workspace.State.DELETED:
        raise Conflict(f"The workspace {workspace.name} was destroyed.", code="workspace_deleted")
    if workspace.state != Workspace.State.RUNNING:
        raise Conflict(
            f"The workspace {workspace.name} is {workspace.get_state_display().lower()}; start it, then index"
            " its repository.",
            code="workspace_not_running",
        )
    return workspace


def _tail(text: str, lines: int = 4) -> str:
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " ".join(kept[-lines:])[:600]


def run_git(
    workspace: Workspace,
    args: list[str],
    *,
    cwd: str,
    stdin: bytes = b"",
    max_output: int = LISTING_MAX_BYTES,
    check: bool = True,
) -> GitResult:
    """git in the workspace's sandbox, its output as bytes. With `check`, a failure is a
    ServiceError whose message says what git said."""
    what = args[0]
    with (
        runtime_errors(path_field="path", missing="No such directory in the workspace."),
        reconciling(workspace),
    ):
        result = runtime_client().exec(
            tenant(),
            workspace.sandbox_id,
            argv=["git", *args],
            cwd=cwd,
            env=dict(GIT_ENV),
            timeout=GIT_TIMEOUT_SECONDS,
            max_output_bytes=max_output,
            stdin=stdin,
        )
    stderr = result.stderr.decode("utf-8", errors="replace")
    if result.timed_out:
        raise Conflict(
            f"git {what} took longer than {GIT_TIMEOUT_SECONDS:g} seconds and was stopped.",
            code="git_timeout",
        )
    if result.stdout_truncated:
        raise Conflict(
            f"git {what} printed more than {max_output // (1024 * 1024)} MiB; the repository is too large"
            " to index in one piece.",
            code="repository_too_large",
        )
    if check and result.exit_code != 0:
        message = _tail(stderr) or f"exit code {result.exit_code}"
        if "not a git repository" in message:
            where = f"{cwd}/" if cwd else "The workspace's top folder (/workspace)"
            raise Invalid(f"{where} is not a git repository.", code="not_a_repository", field="path")
        if NO_COMMITS.search(message):
            raise Conflict(
                "The repository has no commits yet; commit something, then index it.", code="no_commits"
            )
        raise Invalid(f"git {what} failed: {message}", code="git_failed")
    return GitResult(result.exit_code, result.stdout, stderr)


def read_head(workspace: Workspace, path: str) -> str:
    head = run_git(workspace, ["rev-parse", "--verify", "HEAD^{commit}"], cwd=path).stdout.decode().strip()
    if not SHA.match(head):
        raise Invalid(f"git rev-parse gave no commit for HEAD ({head[:80]!r}).", code="git_failed")
    return head


def read_tree(workspace: Workspace, path: str, commit: str) -> dict[str, TreeEntry]:
    """The files of `commit` under `path` (the repository's folder in the workspace), by path
    relative to it."""
    output = run_git(workspace, ["ls-tree", "-r", "-l", "-z", commit], cwd=path).stdout
    return parse_ls_tree(output)


def read_changes(workspace: Workspace, path: str, since: str, head: str) -> list[Change] | None:
    """What changed from `since` to `head` under `path`; None when `since` is not in the
    repository any more (history rewritten, or another repository now in its place)."""
    known = run_git(workspace, ["cat-file", "-e", f"{since}^{{commit}}"], cwd=path, check=False)
    if known.exit_code != 0:
        return None
    output = run_git(
        workspace,
        ["diff", "--name-status", "-z", "-M", "--relative", "--no-ext-diff", since, head, "--"],
        cwd=path,
    ).stdout
    return parse_name_status(output)


def read_blobs(workspace: Workspace, path: str, entries: list[TreeEntry]) -> dict[str, bytes]:
    """The contents of these files (by blob id), in one `git cat-file --batch`."""
    wanted = "".join(f"{entry.blob}\n" for entry in entries).encode("ascii")
    size = sum(max(entry.size, 0) + 100 for entry in entries)
    output = run_git(
        workspace,
        ["cat-file", "--batch"],
        cwd=path,
        stdin=wanted,
        max_output=min(LISTING_MAX_BYTES, size + 4096),
    ).stdout
    return parse_cat_file_batch(output)


def batches(entries: list[TreeEntry]) -> Iterator[list[TreeEntry]]:
    batch: list[TreeEntry] = []
    size = 0
    for entry in entries:
        if batch and (size + entry.size > BATCH_BYTES or len(batch) >= BATCH_FILES):
            yield batch
            batch, size = [], 0
        batch.append(entry)
        size += max(entry.size, 0)
    if batch:
        yield batch


# --- the index run ----------------------------------------------------------------------------------


class _Cancelled(Exception):
    """The source was deleted (or is being deleted) while it was indexed."""


@dataclass(frozen=True)
class IndexOutcome:
    source_id: int
    status: str
    head: str = ""
    full: bool = False
    files_put: int = 0
    files_deleted: int = 0
    chunks_added: int = 0
    chunks_unchanged: int = 0
    chunks_superseded: int = 0
    skipped: int = 0
    error: str = ""


def _source_update(source_id: int, **values: object) -> None:
    """Written at once (outside any transaction of the run), so the page sees it as it goes;
    a source deleted meanwhile stops the run."""
    updated = (
        KnowledgeSource.objects.filter(pk=source_id)
        .exclude(status=Status.DELETING)
        .update(updated_at=timezone.now(), **values)
    )
    if not updated:
        raise _Cancelled


def _try_lock(source_id: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [INDEX_LOCK_NAMESPACE, source_id])
        return bool(cursor.fetchone()[0])


def _unlock(source_id: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [INDEX_LOCK_NAMESPACE, source_id])


def _indexed_paths(source: KnowledgeSource) -> set[str]:
    return set(
        KnowledgeChunk.objects.filter(source=source, superseded_at__isnull=True)
        .values_list("path", flat=True)
        .distinct()
    )


def repository_index(*, source_id: int) -> IndexOutcome:
    """Index (or bring up to date) one repository source of the current organization; what
    the Celery task runs. Never raises for what a person can fix: the source ends `failed`
    with the reason in `error`. Another run of the same source already going: returns at once."""
    source = KnowledgeSource.objects.filter(pk=source_id).select_related("workspace").first()
    if source is None or source.status == Status.DELETING:
        return IndexOutcome(source_id=source_id, status="gone")
    if source.kind != KnowledgeSource.Kind.REPOSITORY:
        return IndexOutcome(source_id=source_id, status=source.status, error="not a repository")
    if not _try_lock(source_id):
        return IndexOutcome(source_id=source_id, status="busy")
    try:
        return _index_locked(source)
    finally:
        _unlock(source_id)


def _index_locked(source: KnowledgeSource) -> IndexOutcome:
    try:
        _source_update(source.pk, status=Status.INDEXING, error="", progress_done=0, progress_total=0)
        return _index(source)
    except _Cancelled:
        logger.info("Knowledge source %s was deleted while it was indexed; stopped", source.pk)
        return IndexOutcome(source_id=source.pk, status="gone")
    except ServiceError as exc:
        return _failed(source, exc.message)
    except Exception as exc:
        logger.exception("Indexing knowledge source %s of %s failed", source.pk, tenant())
        return _failed(source, f"Indexing stopped by an unexpected error ({type(exc).__name__}: {exc}).")


def _failed(source: KnowledgeSource, message: str) -> IndexOutcome:
    try:
        _source_update(source.pk, status=Status.FAILED, error=message[:2000])
    except _Cancelled:
        return IndexOutcome(source_id=source.pk, status="gone")
    return IndexOutcome(source_id=source.pk, status=Status.FAILED, error=message)


def _index(source: KnowledgeSource) -> IndexOutcome:
    from apps.knowledge.chunking import chunk_file

    workspace = require_running(source.workspace)
    path = source.uri
    head = read_head(workspace, path)
    tree = read_tree(workspace, path, head)
    changes = read_changes(workspace, path, source.last_commit, head) if source.last_commit else None
    if changes is None:
        plan = plan_full(head=head, tree=tree, indexed_paths=_indexed_paths(source))
    else:
        plan = plan_incremental(head=head, tree=tree, changes=changes)
    _source_update(source.pk, progress_total=plan.total)

    done = added = unchanged = superseded = files_put = 0
    last_report = time.monotonic()

    def progress(force: bool = False) -> None:
        nonlocal last_report
        if force or time.monotonic() - last_report >= PROGRESS_EVERY_SECONDS:
            _source_update(source.pk, progress_done=done)
            last_report = time.monotonic()

    for deleted in plan.deletes:
        services.path_delete(source=source, path=deleted)
        done += 1
        progress()
    for batch in batches(plan.puts):
        contents = read_blobs(workspace, path, batch)
        for entry in batch:
            text = text_of(contents.get(entry.blob, b""))
            if text is None or not text.strip():
                plan.skipped[entry.path] = "binary, not UTF-8, or blank"
                services.path_delete(source=source, path=entry.path)
            else:
                chunks = chunk_file(entry.path, text, source=f"repository:{source.pk}", commit=head)
                result = services.chunks_put(source=source, path=entry.path, chunks=chunks, commit=head)
                added += result.added
                unchanged += result.unchanged
                superseded += result.superseded
                files_put += 1
            done += 1
        progress()
    progress(force=True)
    _source_update(
        source.pk, status=Status.READY, last_commit=head, indexed_at=timezone.now(), progress_done=plan.total
    )
    logger.info(
        "Indexed repository source %s at %s (%s): %s files put, %s deleted, %s skipped; chunks +%s =%s -%s",
        source.pk, head[:12], "full" if plan.full else "incremental", files_put, len(plan.deletes),
        len(plan.skipped), added, unchanged, superseded,
    )  # fmt: skip
    return IndexOutcome(
        source_id=source.pk,
        status=Status.READY,
        head=head,
        full=plan.full,
        files_put=files_put,
        files_deleted=len(plan.deletes),
        chunks_added=added,
        chunks_unchanged=unchanged,
        chunks_superseded=superseded,
        skipped=len(plan.skipped),
    )


# --- sources of repositories ----------------------------------------------------------------------


def index_queue(source: KnowledgeSource) -> None:
    """Index it in the worker once the current transaction commits (in the current schema)."""
    from apps.knowledge.tasks import index_source_task

    source_id = source.pk
    transaction.on_commit(lambda: index_source_task.delay(source_id))


def repository_source_create(
    *, organization: Organization, actor: Actor, workspace: Workspace, path: str = "", name: str = ""
) -> KnowledgeSource:
    """A source for the git repository at `path` of the workspace (its top folder by
    default), pending, and its first index queued. The workspace must be running (git runs
    in it); one source per repository folder of a workspace."""
    path = validate_path(path, field="path")
    require_running(workspace)
    with transaction.atomic():
        existing = KnowledgeSource.objects.filter(
            kind=KnowledgeSource.Kind.REPOSITORY, workspace=workspace, uri=path
        ).first()
        if existing is not None:
            raise Conflict(
                f"This repository is already a knowledge source ({existing.name}, id {existing.pk});"
                " index it again instead.",
                code="source_exists",
                field="workspace_id",
            )
        source = services.source_create(
            organization=organization,
            kind=KnowledgeSource.Kind.REPOSITORY,
            name=(name or "").strip() or (f"{workspace.name}/{path}" if path else workspace.name),
            workspace=workspace,
            uri=path,
            actor=actor,
        )
        index_queue(source)
    return source


def source_reindex(*, organization: Organization, actor: Actor, source: KnowledgeSource) -> KnowledgeSource:
    """Bring a repository source up to date with its HEAD (queued; only what changed since
    its last indexed commit is read again). Documents are replaced by uploading them again."""
    services.check_organization(organization)
    if source.kind != KnowledgeSource.Kind.REPOSITORY:
        raise Conflict(
            f"Only repositories are indexed again; upload the {source.get_kind_display().lower()} again"
            " to replace it.",
            code="not_reindexable",
        )
    require_running(source.workspace)
    with transaction.atomic():
        locked = KnowledgeSource.objects.select_for_update().filter(pk=source.pk).first()
        if locked is None:
            raise NotFound("No such knowledge source.")
        if locked.status != Status.INDEXING:
            locked.status, locked.error = Status.PENDING, ""
            locked.save(update_fields=["status", "error", "updated_at"])
        audit_record(
            actor=actor,
            organization=organization,
            action="knowledge.source_reindexed",
            target=locked,
            after={"last_commit": locked.last_commit},
        )
        index_queue(locked)
    return locked
