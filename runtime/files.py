"""The files API's work on a workspace directory, safe against what the sandbox puts there.

The runtime runs as root and the sandbox may change its workspace at any moment, so a
path is never resolved by the kernel from the host's root: it is walked one component at
a time from a descriptor of the workspace directory, every directory opened with
O_NOFOLLOW, and every symlink read and resolved by us against the workspace (like
openat2's RESOLVE_BENEATH). A symlink that leads out (an absolute target, or `..`
above the workspace) is refused, whatever the sandbox swaps in between our steps;
a relative symlink that stays inside is followed.

Writes go to a temporary file in the target's directory and are renamed over the
target only once the last chunk has arrived, so a failed upload leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

READ_CHUNK_BYTES = 256 * 1024
MAX_SYMLINK_HOPS = 40
MAX_PATH_LENGTH = 4096
MAX_NAME_BYTES = 255
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class FilesError(Exception):
    """A request the files API refuses; the message names the path."""


class InvalidPath(FilesError):
    """The path leaves the workspace, or is not what the operation needs (INVALID_ARGUMENT)."""


class PathNotFound(FilesError):
    pass


class DiskFull(FilesError):
    pass


@dataclass(frozen=True)
class Entry:
    path: str
    name: str
    kind: str  # "file" | "dir" | "symlink" | "other"
    size: int
    modified_at: float
    mode: int


def split_path(path: str) -> list[str]:
    """The components of a request's path; refuses absolute paths and `..`."""
    if "\x00" in path:
        raise InvalidPath("a path cannot contain a NUL byte")
    if len(path) > MAX_PATH_LENGTH:
        raise InvalidPath(f"the path is longer than {MAX_PATH_LENGTH} characters")
    if path.startswith("/"):
        raise InvalidPath(f"{path!r} is absolute; paths are relative to the workspace")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise InvalidPath(f"{path!r} contains '..'; paths cannot leave the workspace")
    if any(len(part.encode()) > MAX_NAME_BYTES for part in parts):
        raise InvalidPath(f"a name in the path is longer than {MAX_NAME_BYTES} bytes")
    return parts


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def _entry(path: str, name: str, info: os.stat_result) -> Entry:
    return Entry(
        path=path,
        name=name,
        kind=_kind(info.st_mode),
        size=info.st_size,
        modified_at=info.st_mtime,
        mode=stat.S_IMODE(info.st_mode),
    )


def _disk_error(exc: OSError, path: str) -> FilesError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"the workspace's disk is full; {path!r} was not written")
    if exc.errno == errno.ENAMETOOLONG:
        return InvalidPath(f"a name in {path!r} is too long")
    if exc.errno == errno.EROFS:
        return InvalidPath("the workspace is read-only")
    return FilesError(f"{path!r}: {exc.strerror}")


class Workspace:
    """Files of one sandbox's workspace directory; new files and directories get `owner`."""

    def __init__(self, root: Path, owner: tuple[int, int] | None = None) -> None:
        self.root = root
        # Only root may give files away; a runtime run as a plain user leaves them its own.
        self.owner = owner if owner is not None and os.geteuid() == 0 else None

    @contextlib.contextmanager
    def _resolve(
        self, path: str, *, follow_last: bool, make_parents: bool = False
    ) -> Iterator[tuple[int, str]]:
        """(descriptor of the real parent directory, final name) for `path`, both inside the
        workspace; the final name may not exist. "." when the path is a directory itself."""
        todo = split_path(path)
        try:
            root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise PathNotFound("the workspace's directory does not exist") from None
        stack = [root_fd]
        hops = 0
        try:
            while todo:
                name = todo.pop(0)
                if name in ("", "."):
                    continue
                if name == "..":
                    if len(stack) == 1:
                        raise InvalidPath(f"{path!r} leads out of the workspace through a symlink")
                    os.close(stack.pop())
                    continue
                last = not todo
                if last and not follow_last:
                    yield stack[-1], name
                    return
                try:
                    info = os.stat(name, dir_fd=stack[-1], follow_symlinks=False)
                except FileNotFoundError:
                    if last:
                        yield stack[-1], name
                        return
                    if not make_parents:
                        raise PathNotFound(f"{path!r} does not exist") from None
                    self._mkdir(stack[-1], name, path)
                    todo.insert(0, name)
                    continue
                if stat.S_ISLNK(info.st_mode):
                    hops += 1
                    if hops > MAX_SYMLINK_HOPS:
                        raise InvalidPath(f"{path!r} has too many levels of symlinks")
                    try:
                        target = os.readlink(name, dir_fd=stack[-1])
                    except OSError:  # replaced since the stat: look again
                        todo.insert(0, name)
                        continue
                    if target.startswith("/"):
                        raise InvalidPath(f"{path!r} leads out of the workspace through a symlink")
                    todo[:0] = target.split("/")
                    continue
                if last:
                    yield stack[-1], name
                    return
                try:
                    stack.append(os.open(name, DIR_FLAGS, dir_fd=stack[-1]))
                except OSError as exc:
                    if exc.errno == errno.ELOOP:  # became a symlink since the stat: look again
                        todo.insert(0, name)
                        continue
                    if exc.errno == errno.ENOTDIR:
                        raise InvalidPath(f"{path!r}: {name!r} is not a directory") from None
                    if exc.errno == errno.ENOENT:
                        raise PathNotFound(f"{path!r} does not exist") from None
                    raise
            yield stack[-1], "."
        finally:
            for fd in stack:
                os.close(fd)

    def _mkdir(self, dir_fd: int, name: str, path: str) -> None:
        try:
            os.mkdir(name, 0o755, dir_fd=dir_fd)
        except FileExistsError:
            return
        except OSError as exc:
            raise _disk_error(exc, path) from None
        if self.owner is not None:
            os.chown(name, *self.owner, dir_fd=dir_fd, follow_symlinks=False)

    def _open_dir(self, dir_fd: int, name: str, path: str) -> int:
        try:
            return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            raise PathNotFound(f"{path!r} does not exist") from None
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                raise InvalidPath(f"{path!r} is not a directory") from None
            raise

    def stat(self, path: str) -> Entry:
        parts = split_path(path)
        with self._resolve(path, follow_last=False) as (dir_fd, name):
            try:
                info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                raise PathNotFound(f"{path!r} does not exist") from None
        return _entry("/".join(parts), parts[-1] if parts else "", info)

    def list_dir(self, path: str) -> list[Entry]:
        base = "/".join(split_path(path))
        with self._resolve(path, follow_last=True) as (dir_fd, name):
            fd = self._open_dir(dir_fd, name, path)
            try:
                entries = []
                with os.scandir(fd) as listing:
                    for item in listing:
                        try:
                            info = item.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue
                        entries.append(_entry(f"{base}/{item.name}" if base else item.name, item.name, info))
            finally:
                os.close(fd)
        return sorted(entries, key=lambda entry: entry.name)

    def require_dir(self, path: str) -> None:
        """Refuses a path that is not a directory inside the workspace (an exec's cwd)."""
        with self._resolve(path, follow_last=True) as (dir_fd, name):
            os.close(self._open_dir(dir_fd, name, path))

    def open_read(self, path: str) -> tuple[int, int]:
        """(descriptor, size) of a regular file; the caller closes the descriptor."""
        with self._resolve(path, follow_last=True) as (dir_fd, name):
            if name == ".":
                raise InvalidPath(f"{path or '.'!r} is a directory")
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
            except FileNotFoundError:
                raise PathNotFound(f"{path!r} does not exist") from None
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise InvalidPath(f"{path!r} changed while it was opened; try again") from None
                raise
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise InvalidPath(f"{path!r} is {'a directory' if stat.S_ISDIR(info.st_mode) else 'not a file'}")
        return fd, info.st_size

    def begin_write(self, path: str, *, mode: int = 0o644, make_parents: bool = False) -> PendingWrite:
        parts = split_path(path)
        if not parts:
            raise InvalidPath("the workspace root is a directory; name a file")
        with self._resolve(path, follow_last=True, make_parents=make_parents) as (dir_fd, name):
            if name == ".":
                raise InvalidPath(f"{path!r} is a directory")
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                    raise InvalidPath(f"{path!r} is a directory")
            return PendingWrite(os.dup(dir_fd), name, "/".join(parts), mode, self.owner)

    def delete(self, path: str, *, recursive: bool) -> bool:
        if not split_path(path):
            raise InvalidPath("the workspace root cannot be deleted")
        with self._resolve(path, follow_last=False) as (dir_fd, name):
            try:
                info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                return False
            if not stat.S_ISDIR(info.st_mode):
                os.unlink(name, dir_fd=dir_fd)
                return True
            if recursive:
                # rmtree with dir_fd walks by descriptors too (never through a symlink).
                shutil.rmtree(name, dir_fd=dir_fd)
                return True
            try:
                os.rmdir(name, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno == errno.ENOTEMPTY:
                    raise InvalidPath(
                        f"{path!r} is a directory that is not empty; delete it recursively"
                    ) from None
                raise
            return True


class PendingWrite:
    """A file being uploaded: a hidden temporary file beside the target until commit()."""

    def __init__(self, dir_fd: int, name: str, path: str, mode: int, owner: tuple[int, int] | None) -> None:
        self.dir_fd = dir_fd
        self.name = name
        self.path = path
        self.mode = mode
        self.temp_name = f".{name[:200]}.{secrets.token_hex(6)}.upload"
        self.size = 0
        try:
            self.fd: int | None = os.open(
                self.temp_name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=dir_fd,
            )
        except OSError as exc:
            os.close(dir_fd)
            raise _disk_error(exc, path) from None
        if owner is not None:
            os.fchown(self.fd, *owner)

    def write(self, data: bytes) -> None:
        assert self.fd is not None
        view = memoryview(data)
        try:
            while view:
                written = os.write(self.fd, view)
                view = view[written:]
                self.size += written
        except OSError as exc:
            self.abort()
            raise _disk_error(exc, self.path) from None

    def commit(self) -> Entry:
        assert self.fd is not None
        try:
            os.fchmod(self.fd, self.mode)
            os.fsync(self.fd)
            info = os.fstat(self.fd)
            os.close(self.fd)
            self.fd = None
            os.rename(self.temp_name, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        except OSError as exc:
            self.abort()
            if exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise InvalidPath(f"{self.path!r} is a directory") from None
            raise _disk_error(exc, self.path) from None
        os.close(self.dir_fd)
        self.dir_fd = -1
        return _entry(self.path, self.path.rsplit("/", 1)[-1], info)

    def abort(self) -> None:
        """Remove the temporary file; safe to call more than once."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.dir_fd >= 0:
            with contextlib.suppress(OSError):
                os.unlink(self.temp_name, dir_fd=self.dir_fd)
            os.close(self.dir_fd)
            self.dir_fd = -1
