"""Reads: workspaces of the current organization (its schema), and their files."""

from dataclasses import dataclass

from django.db.models import QuerySet

from apps.core.errors import NotFound
from apps.workspaces.models import Secret, Workspace
from apps.workspaces.runtime import runtime_client, runtime_errors, tenant
from apps.workspaces.services import reconciling, require_files
from apps.workspaces.validation import validate_path
from runtime.client import FileEntry, InvalidRequest, SandboxInfo, SandboxNotFound

# What a read of a file returns at most (the API and the file viewer); larger files are cut.
READ_LIMIT_BYTES = 1024 * 1024


def workspaces_list(*, include_deleted: bool = False) -> QuerySet[Workspace]:
    workspaces = Workspace.objects.all()
    return workspaces if include_deleted else workspaces.exclude(state=Workspace.State.DELETED)


def workspace_get(*, workspace_id: int) -> Workspace:
    """A workspace of the current organization; another's ids find nothing (its own schema)."""
    workspace = Workspace.objects.filter(pk=workspace_id).first()
    if workspace is None:
        raise NotFound("No such workspace.")
    return workspace


def workspace_sandbox_info(*, workspace: Workspace) -> SandboxInfo | None:
    """What the runtime says of its sandbox, or None when it has none."""
    with runtime_errors():
        try:
            return runtime_client().get_sandbox(tenant(), workspace.sandbox_id)
        except SandboxNotFound:
            return None


@dataclass(frozen=True)
class PathContent:
    entry: FileEntry
    entries: list[FileEntry] | None = None  # a directory's, sorted: directories first
    data: bytes | None = None  # a file's, at most READ_LIMIT_BYTES
    truncated: bool = False


def workspace_path_read(*, workspace: Workspace, path: str, limit: int = READ_LIMIT_BYTES) -> PathContent:
    """A directory's entries or a file's content (the first `limit` bytes)."""
    require_files(workspace)
    path = validate_path(path)
    client = runtime_client()
    with runtime_errors(path_field="path"), reconciling(workspace):
        if path:
            entry = client.stat(tenant(), workspace.sandbox_id, path)
        else:
            entry = FileEntry(path="", name="", kind="dir", size=0, modified_at=0.0, mode=0o755)
        if entry.kind == "dir":
            entries = client.list_dir(tenant(), workspace.sandbox_id, path)
            entries.sort(key=lambda item: (item.kind != "dir", item.name.lower()))
            return PathContent(entry=entry, entries=entries)
        if entry.kind == "symlink":
            # Followed by the runtime only while it stays inside the workspace (else 400).
            try:
                data = client.read_file(tenant(), workspace.sandbox_id, path, limit=limit + 1)
            except InvalidRequest as not_a_file:
                try:
                    entries = client.list_dir(tenant(), workspace.sandbox_id, path)
                except InvalidRequest:
                    raise not_a_file from None
                entries.sort(key=lambda item: (item.kind != "dir", item.name.lower()))
                return PathContent(entry=entry, entries=entries)
            return PathContent(entry=entry, data=data[:limit], truncated=len(data) > limit)
        if entry.kind != "file":
            return PathContent(entry=entry)
        data = client.read_file(tenant(), workspace.sandbox_id, path, limit=limit + 1)
    return PathContent(entry=entry, data=data[:limit], truncated=len(data) > limit)


def secrets_list() -> QuerySet[Secret]:
    return Secret.objects.all()
