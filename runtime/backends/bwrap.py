"""The default backend: each sandbox is a bubblewrap container on this host.

Isolation model (docs/isolation.md has the whole picture and its limits):

- Namespaces: bwrap --unshare-all gives every sandbox its own user, pid, network,
  ipc, uts, mount and cgroup namespaces; --disable-userns forbids nesting more user
  namespaces inside (the kernel attack surface that unprivileged user namespaces
  open); --new-session keeps the sandbox away from any controlling terminal;
  --die-with-parent ties it to the runtime.
- Users: a runtime running as root first drops to an unprivileged host uid
  (`sandbox_uid`, by default nobody) with setpriv, so bubblewrap never runs with
  privileges and a process that escaped every namespace would still be nobody.
  Inside, processes run as uid/gid 1000 ("sandbox"), mapped to that host uid.
  An unprivileged runtime runs sandboxes as its own user.
- File system: a read-only root built from scratch: the host's /usr (read-only;
  /bin, /lib, /lib64, /sbin are symlinks into it), a read-only /etc holding only a
  curated list of host files (certificates, the dynamic loader's cache, shell
  defaults, ...) plus generated passwd/group/hosts/hostname, a fresh /proc of the
  sandbox's pid namespace and a minimal /dev with its own /dev/pts. Writable are
  only /workspace (the workspace's files, on their own ext4 image when the disk
  quota can be enforced), /tmp and HOME=/home/sandbox (private tmpfs mounts that
  count against the memory limit and vanish on stop). Nothing else of the host's
  /etc, /root, /home, /var, the project or other sandboxes exists inside.
- Network: see runtime/netpolicy.py. An empty allow-list leaves only loopback.
- Limits: runtime/limits.py (cgroups v1/v2, prlimit fallback), runtime/disk.py.
- Processes: the sandbox's init is bwrap's pid 1 with runtime/sandboxd.py under
  it; every exec and terminal is forked by sandboxd in its own session. Stop kills
  bwrap (the pid namespace dies with its init, taking every process in it, however
  it daemonized) and then every process left in the sandbox's cgroup, and checks
  that none remains.

Per sandbox state lives in `root/sandboxes/<tenant>/<sandbox_id>/`: the server's
sandbox.json, `workspace/` and `disk.img`. sandboxd's socket is in `root/run/`,
which only the runtime's user can enter.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import logging
import marshal
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime import disk, limits
from runtime.backends.base import (
    Backend,
    BackendError,
    ExecFinished,
    ExecOutput,
    ExecSpec,
    PtyProcess,
    SandboxConfig,
)
from runtime.netproxy import ProxyServer
from runtime.templates import GID, HOME, UID, USER, WORKSPACE, get_template

logger = logging.getLogger(__name__)

SANDBOXD = Path(__file__).resolve().parent.parent / "sandboxd.py"
SANDBOXD_INSIDE = "/opt/agentyard/sandboxd"
PYTHON_INSIDE = "/opt/agentyard/python"
PROXY_URL = "http://127.0.0.1:3128"
READY_TIMEOUT = 10.0
# Frames from sandboxd are untrusted: anything bigger is a broken or hostile agent.
MAX_FRAME = 1 << 20
CHUNK = 64 * 1024
# How much longer than its own timeout an exec may take before the runtime gives up
# on sandboxd (which kills the command at the timeout itself).
EXEC_GRACE_SECONDS = 5.0

# Host files a sandbox sees in its /etc (read-only), when the host has them.
ETC_FILES = (
    "alternatives",
    "bash.bashrc",
    "ca-certificates",
    "ca-certificates.conf",
    "debian_version",
    "gai.conf",
    "host.conf",
    "inputrc",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "magic",
    "mime.types",
    "os-release",
    "protocols",
    "python3",
    "python3.11",
    "services",
    "shells",
    "ssl",
    "terminfo",
    "timezone",
)
ETC_NETWORK_FILES = ("resolv.conf",)


def _etc_generated(networked: bool) -> dict[str, str]:
    return {
        "passwd": (
            "root:x:0:0:root:/root:/usr/sbin/nologin\n"
            f"{USER}:x:{UID}:{GID}:{USER}:{HOME}:/bin/bash\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        ),
        "group": f"root:x:0:\n{USER}:x:{GID}:\nnogroup:x:65534:\n",
        "hostname": "sandbox\n",
        "hosts": "127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        "nsswitch.conf": f"passwd: files\ngroup: files\nhosts: files{' dns' if networked else ''}\n",
        # The host's /etc/profile resets PATH; the template's PATH must survive a login shell.
        "profile": (
            'if [ -n "${BASH_VERSION-}" ] && [ "$PS1" ] && [ -r /etc/bash.bashrc ]; then\n'
            "  . /etc/bash.bashrc\n"
            "fi\n"
        ),
    }


def _frame(kind: bytes, payload: bytes = b"") -> bytes:
    return kind + len(payload).to_bytes(4, "big") + payload


async def _read_frame(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """The next frame from sandboxd, or None at the end of the connection."""
    try:
        header = await reader.readexactly(5)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    size = int.from_bytes(header[1:], "big")
    if size > MAX_FRAME:
        raise BackendError("the sandbox's agent sent a malformed reply")
    try:
        return header[:1], await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


def _parse_exit(payload: bytes) -> tuple[int, bool]:
    if len(payload) != 5:
        raise BackendError("the sandbox's agent sent a malformed reply")
    return int.from_bytes(payload[:4], "big", signed=True), payload[4] == 1


@dataclass
class _Running:
    process: asyncio.subprocess.Process
    socket_path: Path
    control: socket.socket
    cgroup: limits.Cgroup | None
    proxy: ProxyServer | None
    env: dict[str, str]
    shell: tuple[str, ...]
    output_tail: bytearray = field(default_factory=bytearray)
    watcher: asyncio.Task[None] | None = None


class BwrapBackend(Backend):
    name = "bwrap"

    def __init__(self, root: Path, *, sandbox_uid: int = 65534) -> None:
        self.root = Path(root)
        self.is_root = os.geteuid() == 0
        self.uid = sandbox_uid if self.is_root else os.geteuid()
        self.gid = sandbox_uid if self.is_root else os.getegid()
        for tool in ("bwrap",) + (("setpriv",) if self.is_root else ()):
            if shutil.which(tool) is None:
                raise BackendError(
                    f"the bwrap backend needs {tool} on this host (apt-get install bubblewrap)"
                )
        self.sandboxes = self.root / "sandboxes"
        self.run_dir = self.root / "run"
        self.sandboxes.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(exist_ok=True)
        os.chmod(self.run_dir, 0o700)
        if self.is_root:
            # The unprivileged bwrap must walk down to the workspaces (not list them).
            for path in (self.root, self.sandboxes):
                os.chmod(path, os.stat(path).st_mode | 0o111)  # noqa: S103 (search, not read)
            self._check_traversable(self.root)
        self.cgroups = limits.detect_cgroups()
        # Cgroups are the host's, not this runtime's: two runtimes on one host (a test
        # suite's, a deployment's, one left from a killed process) would otherwise share
        # `alpha.ws-5`, and one stopping its sandbox killed the other's. A runtime's root is
        # its own and survives its restarts, which must find their sandboxes' cgroups.
        self.cgroup_prefix = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:12]
        self.loop_quota = disk.loop_quota_supported()
        self.python, self.python_bind = self._sandbox_python()
        self.sandboxd_program = self._sandboxd_program()
        self._running: dict[str, _Running] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    # -- host facts ------------------------------------------------------------------------------

    @staticmethod
    def _check_traversable(path: Path) -> None:
        for parent in [path, *path.parents]:
            if not os.stat(parent).st_mode & 0o001:
                raise BackendError(
                    f"RUNTIME_ROOT must be reachable by the sandbox user: {parent} is not searchable "
                    "by others (chmod o+x it, or choose another RUNTIME_ROOT)"
                )

    def _sandbox_python(self) -> tuple[str, str | None]:
        """The interpreter for sandboxd: the read-only /usr's, else the runtime's own install
        bound read-only at /opt/agentyard/python."""
        if os.access("/usr/bin/python3", os.X_OK):
            return "/usr/bin/python3", None
        prefix = Path(sys.base_prefix)
        relative = Path(sys.executable).resolve().relative_to(prefix.resolve())
        if self.is_root:
            self._check_traversable(prefix)
        return f"{PYTHON_INSIDE}/{relative}", str(prefix)

    def _sandboxd_program(self) -> bytes:
        """sandboxd as bytecode when the sandbox's Python reads ours: compiling its source
        would cost every cold start about 20 ms on a slow host."""
        source = SANDBOXD.read_bytes()
        try:
            magic = subprocess.run(  # noqa: S603
                [self.python, "-I", "-S", "-c", "import importlib.util as u; print(u.MAGIC_NUMBER.hex())"],
                capture_output=True,
                check=True,
                timeout=30,
                text=True,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            magic = ""
        if magic != importlib.util.MAGIC_NUMBER.hex():
            return source
        code = compile(source, SANDBOXD_INSIDE, "exec", dont_inherit=True, optimize=2)
        # a .pyc: magic, flags (0: timestamp-based), source mtime and size, code
        return importlib.util.MAGIC_NUMBER + bytes(12) + marshal.dumps(code)

    def capabilities(self) -> dict[str, str]:
        return {
            "namespaces": "user,pid,net,ipc,uts,mount,cgroup",
            "cgroups": self.cgroups.version if self.cgroups else "none (prlimit: nproc, as, fsize)",
            "disk_quota": "loop-ext4" if self.loop_quota else "none (RLIMIT_FSIZE per file only)",
            "network": "netns+proxy",
            "user": f"uid {self.uid}",
        }

    # -- paths -----------------------------------------------------------------------------------

    def _dir(self, config: SandboxConfig) -> Path:
        return self.sandboxes / config.tenant / config.sandbox_id

    def _image(self, config: SandboxConfig) -> Path:
        return self._dir(config) / "disk.img"

    def _cgroup_key(self, config: SandboxConfig) -> str:
        return f"{self.cgroup_prefix}.{config.key}"

    def _socket_path(self, config: SandboxConfig) -> Path:
        # unix socket paths are limited to 107 bytes; tenant and id may be long
        digest = hashlib.sha256(config.key.encode()).hexdigest()[:24]
        return self.run_dir / f"{digest}.sock"

    def workspace_dir(self, config: SandboxConfig) -> Path:
        path = self._dir(config) / "workspace"
        image = self._image(config)
        # After a reboot or a restart of the runtime the image may be unmounted: mount it
        # before anyone reads or writes there, or the files would land on the host's disk.
        if self.loop_quota and image.exists() and not disk.is_mounted(path):
            path.mkdir(parents=True, exist_ok=True)
            try:
                subprocess.run(  # noqa: S603
                    ["mount", "-o", disk.MOUNT_OPTIONS, str(image), str(path)],  # noqa: S607
                    check=True,
                    capture_output=True,
                )
            except subprocess.CalledProcessError as error:
                raise BackendError(
                    f"cannot mount the workspace's disk: {error.stderr.decode().strip()}"
                ) from None
        return path

    def file_owner(self, config: SandboxConfig) -> tuple[int, int] | None:
        return (self.uid, self.gid) if self.is_root else None

    def disk_used(self, config: SandboxConfig) -> int:
        path = self.workspace_dir(config)
        if disk.is_mounted(path):
            return disk.used_bytes(path)
        return super().disk_used(config)

    def _lock(self, config: SandboxConfig) -> asyncio.Lock:
        return self._locks.setdefault(config.key, asyncio.Lock())

    # -- lifecycle -------------------------------------------------------------------------------

    async def create(self, config: SandboxConfig) -> None:
        async with self._lock(config):
            directory = self._dir(config)
            directory.mkdir(parents=True, exist_ok=True)
            for path in (directory.parent, directory):
                os.chmod(path, 0o711)  # noqa: S103 (search, not read)
            workspace = directory / "workspace"
            if self.loop_quota:
                try:
                    if not self._image(config).exists():
                        await disk.create_image(self._image(config), config.disk_bytes, (self.uid, self.gid))
                    await disk.mount_image(self._image(config), workspace)
                except disk.DiskError as error:
                    raise BackendError(f"cannot make the workspace's disk: {error}") from None
            else:
                workspace.mkdir(exist_ok=True)
                if self.is_root:
                    os.chown(workspace, self.uid, self.gid)

    async def start(self, config: SandboxConfig) -> None:
        async with self._lock(config):
            running = self._running.get(config.key)
            if running is not None:
                if running.process.returncode is None:
                    return
                await self._forget(config.key, running)
            await self._start(config)

    async def _start(self, config: SandboxConfig) -> None:
        template = get_template(config.template)
        workspace = self.workspace_dir(config)
        if not workspace.is_dir():
            raise BackendError("the sandbox has no workspace; create it first")
        sandbox_limits = limits.Limits(
            cpus=config.cpus, memory_bytes=config.memory_bytes, pids=config.pids, disk_bytes=config.disk_bytes
        )
        cgroup = None
        if self.cgroups is not None:
            try:
                stale = self.cgroups.existing(self._cgroup_key(config))
                if stale is not None:
                    await stale.remove()
                cgroup = self.cgroups.create(self._cgroup_key(config), sandbox_limits)
            except limits.CgroupError as error:
                raise BackendError(str(error)) from None
        networked = bool(config.allow)
        socket_path = self._socket_path(config)
        socket_path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        control, control_remote = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        opened: list[int] = []
        try:
            listener.bind(str(socket_path))
            listener.listen(64)
            workspace_fd = os.open(workspace, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
            opened.append(workspace_fd)
            sandboxd_fd = os.memfd_create("sandboxd")
            opened.append(sandboxd_fd)
            os.write(sandboxd_fd, self.sandboxd_program)
            os.lseek(sandboxd_fd, 0, os.SEEK_SET)
            bwrap = [
                "bwrap",
                "--unshare-all",
                "--unshare-user",
                "--disable-userns",
                "--die-with-parent",
                "--new-session",
                "--uid",
                str(UID),
                "--gid",
                str(GID),
                "--hostname",
                "sandbox",
                "--ro-bind",
                "/usr",
                "/usr",
            ]
            for name in ("bin", "lib", "lib32", "lib64", "libx32", "sbin"):
                host = Path("/") / name
                if host.is_symlink():
                    bwrap += ["--symlink", os.readlink(host), f"/{name}"]
                elif host.is_dir():
                    bwrap += ["--ro-bind", str(host), f"/{name}"]
            tmpfs_size = str(max(config.memory_bytes, 16 * 1024 * 1024))
            bwrap += ["--proc", "/proc", "--dev", "/dev"]
            bwrap += ["--size", tmpfs_size, "--tmpfs", "/dev/shm"]  # noqa: S108 (inside)
            bwrap += ["--remount-ro", "/dev"]
            bwrap += ["--perms", "1777", "--size", tmpfs_size, "--tmpfs", "/tmp"]  # noqa: S108 (inside)
            bwrap += ["--dir", "/var", "--symlink", "../tmp", "/var/tmp"]  # noqa: S108 (inside)
            bwrap += ["--perms", "0700", "--size", tmpfs_size, "--tmpfs", HOME]
            bwrap += ["--tmpfs", "/etc"]
            for name in ETC_FILES + (ETC_NETWORK_FILES if networked else ()):
                host = Path("/etc") / name
                if host.exists():
                    bwrap += ["--ro-bind", str(host), str(host)]
            for name, content in _etc_generated(networked).items():
                fd = os.memfd_create(name)
                opened.append(fd)
                os.write(fd, content.encode())
                os.lseek(fd, 0, os.SEEK_SET)
                bwrap += ["--perms", "0644", "--ro-bind-data", str(fd), f"/etc/{name}"]
            bwrap += ["--remount-ro", "/etc"]
            bwrap += ["--perms", "0644", "--ro-bind-data", str(sandboxd_fd), SANDBOXD_INSIDE]
            if self.python_bind is not None:
                bwrap += ["--ro-bind", self.python_bind, PYTHON_INSIDE]
            bwrap += ["--bind-fd", str(workspace_fd), WORKSPACE, "--chdir", WORKSPACE]
            bwrap += ["--remount-ro", "/", "--clearenv"]
            bwrap += [
                "--",
                self.python,
                "-I",
                "-S",
                SANDBOXD_INSIDE,
                str(listener.fileno()),
                str(control_remote.fileno()),
                "proxy" if networked else "none",
            ]
            argv = self._launcher(cgroup, sandbox_limits) + bwrap
            fds = (listener.fileno(), control_remote.fileno(), *opened)
            try:
                process = await asyncio.create_subprocess_exec(
                    *argv,
                    pass_fds=fds,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
                )
            except OSError as error:
                raise BackendError(f"cannot start bwrap: {error}") from None
        finally:
            listener.close()
            control_remote.close()
            for fd in opened:
                os.close(fd)
        env = dict(template.env)
        if networked:
            for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
                env[name] = PROXY_URL
            env["NO_PROXY"] = env["no_proxy"] = "localhost,127.0.0.1,::1"
        env.update(config.env)
        running = _Running(
            process=process,
            socket_path=socket_path,
            control=control,
            cgroup=cgroup,
            proxy=None,
            env=env,
            shell=template.login_shell,
        )
        running.watcher = asyncio.create_task(self._watch(running))
        try:
            proxy_socket = await self._wait_ready(running)
            if networked:
                if proxy_socket is None:
                    raise BackendError("the sandbox's agent did not hand over its proxy socket")
                running.proxy = ProxyServer(config.allow, label=config.key)
                await running.proxy.serve(proxy_socket)
            elif proxy_socket is not None:
                proxy_socket.close()
        except BaseException:
            await self._kill(running)
            raise
        self._running[config.key] = running

    def _launcher(self, cgroup: limits.Cgroup | None, sandbox_limits: limits.Limits) -> list[str]:
        """What runs before bwrap: join the cgroup (or set rlimits), then drop to the sandbox uid."""
        argv: list[str] = []
        if cgroup is not None:
            script = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'
            argv += ["/bin/sh", "-c", script, "sh", *map(str, cgroup.procs_files), "--"]
            if not self.loop_quota:
                argv += ["prlimit", f"--fsize={sandbox_limits.disk_bytes}", "--"]
        else:
            argv += limits.prlimit_argv(sandbox_limits)
        if self.is_root:
            argv += ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", "--"]
        return argv

    async def _wait_ready(self, running: _Running) -> socket.socket | None:
        """Wait for sandboxd's "ready" (with its proxy socket when networked)."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[tuple[bytes, list[int]]] = loop.create_future()
        control = running.control
        control.setblocking(False)

        def on_readable() -> None:
            try:
                message, fds, _, _ = socket.recv_fds(control, 16, 4)
            except BlockingIOError:
                return
            except OSError as error:
                message, fds = b"", []
                logger.debug("control socket: %s", error)
            loop.remove_reader(control.fileno())
            if not ready.done():
                ready.set_result((message, fds))

        loop.add_reader(control.fileno(), on_readable)
        watcher = running.watcher
        assert watcher is not None
        try:
            waited: set[asyncio.Future[Any]] = {ready, watcher}
            done, _ = await asyncio.wait(waited, timeout=READY_TIMEOUT, return_when="FIRST_COMPLETED")
        finally:
            loop.remove_reader(control.fileno())
        message, fds = ready.result() if ready.done() else (b"", [])
        sockets = [socket.socket(fileno=fd) for fd in fds]
        if message != b"R":
            for sock in sockets:
                sock.close()
            if watcher in done or running.process.returncode is not None:
                await asyncio.sleep(0)
                tail = bytes(running.output_tail).decode(errors="replace").strip()
                raise BackendError(f"the sandbox failed to start: {tail or 'bwrap exited'}")
            raise BackendError("the sandbox did not become ready in time")
        for extra in sockets[1:]:
            extra.close()
        return sockets[0] if sockets else None

    async def _watch(self, running: _Running) -> None:
        """Collect bwrap's own output (its error messages), and wait for it to end."""
        stdout = running.process.stdout
        assert stdout is not None
        while data := await stdout.read(4096):
            running.output_tail += data
            del running.output_tail[:-4096]
        await running.process.wait()

    async def _kill(self, running: _Running) -> None:
        """Kill everything of a sandbox and check that nothing is left."""
        if running.proxy is not None:
            await running.proxy.close()
        if running.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                running.process.kill()
        if running.watcher is not None:
            await running.watcher
        else:
            await running.process.wait()
        running.control.close()
        if running.cgroup is not None:
            try:
                await running.cgroup.remove()
            except limits.CgroupError as error:
                raise BackendError(f"the sandbox did not stop: {error}") from None
        running.socket_path.unlink(missing_ok=True)

    async def _forget(self, key: str, running: _Running) -> None:
        await self._kill(running)
        if self._running.get(key) is running:
            del self._running[key]

    async def stop(self, config: SandboxConfig) -> None:
        async with self._lock(config):
            running = self._running.get(config.key)
            if running is not None:
                await self._forget(config.key, running)
            elif self.cgroups is not None:
                stale = self.cgroups.existing(self._cgroup_key(config))
                if stale is not None:
                    try:
                        await stale.remove()
                    except limits.CgroupError as error:
                        raise BackendError(f"the sandbox did not stop: {error}") from None

    async def destroy(self, config: SandboxConfig) -> None:
        await self.stop(config)
        async with self._lock(config):
            directory = self._dir(config)
            workspace = directory / "workspace"
            try:
                await disk.unmount(workspace)
            except disk.DiskError as error:
                raise BackendError(f"cannot unmount the workspace: {error}") from None
            await asyncio.to_thread(_remove_tree, directory)
            with contextlib.suppress(OSError):
                directory.parent.rmdir()  # the tenant's directory, when it was the last sandbox
        self._locks.pop(config.key, None)

    def is_running(self, config: SandboxConfig) -> bool:
        running = self._running.get(config.key)
        return running is not None and running.process.returncode is None

    async def close(self) -> None:
        """Stop every sandbox and unmount every workspace disk: the files stay in their images
        (mounted again on demand), and nothing of the runtime stays mounted after it."""
        for key, running in list(self._running.items()):
            try:
                await self._forget(key, running)
            except BackendError as error:
                logger.warning("closing %s: %s", key, error)
        for workspace in self.sandboxes.glob("*/*/workspace"):
            try:
                await disk.unmount(workspace)
            except disk.DiskError as error:
                logger.warning("unmounting %s: %s", workspace, error)

    # -- processes -------------------------------------------------------------------------------

    def _require(self, config: SandboxConfig) -> _Running:
        running = self._running.get(config.key)
        if running is None or running.process.returncode is not None:
            raise BackendError("the sandbox is not running")
        return running

    async def _connect(self, running: _Running) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.open_unix_connection(str(running.socket_path), limit=MAX_FRAME + 16)
        except OSError:
            raise BackendError("the sandbox is not running") from None

    async def exec(self, config: SandboxConfig, spec: ExecSpec) -> AsyncIterator[ExecOutput | ExecFinished]:
        running = self._require(config)
        request = {
            "argv": list(spec.argv),
            "env": {**running.env, **spec.env},
            "cwd": _inside(spec.cwd),
            "timeout": float(spec.timeout_seconds),
        }
        cgroup = running.cgroup
        oom_before = cgroup.oom_kills() if cgroup is not None else 0
        reader, writer = await self._connect(running)
        try:
            writer.write(_frame(b"X", marshal.dumps(request)))
            for offset in range(0, len(spec.stdin), CHUNK):
                writer.write(_frame(b"I", spec.stdin[offset : offset + CHUNK]))
            writer.write(_frame(b"E"))
            deadline = time.monotonic() + spec.timeout_seconds + EXEC_GRACE_SECONDS
            while True:
                try:
                    frame = await asyncio.wait_for(_read_frame(reader), max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    # sandboxd did not enforce the timeout (it may have been tampered with)
                    yield ExecFinished(exit_code=-9, timed_out=True)
                    return
                if frame is None:  # the sandbox stopped under the command
                    yield ExecFinished(exit_code=-9)
                    return
                kind, payload = frame
                if kind == b"1":
                    yield ExecOutput("stdout", payload)
                elif kind == b"2":
                    yield ExecOutput("stderr", payload)
                elif kind == b"x":
                    code, timed_out = _parse_exit(payload)
                    oom = code == -9 and cgroup is not None and cgroup.oom_kills() > oom_before
                    yield ExecFinished(exit_code=code, timed_out=timed_out, oom_killed=oom)
                    return
        finally:
            writer.close()

    async def open_pty(
        self, config: SandboxConfig, *, argv: list[str], env: dict[str, str], rows: int, cols: int
    ) -> PtyProcess:
        running = self._require(config)
        request = {
            "argv": list(argv) or list(running.shell),
            "env": {**running.env, **env},
            "cwd": WORKSPACE,
            "rows": max(1, min(rows, 1000)),
            "cols": max(1, min(cols, 1000)),
        }
        reader, writer = await self._connect(running)
        writer.write(_frame(b"P", marshal.dumps(request)))
        await writer.drain()
        return BwrapPty(reader, writer)


def _inside(cwd: str) -> str:
    cwd = cwd.strip("/")
    return f"{WORKSPACE}/{cwd}" if cwd else WORKSPACE


def _remove_tree(path: Path) -> None:
    def make_writable(function: object, failed: str, _exc: object) -> None:
        # a sandbox may leave directories without write permission
        os.chmod(os.path.dirname(failed), 0o700)
        if os.path.isdir(failed) and not os.path.islink(failed):
            os.chmod(failed, 0o700)
            shutil.rmtree(failed, onerror=make_writable)
        else:
            os.unlink(failed)

    if path.exists():
        shutil.rmtree(path, onerror=make_writable)


class BwrapPty(PtyProcess):
    """A terminal inside the sandbox, relayed by sandboxd over one connection."""

    # Output waiting to be read; the relay stops reading (and the terminal's program
    # blocks) when it is full, so a reader that falls behind costs no memory.
    QUEUE_CHUNKS = 256

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._output: asyncio.Queue[bytes] = asyncio.Queue(self.QUEUE_CHUNKS)
        self._exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        code = -9  # the connection ended without an exit: the sandbox was stopped
        try:
            while True:
                frame = await _read_frame(self._reader)
                if frame is None:
                    break
                kind, payload = frame
                if kind == b"1":
                    await self._output.put(payload)
                elif kind == b"x":
                    code, _ = _parse_exit(payload)
                    break
        except BackendError:
            pass
        finally:
            if not self._exit.done():
                self._exit.set_result(code)
            self._writer.close()
            await self._output.put(b"")

    async def read(self) -> bytes:
        if self._exit.done() and self._output.empty():
            return b""
        data = await self._output.get()
        if not data:
            self._output.put_nowait(b"")  # every later read sees the end too
        return data

    async def write(self, data: bytes) -> None:
        if self._exit.done():
            return
        for offset in range(0, len(data), CHUNK):
            self._writer.write(_frame(b"I", data[offset : offset + CHUNK]))
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()

    async def resize(self, rows: int, cols: int) -> None:
        if self._exit.done():
            return
        rows, cols = max(1, min(rows, 1000)), max(1, min(cols, 1000))
        self._writer.write(_frame(b"R", rows.to_bytes(2, "big") + cols.to_bytes(2, "big")))
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()

    async def wait(self) -> int:
        return await asyncio.shield(self._exit)

    async def kill(self) -> None:
        if not self._exit.done():
            self._writer.write(_frame(b"K"))
            with contextlib.suppress(ConnectionError):
                await self._writer.drain()
            try:
                await asyncio.wait_for(asyncio.shield(self._exit), 5)
            except TimeoutError:
                self._writer.close()
                self._task.cancel()
