"""The python tool's program inside the sandbox (standard library only; never imported
by the platform, whose python tool ships this file's text, see shell.py).

`interpreter.py call DIR TIMEOUT`, with the code on stdin, sends the code to the run's
interpreter, a server process listening on DIR/python.sock, and prints what it
printed. When no interpreter answers there (the first call of a run, or the sandbox
was restarted), it starts one, `interpreter.py serve DIR`, in its own session so it
outlives the call: background processes of a sandbox live until the sandbox stops,
and so do the run's variables.

The server runs one piece of code at a time in one namespace, with the output of the
code and of the processes it starts (file descriptors 1 and 2) captured, and the
value of a last bare expression printed as the Python prompt would. A call that runs
past its time interrupts the code (SIGINT: KeyboardInterrupt, the variables stay);
code that ignores the interrupt is killed with the interpreter, and the next call
starts a fresh one.

Exit status of `call`: 0 ran, 1 the code raised, 3 started a fresh interpreter that
then ran it (the output says so), 124 interrupted at its time, 137 killed, 2 no
interpreter could be started.
"""

import ast
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

OUTPUT_LIMIT = 1024 * 1024
# A safety net for a run whose end was never announced: its interpreter leaves the
# sandbox's memory after this long without a call (the platform ends it at the run's end).
IDLE_SECONDS = 12 * 3600.0
START_SECONDS = 10.0
INTERRUPT_GRACE = 5.0


def serve(directory: str) -> None:
    path = os.path.join(directory, "python.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if os.path.exists(path):
        os.unlink(path)
    listener.bind(path)
    listener.listen(8)
    with open(os.path.join(directory, "python.pid"), "w") as pid_file:
        pid_file.write(str(os.getpid()))
    namespace: dict[str, object] = {"__name__": "__main__", "__builtins__": __builtins__}
    # Like the interactive prompt: modules in the working directory import.
    sys.path[0] = ""
    os.chdir("/workspace")
    # SIGINT is how a call that runs out of time interrupts the code.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    listener.settimeout(IDLE_SECONDS)
    while True:
        try:
            connection, _ = listener.accept()
        except KeyboardInterrupt:
            continue
        except TimeoutError:
            os.unlink(path)
            return
        connection.settimeout(None)
        try:
            handle(connection, namespace)
        except (KeyboardInterrupt, OSError):
            pass
        finally:
            connection.close()


def handle(connection: socket.socket, namespace: dict[str, object]) -> None:
    chunks = []
    while chunk := connection.recv(65536):
        chunks.append(chunk)
    code = b"".join(chunks).decode("utf-8", errors="replace")
    output, ok = run(code, namespace)
    connection.sendall((b"0" if ok else b"1") + output)


def run(code: str, namespace: dict[str, object]) -> tuple[bytes, bool]:
    captured = tempfile.TemporaryFile()  # noqa: SIM115 (closed below, after the read)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(captured.fileno(), 1)
    os.dup2(captured.fileno(), 2)
    ok = True
    try:
        try:
            tree = ast.parse(code, "<python>", "exec")
            last = None
            if tree.body and isinstance(tree.body[-1], ast.Expr):
                last = ast.Expression(tree.body[-1].value)
                tree.body.pop()
            exec(compile(tree, "<python>", "exec"), namespace)  # noqa: S102 (the tool's purpose)
            if last is not None:
                value = eval(compile(last, "<python>", "eval"), namespace)  # noqa: S307
                if value is not None:
                    print(repr(value))
        except SystemExit as exit_:
            print(f"SystemExit: {exit_.code} (the interpreter keeps running)")
            ok = exit_.code in (None, 0)
        except BaseException:  # KeyboardInterrupt too: it interrupted the code
            ok = False
            kind, value, trace = sys.exc_info()
            # The frames of this program are noise to the agent.
            while trace is not None and trace.tb_frame.f_code.co_filename == __file__:
                trace = trace.tb_next
            traceback.print_exception(kind, value, trace)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
    size = captured.seek(0, os.SEEK_END)
    captured.seek(0)
    output = captured.read(OUTPUT_LIMIT)
    captured.close()
    if size > OUTPUT_LIMIT:
        output += f"\n[output truncated: {size - OUTPUT_LIMIT} more bytes]\n".encode()
    return output, ok


def start(directory: str) -> None:
    log = open(os.path.join(directory, "python.log"), "ab")  # noqa: SIM115 (handed to the child)
    subprocess.Popen(  # noqa: S603
        [sys.executable, "-u", os.path.abspath(__file__), "serve", directory],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
        cwd="/workspace",
    )
    log.close()


def connect(path: str) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    return sock


def call(directory: str, timeout: float) -> int:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "python.sock")
    code = sys.stdin.buffer.read()
    started = False
    sock = connect(path)
    if sock is None:
        start(directory)
        started = True
        deadline = time.monotonic() + START_SECONDS
        while sock is None and time.monotonic() < deadline:
            time.sleep(0.02)
            sock = connect(path)
        if sock is None:
            sys.stdout.write("Could not start the Python interpreter:\n")
            with open(os.path.join(directory, "python.log"), errors="replace") as log:
                sys.stdout.write(log.read()[-2000:])
            return 2
        sys.stdout.write("[Started a Python interpreter for this run; names of any earlier one are gone.]\n")
    sock.sendall(code)
    sock.shutdown(socket.SHUT_WR)
    sock.settimeout(timeout)
    reply = bytearray()
    status = 0
    try:
        while chunk := sock.recv(65536):
            reply += chunk
    except TimeoutError:
        status = interrupt(directory, sock, reply, timeout)
    sys.stdout.flush()
    sys.stdout.buffer.write(bytes(reply[1:]))
    if status:
        return status
    if reply[:1] != b"0":
        return 1
    return 3 if started else 0


def interrupt(directory: str, sock: socket.socket, reply: bytearray, timeout: float) -> int:
    """The code ran past its time: interrupt it, or kill the interpreter if it will not stop."""
    with open(os.path.join(directory, "python.pid")) as pid_file:
        pid = int(pid_file.read())
    os.kill(pid, signal.SIGINT)
    sock.settimeout(INTERRUPT_GRACE)
    try:
        while chunk := sock.recv(65536):
            reply += chunk
    except TimeoutError:
        os.kill(pid, signal.SIGKILL)
        os.unlink(os.path.join(directory, "python.sock"))
        reply[:] = b"1" + bytes(reply[1:])
        reply += (
            f"\n[The code ran past {timeout:g} s and did not stop when interrupted: the interpreter was"
            " killed, and the next call starts a fresh one.]\n"
        ).encode()
        return 137
    reply += f"\n[Interrupted after {timeout:g} s; names defined before that are kept.]\n".encode()
    return 124


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        sys.exit(call(sys.argv[2], float(sys.argv[3])))
