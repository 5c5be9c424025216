"""A sandbox's disk quota: its workspace is a file system of its own.

When the runtime is root and the host can make loop devices, each sandbox gets a
sparse ext4 image of its disk size (`disk.img` beside the workspace), created by
create() and loop-mounted (nosuid, nodev) on the workspace directory until
destroy(). Writing past the quota fails with ENOSPC inside the sandbox and never
touches the rest of the host's disk; the image only takes the host space its
files use, up to the quota. After a runtime restart the image is mounted again on
demand. disk_used() is one statvfs() of that mount.

Otherwise the workspace is a plain directory: the quota is not enforced (the
backend still sets RLIMIT_FSIZE, which caps each file, not the total) and
capabilities() says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from pathlib import Path

# ext4 needs some room for its own metadata; smaller quotas are raised to this.
MIN_IMAGE_BYTES = 16 * 1024 * 1024
MOUNT_OPTIONS = "loop,nosuid,nodev,noatime"


class DiskError(Exception):
    pass


async def _run(*argv: str) -> None:
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    if process.returncode != 0:
        message = output.decode(errors="replace").strip() or f"exit status {process.returncode}"
        raise DiskError(f"{argv[0]} failed: {message}")


def loop_quota_supported() -> bool:
    """Root, the tools, and a loop control device: the loop-ext4 quota can work here."""
    if os.geteuid() != 0:
        return False
    if not all(shutil.which(tool) for tool in ("mkfs.ext4", "mount", "umount", "losetup")):
        return False
    return Path("/dev/loop-control").exists()


def is_mounted(path: Path) -> bool:
    return os.path.ismount(path)


async def create_image(image: Path, size: int, owner: tuple[int, int]) -> None:
    """A sparse ext4 image of `size` bytes whose root directory belongs to `owner`."""
    size = max(size, MIN_IMAGE_BYTES)
    partial = image.with_name(image.name + ".partial")
    with partial.open("wb") as handle:
        handle.truncate(size)
    try:
        await _run(
            "mkfs.ext4",
            "-q",
            "-F",
            "-m",
            "0",
            "-O",
            "^has_journal",
            "-E",
            f"root_owner={owner[0]}:{owner[1]},lazy_itable_init=1,nodiscard",
            str(partial),
        )
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.rename(image)


async def mount_image(image: Path, mountpoint: Path) -> None:
    """Loop-mount the image on `mountpoint` (made if missing), unless it is mounted already."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    if is_mounted(mountpoint):
        return
    await _run("mount", "-o", MOUNT_OPTIONS, str(image), str(mountpoint))
    lost_found = mountpoint / "lost+found"
    # mkfs makes it for fsck; the workspace should look empty. rmdir fails harmlessly
    # when fsck has put files in it.
    if lost_found.is_dir():
        with contextlib.suppress(OSError):
            lost_found.rmdir()


async def unmount(mountpoint: Path) -> None:
    """Unmount the workspace; lazily when something still holds it. The loop device
    goes with it (mount's autoclear)."""
    if not is_mounted(mountpoint):
        return
    try:
        await _run("umount", str(mountpoint))
    except DiskError:
        await _run("umount", "-l", str(mountpoint))


def used_bytes(mountpoint: Path) -> int:
    """Bytes in use on the workspace's own file system."""
    stat = os.statvfs(mountpoint)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize
