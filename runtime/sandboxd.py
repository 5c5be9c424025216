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

Each connection is served by a forked child of sandboxd, which forks the command
into its own session (so a timeout kills its whole process group) and relays
stdin/stdout/stderr or the pseudo-terminal with poll(2). A fork per exec, and no
fresh bwrap per exec, is what makes an exec cost about a millisecond.

It imports only C modules and `os`: `socket` and `signal` pull in `enum`, which
would add milliseconds to every sandbox's cold start.

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


def read_request(conn: Any) -> tuple[bytes, dict[str, Any], Frames, list[tuple[bytes, bytes]]]:
    frames = Frames()
    while True:
        data = conn.recv(CHUNK)
        if not data:
            raise EOFError
        parsed = frames.feed(data)
        if parsed:
            kind, payload = parsed[0]
            return kind, marshal.loads(payload), frames, parsed[1:]  # noqa: S302 (from the runtime)


def exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def child_setup(request: dict[str, Any]) -> None:
    """In the forked child, before exec: default signal dispositions (Python ignores
    SIGPIPE and SIGXFSZ, and an ignored signal survives exec), a working directory,
    and a higher OOM score than sandboxd's so the memory limit kills the command."""
    _signal.signal(_signal.SIGPIPE, _signal.SIG_DFL)
    _signal.signal(_signal.SIGXFSZ, _signal.SIG_DFL)
    try:
        with open("/proc/self/oom_score_adj", "w") as adj:
            adj.write("500")
    except OSError:
        pass
    try:
        os.chdir(request["cwd"])
    except OSError as error:
        os.write(2, f"agentyard: cannot enter {request['cwd']}: {error.strerror}\n".encode())
        os._exit(125)


def child_exec(request: dict[str, Any]) -> None:
    os.closerange(3, 1 << 16)
    argv = request["argv"]
    try:
        os.execvpe(argv[0], argv, request["env"])  # noqa: S606
    except OSError as error:
        os.write(2, f"agentyard: {argv[0]}: {error.strerror}\n".encode())
        os._exit(127 if isinstance(error, FileNotFoundError) else 126)


def kill_group(pid: int) -> None:
    try:  # noqa: SIM105 (contextlib costs milliseconds of start-up)
        os.killpg(pid, 9)
    except OSError:
        pass


def serve_exec(
    conn: Any, request: dict[str, Any], frames: Frames, pending: list[tuple[bytes, bytes]]
) -> None:
    stdin_r, stdin_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.setsid()
        os.dup2(stdin_r, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        child_setup(request)
        child_exec(request)
    for fd in (stdin_r, out_w, err_w):
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    os.set_blocking(stdin_w, False)
    conn_fd = conn.fileno()
    deadline = time.monotonic() + float(request["timeout"])
    stdin_buffer = b""
    stdin_open = True
    streams = {out_r: b"1", err_r: b"2"}
    timed_out = False
    status: int | None = None
    drain_until = 0.0
    poller = select.poll()
    poller.register(conn_fd, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    for fd in streams:
        poller.register(fd, select.POLLIN)

    def handle(kind: bytes, payload: bytes) -> None:
        nonlocal stdin_buffer, stdin_open
        if kind == b"I" and stdin_open:
            stdin_buffer += payload
        elif kind == b"E":
            stdin_open = False
        elif kind == b"K":
            kill_group(pid)

    for kind, payload in pending:
        handle(kind, payload)
    while True:
        now = time.monotonic()
        if status is None and now >= deadline and not timed_out:
            timed_out = True
            kill_group(pid)
            deadline = now + 60  # wait for the exit the kill causes, without spinning
        if status is not None and (not streams or now >= drain_until):
            break
        if stdin_w >= 0:
            if stdin_buffer:
                poller.register(stdin_w, select.POLLOUT)
            elif not stdin_open:
                os.close(stdin_w)
                stdin_w = -1
        limit = (drain_until if status is not None else deadline) - now
        events = poller.poll(max(0, int(limit * 1000) + 1))
        for fd, _event in events:
            if fd == conn_fd:
                data = conn.recv(CHUNK)
                if not data:  # the runtime went away: the command goes too
                    kill_group(pid)
                    os.waitpid(pid, 0)
                    return
                for kind, payload in frames.feed(data):
                    handle(kind, payload)
            elif fd == pidfd:
                poller.unregister(pidfd)
                _, status = os.waitpid(pid, 0)
                drain_until = time.monotonic() + DRAIN_SECONDS
            elif fd == stdin_w:
                try:
                    written = os.write(stdin_w, stdin_buffer[:CHUNK])
                    stdin_buffer = stdin_buffer[written:]
                except BlockingIOError:
                    pass
                except OSError:  # the command closed its stdin
                    stdin_buffer = b""
                    stdin_open = False
                if not stdin_buffer:
                    poller.unregister(stdin_w)
            elif fd in streams:
                data = os.read(fd, CHUNK)
                if data:
                    conn.sendall(frame(streams[fd], data))
                else:
                    poller.unregister(fd)
                    os.close(fd)
                    del streams[fd]
    assert status is not None
    conn.sendall(frame(b"x", exit_code(status).to_bytes(4, "big", signed=True) + bytes([timed_out])))


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


def serve(conn_fd: int) -> None:
    conn = _socket.socket(fileno=conn_fd)
    try:
        kind, request, frames, pending = read_request(conn)
        if kind == b"X":
            serve_exec(conn, request, frames, pending)
        elif kind == b"P":
            serve_pty(conn, request, frames, pending)
    except (EOFError, OSError, ValueError):
        pass


def proxy_listener() -> int:
    listener = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    listener.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", PROXY_PORT))
    listener.listen(128)
    return int(listener.detach())


def main() -> None:
    listen_fd, control_fd, proxy = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "proxy"
    os.set_inheritable(listen_fd, False)
    os.set_inheritable(control_fd, False)
    listener: Any = _socket.socket(fileno=listen_fd)  # typeshed lacks its _accept()
    control = _socket.socket(fileno=control_fd)
    if proxy:
        fd = proxy_listener()
        control.sendmsg([b"R"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fd.to_bytes(4, sys.byteorder))])
        os.close(fd)
    else:
        control.sendall(b"R")
    poller = select.poll()
    poller.register(listen_fd, select.POLLIN)
    poller.register(control_fd, select.POLLIN)
    while True:
        for fd, _ in poller.poll(1000):
            if fd == control_fd:  # the runtime is gone
                return
            conn_fd, _ = listener._accept()
            if os.fork() == 0:
                listener.close()
                control.close()
                serve(conn_fd)
                os._exit(0)
            os.close(conn_fd)
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass


if __name__ == "__main__":
    main()
