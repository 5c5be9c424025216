"""The run's shell and Python sessions, kept inside the sandbox.

The runtime's exec runs one command to its end, so neither session is a process the
worker holds: a worker that dies (or another that takes the run over) finds the
session where the last call left it, because its state lives in the sandbox, under
`/tmp/agentyard/runs/<run id>/`:

- bash: each call is a fresh `bash` that first sources `shell.sh` (the working
  directory, exported variables, other variables the run set, and functions, as the
  last call left them), runs the command with `eval` in the same shell (so `cd` and
  `export` take effect), and writes that state back when it exits, however it exits
  (`exit 3`, `set -e`). A command killed at its timeout saves nothing: the next call
  starts from the state before it. Shell options (`set -e`, `set -x`) do not carry over.
- python: an interpreter server started on the first call (interpreter.py), living
  until the sandbox stops; each call sends it code over a unix socket.

The sandbox's /tmp is a tmpfs of the sandbox: stopping the workspace clears both
sessions (the files in /workspace stay); the python tool says so when it has to start
a fresh interpreter.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from apps.agents.tools.base import ToolCallContext
from apps.core.errors import ServiceError
from apps.tenancy.audit import Actor
from apps.workspaces.models import Workspace
from apps.workspaces.services import workspace_exec

logger = logging.getLogger(__name__)

CWD_MARKER = "\n\x1eagentyard-cwd:"
STATE_ROOT = "/tmp/agentyard/runs"  # noqa: S108 (inside the sandbox)
# Seconds beyond the command's own timeout the exec may take: the interpreter's start
# and the grace after an interrupt.
PYTHON_EXTRA_SECONDS = 20.0

# $1: the run's state directory. The command arrives on stdin (any size; no quoting).
BASH_WRAPPER = r"""
__ay_dir=$1
__ay_base=$(compgen -v)
__ay_cmd=$(cat; printf x)
__ay_cmd=${__ay_cmd%x}
exec </dev/null 2>&1
# No bytecode files: the editor can change a file within the second a test run cached it,
# keeping its size, and Python's cache (keyed on whole-second mtime and size) would then
# run the old code. They would also litter the repository the run's diff is taken from.
export PYTHONDONTWRITEBYTECODE=1
mkdir -p "$__ay_dir" || exit 125
if [ -r "$__ay_dir/shell.sh" ]; then
  . "$__ay_dir/shell.sh"
fi
__ay_saved=
__ay_save() {
  local __ay_status=$? __ay_name
  [ -n "$__ay_saved" ] && return "$__ay_status"
  __ay_saved=1
  {
    export -p
    for __ay_name in $(compgen -v); do
      case "$__ay_name" in __ay_*|BASH*|FUNCNAME|PIPESTATUS|_) continue ;; esac
      case $'\n'"$__ay_base"$'\n' in *$'\n'"$__ay_name"$'\n'*) continue ;; esac
      declare -p "$__ay_name" 2>/dev/null
    done
    for __ay_name in $(compgen -A function); do
      case "$__ay_name" in __ay_*) continue ;; esac
      declare -f "$__ay_name"
    done
    printf 'cd -- %q 2>/dev/null || { echo "(%q is gone; the shell is in /workspace.)"; cd /workspace; }\n' \
      "$PWD" "$PWD"
  } >"$__ay_dir/shell.sh.new" 2>/dev/null && mv -f "$__ay_dir/shell.sh.new" "$__ay_dir/shell.sh"
  printf '\n\036agentyard-cwd:%s' "$PWD"
  return "$__ay_status"
}
trap __ay_save EXIT
eval "$__ay_cmd"
# Saved here too, in case the command replaced the EXIT trap with its own.
__ay_save
"""

INTERPRETER_SOURCE = (Path(__file__).resolve().parent / "interpreter.py").read_text()
INTERPRETER_NAME = f"interpreter-{hashlib.sha256(INTERPRETER_SOURCE.encode()).hexdigest()[:12]}.py"
# $1: the state directory, $2: the program's text (written once per version), $3: timeout.
PYTHON_LAUNCHER = f"""
if ! command -v python3 >/dev/null; then
  echo "python3 is not installed in this workspace; use bash." >&2
  exit 127
fi
program="$1/{INTERPRETER_NAME}"
mkdir -p "$1" || exit 125
if [ ! -f "$program" ]; then
  printf "%s" "$2" > "$program.new" && mv -f "$program.new" "$program" || exit 125
fi
exec env PYTHONDONTWRITEBYTECODE=1 python3 "$program" call "$1" "$3"
"""
# $1: the state directory. Stops the run's interpreter (if that pid is still it) and
# removes the run's state.
SESSIONS_END = """
if [ -f "$1/python.pid" ]; then
  pid=$(cat "$1/python.pid")
  case "$(tr '\\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null)" in
    *" serve $1"*) kill -9 "$pid" 2>/dev/null ;;
  esac
fi
rm -rf -- "$1"
"""


def state_dir(ctx: ToolCallContext) -> str:
    return f"{STATE_ROOT}/{ctx.run.pk}"


def timeout_for(ctx: ToolCallContext, requested: float | None) -> float:
    """The command's time: what was asked (or the default), within the cap and what is
    left of the run's wall-time budget (at least a second, so the call can still answer)."""
    wanted = float(requested if requested is not None else settings.AGENTS_TOOL_TIMEOUT_SECONDS)
    cap = float(settings.AGENTS_TOOL_MAX_TIMEOUT_SECONDS)
    left = ctx.deadline - time.monotonic()
    return max(1.0, min(wanted, cap, left))


@dataclass(frozen=True)
class ShellResult:
    output: str
    exit_code: int
    timed_out: bool
    cwd: str | None  # None when the command was killed before it could say
    duration_seconds: float


def bash_run(ctx: ToolCallContext, command: str, timeout: float) -> ShellResult:
    result = workspace_exec(
        actor=ctx.actor,
        workspace=ctx.workspace,
        argv=["bash", "-c", BASH_WRAPPER, "bash", state_dir(ctx)],
        stdin=command.encode(),
        timeout=timeout,
    )
    # The wrapper ends its output with the working directory after a marker; a command
    # killed at its timeout (or output cut at the exec limit) has none.
    output, marker, cwd = result.stdout.rpartition(CWD_MARKER)
    if not marker or "\n" in cwd:
        output, cwd = result.stdout, ""
    return ShellResult(
        output=output + result.stderr,
        exit_code=result.exit_code,
        timed_out=result.timed_out,
        cwd=cwd or None,
        duration_seconds=result.duration_seconds,
    )


@dataclass(frozen=True)
class PythonResult:
    output: str
    exit_code: int  # see interpreter.py: 0 ran, 1 raised, 3 fresh interpreter, 124/137 timed out
    timed_out: bool


def python_run(ctx: ToolCallContext, code: str, timeout: float) -> PythonResult:
    result = workspace_exec(
        actor=ctx.actor,
        workspace=ctx.workspace,
        argv=[
            "sh",
            "-c",
            PYTHON_LAUNCHER,
            "agentyard-python",
            state_dir(ctx),
            INTERPRETER_SOURCE,
            f"{timeout:g}",
        ],
        stdin=code.encode(),
        timeout=timeout + PYTHON_EXTRA_SECONDS,
    )
    output = result.stdout + result.stderr
    timed_out = result.timed_out or result.exit_code in (124, 137)
    if result.timed_out:
        output += f"\n[The call ran past {timeout:g} s and was killed.]\n"
    return PythonResult(output=output, exit_code=result.exit_code, timed_out=timed_out)


def sessions_end(*, workspace: Workspace, run_id: object, actor: Actor | None = None) -> None:
    """The run is over: stop its interpreter and remove its shell state and undo history from
    the sandbox (they would otherwise hold memory until the workspace stops). Safe to repeat;
    a workspace that is not running has nothing left to clean."""
    if workspace.state != Workspace.State.RUNNING:
        return
    try:
        workspace_exec(
            actor=actor or Actor.system(),
            workspace=workspace,
            argv=["sh", "-c", SESSIONS_END, "agentyard-end", f"{STATE_ROOT}/{run_id}"],
            timeout=30,
        )
    except ServiceError:
        logger.warning("Could not clear the sessions of run %s in workspace %s", run_id, workspace.pk)
