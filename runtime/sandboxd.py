"""The agent inside a bwrap sandbox: runs commands and terminals for the runtime.

The runtime starts it as the sandbox's first process (under bwrap's own pid 1)
with the interpreter of the sandbox's read-only /usr, `python3 -I -S`, and hands it
two inherited file descriptors:

- a listening unix socket whose path only the runtime can reach on the host. Every
  exec or terminal is one connection to it: a request frame, then frames both ways;
- a control socket to the runtime: sandboxd says "ready" on it, and when the
  sandbox may use the network it passes the runtime its listening TCP socket on
  127.0.0.1:3128 inside the sandbox's network namespace, so the runtime's proxy
  (runtime/netproxy.py) accepts the sandbox's connections directly.

Execs are served by sandboxd's single poll(2) loop: each command is started with
posix_spawn (vfork: no copy of sandboxd) into its own session, so a timeout kills
its whole process group. No fork of sandboxd and no fresh bwrap per exec is what
makes an exec cost about a millisecond. Terminals, long-lived and few, each get a
forked copy of sandboxd that relays the pseudo-terminal.

It imports only C modules and `os`: `socket`, `signal` and `contextlib` pull in
`enum` or `functools`, which would add milliseconds to every sandbox's cold start.

Trust: sandboxd runs as the sandbox's user, so code in the sandbox can replace it.
The runtime therefore treats every frame from sandboxd as untrusted input (size
caps, no unmarshalling), and enforces stop, timeouts and limits from the host side.

Frames, both ways: 1 byte kind, 4 bytes big-endian length, payload.
  runtime -> sandboxd: b"X" exec request, b"P" pty request (payload: marshal of a
  dict; sandboxd trusts the runtime), b"I" stdin/pty input, b"E" end of stdin,
  b"R" resize (>HH rows, cols), b"K" kill.
  sandboxd -> runtime: b"1" stdout or pty output, b"2" stderr, b"x" exit
  (>iB exit code, timed out).
"""

from __future__ import annotations

import _socket
import marshal
import os
import select
import sys
import time
from typing import Any

# The C module: `signal` imports enum. ModuleType attributes are Any to mypy.
_signal: Any = __import__("_signal")

HEADER = 5
MAX_FRAME = 1 << 20
CHUNK = 65536
# After the command exits, how long to keep reading output that its background
# children may still hold open, before reporting the exit.
DRAIN_SECONDS = 0.1
PROXY_PORT = 3128
# Output an exec may queue for the runtime before its pipes stop being read.
OUTGOING_LIMIT = 256 * 1024
COMMAND_OOM_SCORE = 500
REQUEST_TIMEOUT = 10.0
LINGER_SECONDS = 10.0


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return kind + len(payload).to_bytes(4, "big") + payload


class Frames:
    """Incremental parser of frames read from a socket."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        self.buffer += data
        out = []
        while len(self.buffer) >= HEADER:
            size = int.from_bytes(self.buffer[1:HEADER], "big")
            if size > MAX_FRAME:
                raise ValueError("frame too large")
            if len(self.buffer) < HEADER + size:
                break
            out.append((self.buffer[:1], self.buffer[HEADER : HEADER + size]))
            self.buffer = self.buffer[HEADER + size :]
        return out


def exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def exit_frame(code: int, timed_out: bool = False) -> bytes:
    return frame(b"x", code.to_bytes(4, "big", signed=True) + bytes([timed_out]))


def kill_group(pid: int) -> None:
    try:  # noqa: SIM105 (contextlib costs milliseconds of start-up)
        os.killpg(pid, 9)
    except OSError:
        pass


def set_oom_score(score: int) -> None:
    try:
        with open("/proc/self/oom_score_adj", "w") as adj:
            adj.write(str(score))
    except OSError:
        pass


def find_program(name: str, env: dict[str, str]) -> str | None:
    """argv[0] looked up on the command's own PATH (posix_spawnp would use sandboxd's)."""
    if "/" in name:
        return name
    for directory in env.get("PATH", "/usr/bin:/bin").split(":"):
        path = f"{directory or '.'}/{name}"
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None


def child_setup(request: dict[str, Any]) -> None:
    """In a forked child (terminals), before exec: default signal dispositions (Python
    ignores SIGPIPE and SIGXFSZ, and an ignored signal survives exec), the working
    directory, and a higher OOM score than sandboxd's."""
    _signal.signal(_signal.SIGPIPE, _signal.SIG_DFL)
    _signal.signal(_signal.SIGXFSZ, _signal.SIG_DFL)
    set_oom_score(COMMAND_OOM_SCORE)
    try:
        os.chdir(request["cwd"])
    except OSError as error:
        os.write(2, f"agentyard: cannot enter {request['cwd']}: {error.strerror}\r\n".encode())
        os._exit(125)


def child_exec(request: dict[str, Any]) -> None:
    argv = request["argv"]
    program = find_program(argv[0], request["env"])
    if program is None:
        os.write(2, f"agentyard: {argv[0]}: command not found\r\n".encode())
        os._exit(127)
    try:
        os.execve(program, argv, request["env"])  # noqa: S606
    except OSError as error:
        os.write(2, f"agentyard: {argv[0]}: {error.strerror}\r\n".encode())
        os._exit(126)


class Exec:
    """One command run for one connection, driven by the main loop's poll(2).

    Output waits in `outgoing` until the socket takes it; while too much waits, the
    command's pipes are not read, so a slow reader slows the command, not memory."""

    def __init__(
        self, conn: Any, request: dict[str, Any], frames: Frames, pending: list[tuple[bytes, bytes]]
    ):
        self.conn = conn
        self.conn_fd = conn.fileno()
        self.frames = frames
        self.outgoing = bytearray()
        self.stdin_buffer = b""
        self.stdin_open = True
        self.streams: dict[int, bytes] = {}
        self.pid = 0
        self.pidfd = -1
        self.stdin_w = -1
        self.status: int | None = None
        self.timed_out = False
        self.abandoned = False
        self.finished = False  # the exit frame is queued (or nobody waits for it)
        self.finished_at = 0.0
        self.deadline = time.monotonic() + float(request["timeout"])
        # Output still in the pipes after the command exits is read until the pipes stay
        # quiet for DRAIN_SECONDS (a background child may hold them open forever), but
        # never dropped while it is only waiting for a slow reader; the timeout caps it.
        self.drain_limit = self.deadline
        self.drain_until = 0.0
        self.spawn(request)
        for kind, payload in pending:
            self.handle_frame(kind, payload)

    def spawn(self, request: dict[str, Any]) -> None:
        argv, env = request["argv"], request["env"]
        program = find_program(argv[0], env)
        if program is None:
            self.fail(127, f"agentyard: {argv[0]}: command not found\n")
            return
        try:
            os.chdir(request["cwd"])
        except OSError as error:
            self.fail(125, f"agentyard: cannot enter {request['cwd']}: {error.strerror}\n")
            return
        stdin_r, stdin_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            # The command inherits a higher OOM score than sandboxd keeps for itself, so
            # the memory limit kills the command, not the sandbox's agent.
            set_oom_score(COMMAND_OOM_SCORE)
            self.pid = os.posix_spawn(
                program,
                argv,
                env,
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, stdin_r, 0),
                    (os.POSIX_SPAWN_DUP2, out_w, 1),
                    (os.POSIX_SPAWN_DUP2, err_w, 2),
                ],
                setsid=True,
                setsigdef=(_signal.SIGPIPE, _signal.SIGXFSZ),
            )
        except OSError as error:
            for fd in (stdin_r, stdin_w, out_r, out_w, err_r, err_w):
                os.close(fd)
            self.fail(126, f"agentyard: {argv[0]}: {error.strerror}\n")
            return
        finally:
            set_oom_score(0)
            os.chdir("/")
        for fd in (stdin_r, out_w, err_w):
            os.close(fd)
        for fd in (stdin_w, out_r, err_r):
            os.set_blocking(fd, False)
        self.stdin_w = stdin_w
        self.streams = {out_r: b"1", err_r: b"2"}
        self.pidfd = os.pidfd_open(self.pid)

    def fail(self, code: int, message: str) -> None:
        self.outgoing += frame(b"2", message.encode()) + exit_frame(code)
        self.finish()

    def finish(self) -> None:
        self.finished = True
        self.finished_at = time.monotonic()

    def handle_frame(self, kind: bytes, payload: bytes) -> None:
        if kind == b"I" and self.stdin_open:
            self.stdin_buffer += payload
        elif kind == b"E":
            self.stdin_open = False
        elif kind == b"K" and self.pid and self.status is None:
            kill_group(self.pid)

    def interest(self) -> list[tuple[int, int]]:
        wanted = []
        if not self.abandoned:
            wanted.append((self.conn_fd, select.POLLIN | (select.POLLOUT if self.outgoing else 0)))
        if self.status is None and self.pidfd >= 0:
            wanted.append((self.pidfd, select.POLLIN))
        if self.finished:
            return wanted
        if self.stdin_w >= 0 and self.stdin_buffer:
            wanted.append((self.stdin_w, select.POLLOUT))
        if len(self.outgoing) < OUTGOING_LIMIT:
            wanted += [(fd, select.POLLIN) for fd in self.streams]
        return wanted

    def next_deadline(self) -> float:
        if self.status is None and self.pidfd >= 0:
            return self.deadline
        if self.finished:
            return float("inf")
        # Backed up: the socket's POLLOUT wakes us, not the drain clock.
        return self.drain_until if len(self.outgoing) < OUTGOING_LIMIT else self.drain_limit

    def tick(self, now: float) -> None:
        if self.status is None and self.pidfd >= 0 and now >= self.deadline and not self.timed_out:
            self.timed_out = True
            kill_group(self.pid)
            self.deadline = now + 60  # wait for the exit the kill causes, without spinning
        if self.finished:
            return
        if self.stdin_w >= 0 and not self.stdin_buffer and not self.stdin_open:
            os.close(self.stdin_w)
            self.stdin_w = -1
        if self.status is None:
            return
        room = len(self.outgoing) < OUTGOING_LIMIT
        if self.streams and room and now >= self.drain_until and not self.drain_now():
            # Output arrived (this loop may simply have been starved of CPU): keep reading.
            self.drain_until = now + DRAIN_SECONDS
        quiet = room and now >= self.drain_until
        if not self.streams or quiet or now >= self.drain_limit:
            self.close_pipes()
            self.outgoing += exit_frame(exit_code(self.status), self.timed_out)
            self.finish()

    def drain_now(self) -> bool:
        """Read what the pipes hold at this moment; True when they held nothing."""
        empty = True
        for fd in list(self.streams):
            while len(self.outgoing) < OUTGOING_LIMIT:
                try:
                    data = os.read(fd, CHUNK)
                except BlockingIOError:
                    break
                if not data:
                    os.close(fd)
                    del self.streams[fd]
                    break
                self.outgoing += frame(self.streams[fd], data)
                empty = False
            else:
                empty = False  # more may wait behind what the socket has not taken yet
        return empty

    def close_pipes(self) -> None:
        for fd in [*self.streams, self.stdin_w]:
            if fd >= 0:
                os.close(fd)
        self.streams, self.stdin_w = {}, -1

    def on_event(self, fd: int, event: int) -> None:
        if fd == self.conn_fd:
            self.on_conn(event)
        elif fd == self.pidfd:
            _, self.status = os.waitpid(self.pid, 0)
            os.close(self.pidfd)
            self.pidfd = -1
            self.drain_until = time.monotonic() + DRAIN_SECONDS
        elif fd == self.stdin_w:
            try:
                written = os.write(self.stdin_w, self.stdin_buffer[:CHUNK])
                self.stdin_buffer = self.stdin_buffer[written:]
            except BlockingIOError:
                pass
            except OSError:  # the command closed its stdin
                self.stdin_buffer, self.stdin_open = b"", False
        elif fd in self.streams:
            try:
                data = os.read(fd, CHUNK)
            except BlockingIOError:
                return
            if data:
                self.outgoing += frame(self.streams[fd], data)
                if self.status is not None:
                    self.drain_until = time.monotonic() + DRAIN_SECONDS
            else:
                os.close(fd)
                del self.streams[fd]

    def on_conn(self, event: int) -> None:
        if event & select.POLLOUT and self.outgoing:
            try:
                del self.outgoing[: self.conn.send(self.outgoing)]
            except BlockingIOError:
                pass
            except OSError:
                self.abandon()
                return
        if event & (select.POLLIN | select.POLLHUP | select.POLLERR):
            try:
                data = self.conn.recv(CHUNK)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:  # the runtime went away (or the caller cancelled): so does the command
                self.abandon()
                return
            try:
                for kind, payload in self.frames.feed(data):
                    self.handle_frame(kind, payload)
            except ValueError:
                self.abandon()

    def abandon(self) -> None:
        self.abandoned = True
        self.outgoing.clear()
        if self.pid and self.status is None:
            kill_group(self.pid)
        self.close_pipes()
        self.finish()

    def is_done(self, now: float) -> bool:
        """Nothing left to do: the command is reaped, and the runtime has closed the
        connection after reading the reply (closing first, with the runtime's last frames
        unread, would reset the connection under the reply), or never will."""
        if self.pidfd >= 0 or not self.finished:
            return False
        return self.abandoned or (not self.outgoing and now - self.finished_at > LINGER_SECONDS)


def serve_pty(conn: Any, request: dict[str, Any], frames: Frames, pending: list[tuple[bytes, bytes]]) -> None:
    import fcntl
    import termios

    master, slave = os.openpty()
    fcntl.ioctl(master, termios.TIOCSWINSZ, winsize(request["rows"], request["cols"]))
    pid = os.fork()
    if pid == 0:
        os.close(master)
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        for fd in (0, 1, 2):
            os.dup2(slave, fd)
        if slave > 2:
            os.close(slave)
        child_setup(request)
        child_exec(request)
    os.close(slave)
    os.set_blocking(master, False)
    pidfd = os.pidfd_open(pid)
    conn_fd = conn.fileno()
    poller = select.poll()
    poller.register(conn_fd, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    poller.register(master, select.POLLIN)
    status: int | None = None
    drain_until = 0.0
    to_master = b""

    def handle(kind: bytes, payload: bytes) -> None:
        nonlocal to_master
        if kind == b"I":
            to_master += payload
        elif kind == b"R" and len(payload) == 4:
            rows, cols = int.from_bytes(payload[:2], "big"), int.from_bytes(payload[2:], "big")
            fcntl.ioctl(master, termios.TIOCSWINSZ, winsize(rows, cols))
        elif kind == b"K":
            kill_group(pid)

    for kind, payload in pending:
        handle(kind, payload)
    master_open = True
    while True:
        now = time.monotonic()
        if status is not None and (now >= drain_until or not master_open):
            break
        if master_open:
            poller.modify(master, select.POLLIN | (select.POLLOUT if to_master else 0))
        timeout = -1 if status is None else max(0, int((drain_until - now) * 1000) + 1)
        for fd, event in poller.poll(timeout):
            if fd == conn_fd:
                data = conn.recv(CHUNK)
                if not data:  # the runtime went away: so does the terminal
                    kill_group(pid)
                    os.waitpid(pid, 0)
                    return
                for kind, payload in frames.feed(data):
                    handle(kind, payload)
            elif fd == pidfd:
                poller.unregister(pidfd)
                _, status = os.waitpid(pid, 0)
                drain_until = time.monotonic() + DRAIN_SECONDS
            elif fd == master:
                if event & select.POLLOUT and to_master:
                    try:
                        to_master = to_master[os.write(master, to_master[:CHUNK]) :]
                    except BlockingIOError:
                        pass
                    except OSError:
                        to_master = b""
                if event & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    try:
                        data = os.read(master, CHUNK)
                    except BlockingIOError:
                        continue
                    except OSError:  # EIO: every process holding the terminal is gone
                        data = b""
                    if data:
                        conn.sendall(frame(b"1", data))
                    else:
                        poller.unregister(master)
                        master_open = False
    if status is None:
        _, status = os.waitpid(pid, 0)
    conn.sendall(frame(b"x", exit_code(status).to_bytes(4, "big", signed=True) + b"\0"))


def winsize(rows: int, cols: int) -> bytes:
    return rows.to_bytes(2, sys.byteorder) + cols.to_bytes(2, sys.byteorder) + bytes(4)


def serve_pty_in_child(
    conn: Any, request: dict[str, Any], frames: Frames, rest: list[tuple[bytes, bytes]]
) -> int:
    """Terminals are long-lived and simplest served blocking: each gets a forked sandboxd."""
    pid = os.fork()
    if pid != 0:
        conn.close()
        return pid
    keep = conn.fileno()
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd != keep:
            try:  # noqa: SIM105 (see kill_group)
                os.close(fd)
            except OSError:
                pass
    try:
        conn.setblocking(True)
        serve_pty(conn, request, frames, rest)
    except (OSError, ValueError):
        pass
    os._exit(0)


def proxy_listener() -> int:
    listener = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    listener.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", PROXY_PORT))
    listener.listen(128)
    return int(listener.detach())


class Pending:
    """An accepted connection whose first frame (the request) has not arrived yet."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.frames = Frames()
        self.since = time.monotonic()

    def request(self) -> tuple[bytes, dict[str, Any], list[tuple[bytes, bytes]]] | None:
        """The request once it is whole; None while it is not; EOFError when it never will be."""
        try:
            data = self.conn.recv(CHUNK)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            raise EOFError
        try:
            parsed = self.frames.feed(data)
            if not parsed:
                return None
            (kind, payload), rest = parsed[0], parsed[1:]
            return kind, marshal.loads(payload), rest  # noqa: S302 (from the runtime)
        except (ValueError, TypeError) as error:
            raise EOFError from error


def main() -> None:
    listen_fd, control_fd, proxy = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "proxy"
    os.set_inheritable(listen_fd, False)
    os.set_inheritable(control_fd, False)
    os.chdir("/")
    listener: Any = _socket.socket(fileno=listen_fd)  # typeshed lacks its _accept()
    listener.setblocking(False)
    control = _socket.socket(fileno=control_fd)
    if proxy:
        fd = proxy_listener()
        control.sendmsg([b"R"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fd.to_bytes(4, sys.byteorder))])
        os.close(fd)
    else:
        control.sendall(b"R")
    pending: dict[int, Pending] = {}
    running: list[Exec] = []
    terminals: set[int] = set()
    while True:
        poller = select.poll()
        poller.register(listen_fd, select.POLLIN)
        poller.register(control_fd, select.POLLIN)
        for fd in pending:
            poller.register(fd, select.POLLIN)
        owners: dict[int, Exec] = {}
        for item in running:
            for fd, mask in item.interest():
                poller.register(fd, mask)
                owners[fd] = item
        now = time.monotonic()
        wake = min([item.next_deadline() for item in running] + [now + 1.0])
        for fd, event in poller.poll(max(0, int((wake - now) * 1000) + 1)):
            if fd == control_fd:  # the runtime is gone
                return
            if fd == listen_fd:
                while True:
                    try:
                        conn_fd, _ = listener._accept()
                    except BlockingIOError:
                        break
                    conn = _socket.socket(fileno=conn_fd)
                    conn.setblocking(False)
                    pending[conn_fd] = Pending(conn)
            elif fd in pending:
                waiting = pending[fd]
                try:
                    request = waiting.request()
                except EOFError:
                    del pending[fd]
                    waiting.conn.close()
                    continue
                if request is None:
                    continue
                del pending[fd]
                kind, body, rest = request
                if kind == b"X":
                    running.append(Exec(waiting.conn, body, waiting.frames, rest))
                elif kind == b"P":
                    terminals.add(serve_pty_in_child(waiting.conn, body, waiting.frames, rest))
                else:
                    waiting.conn.close()
            elif fd in owners:
                owners[fd].on_event(fd, event)
        now = time.monotonic()
        for item in list(running):
            item.tick(now)
            if item.is_done(now):
                item.conn.close()
                running.remove(item)
        for fd, waiting in list(pending.items()):
            if now - waiting.since > REQUEST_TIMEOUT:
                waiting.conn.close()
                del pending[fd]
        for pid in list(terminals):  # execs are reaped through their pidfd
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    terminals.discard(pid)
            except ChildProcessError:
                terminals.discard(pid)


if __name__ == "__main__":
    main()
