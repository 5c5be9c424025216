"""Resource limits of a sandbox: cgroups where the host lets us, rlimits otherwise.

With a writable cgroup hierarchy each running sandbox gets its own cgroup
(`agentyard/<tenant>.<sandbox>`) holding every one of its processes:

- v1 (separate cpu, memory and pids hierarchies): cpu.cfs_quota_us over a
  100 ms period, memory.limit_in_bytes (and memory.memsw.limit_in_bytes when swap
  accounting exists, so swap is no way around the limit), pids.max;
- v2 (cgroup.controllers at the root): cpu.max, memory.max, memory.swap.max=0,
  pids.max, and cgroup.kill to stop everything at once.

The sandbox's first process joins the cgroup before it execs bubblewrap (the
backend runs a tiny `sh` that writes its own pid into cgroup.procs, then execs),
so nothing of the sandbox ever runs outside it, and stop() can kill by cgroup and
then check that it is empty. The memory cgroup's OOM-kill counter tells a
command killed by the limit from one killed otherwise.

Without writable cgroups (an unprivileged runtime) the limits fall back to
rlimits set with prlimit(1) on the sandbox's first process and inherited by all:
RLIMIT_NPROC (counted per host user, so shared by every sandbox of that user),
RLIMIT_AS (per process address space, a crude memory cap) and RLIMIT_FSIZE (per
file). There is then no CPU quota; capabilities() says which mode is in effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import resource
import signal
import time
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PARENT = "agentyard"
CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class Limits:
    cpus: float
    memory_bytes: int
    pids: int
    disk_bytes: int


class CgroupError(Exception):
    pass


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as error:
        raise CgroupError(f"cannot write {value!r} to {path}: {error.strerror}") from error


class Cgroup:
    """One sandbox's cgroup (a directory per hierarchy on v1, one on v2)."""

    def __init__(self, version: str, dirs: dict[str, Path]) -> None:
        self.version = version
        self.dirs = dirs  # controller name ("unified" on v2) -> directory

    @property
    def procs_files(self) -> list[Path]:
        return [path / "cgroup.procs" for path in self.dirs.values()]

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in self.procs_files:
            with contextlib.suppress(OSError):
                found.update(int(line) for line in path.read_text().split())
        return found

    def oom_kills(self) -> int:
        """How many processes the memory limit has killed in this cgroup so far."""
        memory = self.dirs.get("memory") or self.dirs.get("unified")
        if memory is None:
            return 0
        name = "memory.oom_control" if self.version == "v1" else "memory.events"
        try:
            text = (memory / name).read_text()
        except OSError:
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def memory_peak(self) -> int:
        memory = self.dirs.get("memory") or self.dirs.get("unified")
        name = "memory.max_usage_in_bytes" if self.version == "v1" else "memory.peak"
        try:
            return int((memory / name).read_text()) if memory else 0
        except (OSError, ValueError):
            return 0

    async def kill_all(self, timeout: float = 10.0) -> None:
        """SIGKILL every process in the cgroup until none is left; CgroupError if some survive."""
        unified = self.dirs.get("unified")
        if unified is not None and (unified / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                (unified / "cgroup.kill").write_text("1")
        deadline = time.monotonic() + timeout
        while True:
            pids = self.pids()
            if not pids:
                return
            if time.monotonic() > deadline:
                raise CgroupError(f"processes {sorted(pids)} survived SIGKILL in {self.dirs}")
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(0.005)

    async def remove(self) -> None:
        """Kill what is left and delete the cgroup directories."""
        await self.kill_all()
        for path in self.dirs.values():
            for _attempt in range(200):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as error:
                    # EBUSY for a moment while the last killed processes are released
                    if error.errno != errno.EBUSY:
                        raise CgroupError(f"cannot remove {path}: {error.strerror}") from error
                    await asyncio.sleep(0.005)


class CgroupDriver:
    """Creates sandbox cgroups in one host's hierarchy."""

    def __init__(self, version: str, root: Path) -> None:
        self.version = version
        self.root = root

    def create(self, key: str, limits: Limits) -> Cgroup:
        """A fresh cgroup for `key` with `limits`; an old one of that name is reused."""
        if self.version == "v1":
            dirs = {name: self.root / name / PARENT / key for name in ("cpu", "memory", "pids")}
        else:
            dirs = {"unified": self.root / PARENT / key}
        try:
            for path in dirs.values():
                path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CgroupError(f"cannot create the cgroup {key}: {error.strerror}") from error
        cgroup = Cgroup(self.version, dirs)
        quota = max(1000, int(limits.cpus * CPU_PERIOD_US))
        if self.version == "v1":
            _write(dirs["cpu"] / "cpu.cfs_period_us", str(CPU_PERIOD_US))
            _write(dirs["cpu"] / "cpu.cfs_quota_us", str(quota))
            memory = dirs["memory"]
            # memsw must stay >= the memory limit at every step, so order the writes.
            memsw = memory / "memory.memsw.limit_in_bytes"
            if memsw.exists():
                _write(memsw, "-1")
            _write(memory / "memory.limit_in_bytes", str(limits.memory_bytes))
            if memsw.exists():
                _write(memsw, str(limits.memory_bytes))
            _write(dirs["pids"] / "pids.max", str(limits.pids))
        else:
            unified = dirs["unified"]
            _write(unified / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            _write(unified / "memory.max", str(limits.memory_bytes))
            if (unified / "memory.swap.max").exists():
                _write(unified / "memory.swap.max", "0")
            _write(unified / "pids.max", str(limits.pids))
        return cgroup

    def existing(self, key: str) -> Cgroup | None:
        """The cgroup of `key` left from an earlier run of the runtime, if any."""
        if self.version == "v1":
            dirs = {name: self.root / name / PARENT / key for name in ("cpu", "memory", "pids")}
        else:
            dirs = {"unified": self.root / PARENT / key}
        present = {name: path for name, path in dirs.items() if path.is_dir()}
        return Cgroup(self.version, present) if present else None


def detect_cgroups(root: Path = CGROUP_ROOT) -> CgroupDriver | None:
    """The writable cgroup hierarchy of this host, or None (then use prlimit_argv)."""
    if (root / "cgroup.controllers").exists():
        try:
            available = set((root / "cgroup.controllers").read_text().split())
            if not {"cpu", "memory", "pids"} <= available:
                return None
            parent = root / PARENT
            parent.mkdir(exist_ok=True)
            if not os.access(parent, os.W_OK):
                return None
            for path in (root, parent):
                enabled = set((path / "cgroup.subtree_control").read_text().split())
                missing = {"cpu", "memory", "pids"} - enabled
                if missing:
                    (path / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in sorted(missing)))
        except OSError:
            return None
        return CgroupDriver("v2", root)
    try:
        for controller in ("cpu", "memory", "pids"):
            if not (root / controller / "cgroup.procs").exists():
                return None
            (root / controller / PARENT).mkdir(exist_ok=True)
            if not os.access(root / controller / PARENT, os.W_OK):
                return None
        use_hierarchy = root / "memory" / PARENT / "memory.use_hierarchy"
        if use_hierarchy.exists() and use_hierarchy.read_text().strip() != "1":
            with contextlib.suppress(OSError):
                use_hierarchy.write_text("1")
    except OSError:
        return None
    return CgroupDriver("v1", root)


def prlimit_argv(limits: Limits) -> list[str]:
    """The prefix that applies the rlimit fallback to a command.

    RLIMIT_NPROC counts every process of the host user, so the sandbox's share is
    added to what that user runs already; each value stays within the hard limit
    the runtime itself has (raising it needs privileges)."""
    wanted = {
        "nproc": (resource.RLIMIT_NPROC, limits.pids + _processes_of(os.getuid())),
        "as": (resource.RLIMIT_AS, limits.memory_bytes),
        "fsize": (resource.RLIMIT_FSIZE, limits.disk_bytes),
    }
    argv = ["prlimit"]
    for name, (which, value) in wanted.items():
        hard = resource.getrlimit(which)[1]
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        argv.append(f"--{name}={value}")
    return [*argv, "--"]


def _processes_of(uid: int) -> int:
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid:
                    count += 1
    return count
