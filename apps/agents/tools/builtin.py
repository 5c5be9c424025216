"""The built-in tools every agent has: bash, python, str_replace_editor, search, think,
finish and knowledge_search.

    builtin_tools()                  # -> list[ToolSpec], in the order the model sees them
    environment_facts(workspace, actor), environment_text(facts)   # for the prompt
    risk_reason(command)             # the risk policy (confirmation mode)
    sessions_end(workspace=, run_id=)   # at the run's end: its shell, interpreter and undo history go

Each handler checks its arguments itself and answers a bad call (a missing field, a
wrong type, a path outside the workspace, text not found) with an error outcome whose
message says what to change, never an exception. It raises only when the platform
cannot serve the call: the runtime unreachable (Unavailable) or the workspace not
running (Conflict); the loop records those as error events.

Sessions (the shell's working directory and variables, the Python interpreter, the
editor's undo history) live in the sandbox, per run: see shell.py and editor.py.
Output longer than AGENTS_TOOL_OUTPUT_CHARS is cut in the middle with a marker.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from typing import Any

from django.conf import settings

from apps.agents.tools import editor, shell
from apps.agents.tools.base import ToolCallContext, ToolOutcome, ToolSpec
from apps.agents.tools.environment import environment_facts, environment_text
from apps.agents.tools.risk import python_risk_reason, risk_reason
from apps.agents.tools.shell import sessions_end
from apps.core.errors import Invalid, NotFound
from apps.workspaces.services import workspace_exec

__all__ = [
    "builtin_tools",
    "environment_facts",
    "environment_text",
    "python_risk_reason",
    "risk_reason",
    "sessions_end",
    "truncate_output",
]

Handler = Callable[[ToolCallContext, dict[str, Any]], ToolOutcome]

SEARCH_TIMEOUT_SECONDS = 60.0
SEARCH_MAX_RESULTS = 500
SEARCH_LINE_CHARS = 300
MAX_ARGUMENT_CHARS = 1024 * 1024
DEFAULT_TIMEOUT = int(settings.AGENTS_TOOL_TIMEOUT_SECONDS)
MAX_TIMEOUT = int(settings.AGENTS_TOOL_MAX_TIMEOUT_SECONDS)


class ArgumentError(Exception):
    """The call's arguments are wrong; the message tells the model how."""


def truncate_output(text: str, limit: int | None = None) -> str:
    """Text within `limit` characters (AGENTS_TOOL_OUTPUT_CHARS): the beginning and the end
    kept (where commands print what went wrong), the middle replaced by a marker."""
    limit = int(settings.AGENTS_TOOL_OUTPUT_CHARS if limit is None else limit)
    if len(text) <= limit:
        return text
    head = limit // 2
    tail = limit - head
    cut = len(text) - head - tail
    marker = f"\n[... {cut} characters cut from the middle of the output (limit {limit}) ...]\n"
    return text[:head] + marker + text[len(text) - tail :]


# -- arguments ---------------------------------------------------------------------------------------


def _check_names(arguments: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(arguments) - set(allowed))
    if unknown:
        raise ArgumentError(f"Unknown argument {unknown[0]!r}; this tool takes: {', '.join(allowed)}.")


def _string(
    arguments: dict[str, Any], name: str, *, required: bool = True, empty: bool = False
) -> str | None:
    value = arguments.get(name)
    if value is None:
        if required:
            raise ArgumentError(f"`{name}` is required.")
        return None
    if not isinstance(value, str):
        raise ArgumentError(f"`{name}` must be a string, not {type(value).__name__}.")
    if not empty and not value.strip():
        raise ArgumentError(f"`{name}` is empty.")
    if len(value) > MAX_ARGUMENT_CHARS or "\x00" in value:
        raise ArgumentError(f"`{name}` is too long or holds a NUL character.")
    return value


def _required(arguments: dict[str, Any], name: str, *, empty: bool = False) -> str:
    value = _string(arguments, name, empty=empty)
    if value is None:  # _string raised already; this keeps the type narrow
        raise ArgumentError(f"`{name}` is required.")
    return value


def _integer(arguments: dict[str, Any], name: str, *, minimum: int, maximum: int | None = None) -> int | None:
    value = arguments.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentError(f"`{name}` must be a whole number, not {type(value).__name__}.")
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" to {maximum}" if maximum is not None else " or more"
        raise ArgumentError(f"`{name}` must be from {minimum}{upper}; it was {value}.")
    return value


def _boolean(arguments: dict[str, Any], name: str) -> bool:
    value = arguments.get(name, False)
    if not isinstance(value, bool):
        raise ArgumentError(f"`{name}` must be true or false.")
    return value


def _timeout(arguments: dict[str, Any]) -> int | None:
    return _integer(arguments, "timeout", minimum=1, maximum=int(settings.AGENTS_TOOL_MAX_TIMEOUT_SECONDS))


def _guarded(handler: Handler) -> Handler:
    """Bad calls become error outcomes the model reads; platform failures still raise."""

    def call(ctx: ToolCallContext, arguments: dict[str, Any]) -> ToolOutcome:
        try:
            if not isinstance(arguments, dict):
                raise ArgumentError("The arguments must be a JSON object.")
            return handler(ctx, arguments)
        except (ArgumentError, editor.EditorError) as error:
            return ToolOutcome(output=f"Error: {error}", error=True)
        except (Invalid, NotFound) as error:
            return ToolOutcome(output=f"Error: {error.message}", error=True)

    return call


# -- bash ----------------------------------------------------------------------------------------


def _bash(ctx: ToolCallContext, arguments: dict[str, Any]) -> ToolOutcome:
    _check_names(arguments, ("command", "timeout"))
    # Windows line ends (some models write them) would end every word with a stray \r.
    command = _required(arguments, "command").replace("\r\n", "\n")
    timeout = shell.timeout_for(ctx, _timeout(arguments))
    result = shell.bash_run(ctx, command, timeout)
    output = truncate_output(result.output.rstrip("\n")) or "(no output)"
    data: dict[str, Any] = {
        "exit_code": result.exit_code,
        "timed_out": result.timed_out,
        "duration_seconds": round(result.duration_seconds, 3),
    }
    if result.timed_out:
        footer = (
            f"[Timed out after {timeout:g} s: the command was killed. The shell's directory and variables"
            " are as they were before it. Run long jobs in the background (nohup ... > log 2>&1 &)"
            " or give a longer timeout.]"
        )
    else:
        data["cwd"] = result.cwd
        footer = f"[exit code {result.exit_code}" + (
            f"; working directory {result.cwd}]" if result.cwd else "]"
        )
    return ToolOutcome(output=f"{output}\n{footer}", error=result.timed_out, data=data)


def _bash_risk(arguments: dict[str, Any]) -> str | None:
    command = arguments.get("command") if isinstance(arguments, dict) else None
    return risk_reason(command) if isinstance(command, str) else None


BASH = ToolSpec(
    name="bash",
    description=(
        "Run a shell command in the workspace with bash, in a session that lasts for the whole run: the"
        " working directory, exported and other variables, and shell functions carry over from one call to"
        " the next (so `cd src` stays in effect; shell options like `set -e` do not). The session starts in"
        " /workspace, the repository. Standard output and error come back together, followed by the exit"
        " code and the working directory. Each call runs until its command ends, up to `timeout` seconds"
        " (then it is killed); start servers or long jobs in the background with their output in a file"
        " (`nohup cmd > /tmp/cmd.log 2>&1 &`) and read the file later. Commands cannot read input: use"
        " non-interactive flags (`-y`, `--no-pager`, `git --no-pager log`). Long output is cut in the middle,"
        " so filter it (grep, head, tail) when you only need part. To read or change files prefer"
        " str_replace_editor; to find text or files prefer search."
    ),
    parameters={
        "type": "object",
        "properties": {
            "command": {
                "type": "string",
                "description": "The command line; several lines, pipes, && and heredocs are fine.",
            },
            "timeout": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_TIMEOUT,
                "description": f"Seconds before the command is killed (default {DEFAULT_TIMEOUT}).",
            },
        },
        "required": ["command"],
        "additionalProperties": False,
    },
    handler=_guarded(_bash),
    risk=_bash_risk,
)


# -- python --------------------------------------------------------------------------------------


def _python(ctx: ToolCallContext, arguments: dict[str, Any]) -> ToolOutcome:
    _check_names(arguments, ("code", "timeout"))
    code = _required(arguments, "code")
    timeout = shell.timeout_for(ctx, _timeout(arguments))
    result = shell.python_run(ctx, code, timeout)
    status = {0: "ok", 1: "raised", 3: "ok", 124: "interrupted", 137: "killed"}.get(
        result.exit_code, "failed"
    )
    if result.timed_out and status not in ("interrupted", "killed"):
        status = "killed"
    output = truncate_output(result.output.rstrip("\n")) or "(no output)"
    failed = status == "failed"
    return ToolOutcome(
        output=output,
        error=failed or result.timed_out,
        data={"status": status, "exit_code": result.exit_code, "fresh_interpreter": result.exit_code == 3},
    )


def _python_risk(arguments: dict[str, Any]) -> str | None:
    code = arguments.get("code") if isinstance(arguments, dict) else None
    return python_risk_reason(code) if isinstance(code, str) else None


PYTHON = ToolSpec(
    name="python",
    description=(
        "Run Python 3 code in an interpreter that lasts for the whole run, like a notebook: variables,"
        " imports and functions defined in one call are there in the next. It starts in /workspace, where"
        " the repository's modules import. What the code prints comes back (also the output of programs it"
        " starts), and the value of a last bare expression is shown as the Python prompt shows it. An"
        " exception comes back as its traceback; the interpreter keeps running. Code that runs past"
        " `timeout` seconds is interrupted (KeyboardInterrupt). Use it for calculations, data inspection and"
        " quick experiments; run the project's scripts and tests with bash."
    ),
    parameters={
        "type": "object",
        "properties": {
            "code": {"type": "string", "description": "Python source to run, one or more statements."},
            "timeout": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_TIMEOUT,
                "description": f"Seconds before the code is interrupted (default {DEFAULT_TIMEOUT}).",
            },
        },
        "required": ["code"],
        "additionalProperties": False,
    },
    handler=_guarded(_python),
    risk=_python_risk,
)


# -- str_replace_editor --------------------------------------------------------------------------

EDITOR_COMMANDS = ("view", "create", "str_replace", "insert", "undo_edit")
EDITOR_ARGUMENTS = ("command", "path", "file_text", "old_str", "new_str", "insert_line", "view_range")


def _editor(ctx: ToolCallContext, arguments: dict[str, Any]) -> ToolOutcome:
    _check_names(arguments, EDITOR_ARGUMENTS)
    command = _required(arguments, "command")
    if command not in EDITOR_COMMANDS:
        raise ArgumentError(f"`command` must be one of {', '.join(EDITOR_COMMANDS)}; it was {command!r}.")
    path = _required(arguments, "path")
    relative = editor.workspace_relative(path.strip())
    checked: dict[str, Any] = {}
    if command == "create":
        checked["file_text"] = _required(arguments, "file_text", empty=True)
    elif command == "str_replace":
        checked["old_str"] = _required(arguments, "old_str", empty=True)
        checked["new_str"] = _string(arguments, "new_str", required=False, empty=True)
    elif command == "insert":
        checked["insert_line"] = _integer(arguments, "insert_line", minimum=0)
        if checked["insert_line"] is None:
            raise ArgumentError("`insert_line` is required: the line after which to insert (0: at the top).")
        checked["new_str"] = _required(arguments, "new_str", empty=True)
    elif command == "view" and arguments.get("view_range") is not None:
        view_range = arguments["view_range"]
        if (
            not isinstance(view_range, list)
            or len(view_range) != 2
            or not all(isinstance(item, int) and not isinstance(item, bool) for item in view_range)
        ):
            raise ArgumentError("`view_range` must be two line numbers, [first, last] (last -1: to the end).")
        checked["view_range"] = view_range
    return editor.run_command(ctx, command, relative, checked)


EDITOR = ToolSpec(
    name="str_replace_editor",
    description=(
        "View, create and edit files in the workspace. Paths are under /workspace (absolute, or relative to"
        " /workspace). Commands:\n"
        "- view: a file with line numbers (optionally `view_range` [first, last], last -1 for the end), or a"
        " directory's files two levels deep.\n"
        "- create: a new file with `file_text` (refused if the file exists).\n"
        "- str_replace: replace `old_str` with `new_str` (empty or left out: delete it). `old_str` must match"
        " the file exactly, whitespace and indentation included, and occur exactly once: include enough"
        " surrounding lines to make it unique. Do not include the line numbers `view` shows.\n"
        "- insert: insert `new_str` after line `insert_line` (0: at the top).\n"
        "- undo_edit: revert the last change this tool made to the file (repeat to go further back).\n"
        "Each change answers with the changed lines as they now read."
    ),
    parameters={
        "type": "object",
        "properties": {
            "command": {"type": "string", "enum": list(EDITOR_COMMANDS)},
            "path": {"type": "string", "description": "e.g. /workspace/src/app.py"},
            "file_text": {"type": "string", "description": "create: the whole content of the new file."},
            "old_str": {"type": "string", "description": "str_replace: the exact text to replace."},
            "new_str": {
                "type": "string",
                "description": "str_replace: the replacement; insert: the text to insert.",
            },
            "insert_line": {
                "type": "integer",
                "minimum": 0,
                "description": "insert: the line number after which to insert (0: at the top).",
            },
            "view_range": {
                "type": "array",
                "items": {"type": "integer"},
                "minItems": 2,
                "maxItems": 2,
                "description": "view: [first, last] line numbers, 1-based; last -1 for the end of the file.",
            },
        },
        "required": ["command", "path"],
        "additionalProperties": False,
    },
    handler=_guarded(_editor),
)


# -- search --------------------------------------------------------------------------------------

GREP_SCRIPT = 'limit=$1; shift; grep "$@" | head -n "$limit"'
GLOB_SCRIPT = (
    'cd -- "$1" 2>/dev/null || { echo "No such directory: $1" >&2; exit 2; }; shopt -s globstar nullglob;'
    ' IFS=; for found in $2; do printf "%s\\n" "$found"; done | head -n "$3"'
)


def _search_root(path: str | None) -> str:
    if path is None or not path.strip():
        return editor.WORKSPACE
    path = path.strip()
    return posixpath.normpath(path if path.startswith("/") else f"{editor.WORKSPACE}/{path}")


def _search(ctx: ToolCallContext, arguments: dict[str, Any]) -> ToolOutcome:
    _check_names(arguments, ("pattern", "mode", "path", "include", "ignore_case", "max_results"))
    pattern = _required(arguments, "pattern")
    mode = arguments.get("mode", "grep")
    if mode not in ("grep", "glob"):
        raise ArgumentError(
            f"`mode` must be grep (search file contents) or glob (find files by name); it was {mode!r}."
        )
    root = _search_root(_string(arguments, "path", required=False))
    include = _string(arguments, "include", required=False)
    ignore_case = _boolean(arguments, "ignore_case")
    limit = _integer(arguments, "max_results", minimum=1, maximum=SEARCH_MAX_RESULTS) or 100
    if mode == "glob":
        if include is not None or ignore_case:
            raise ArgumentError("`include` and `ignore_case` apply to grep, not glob.")
        argv = ["bash", "-c", GLOB_SCRIPT, "agentyard-glob", root, pattern, str(limit + 1)]
    else:
        flags = ["-rnIP", "--color=never", "--exclude-dir=.git", "--exclude-dir=node_modules"]
        if ignore_case:
            flags.append("-i")
        if include:
            flags.append(f"--include={include}")
        argv = ["sh", "-c", GREP_SCRIPT, "agentyard-grep", str(limit + 1), *flags, "-e", pattern, "--", root]
    result = workspace_exec(
        actor=ctx.actor, workspace=ctx.workspace, argv=argv, timeout=SEARCH_TIMEOUT_SECONDS
    )
    lines = [line for line in result.stdout.splitlines() if line]
    if result.timed_out:
        return ToolOutcome(
            output=f"Error: the search took longer than {SEARCH_TIMEOUT_SECONDS:g} s;"
            " narrow `path` or the pattern.",
            error=True,
        )
    if not lines:
        problem = result.stderr.strip()
        if problem:
            return ToolOutcome(output=f"Error: {problem.splitlines()[0]}", error=True)
        what = "files match" if mode == "glob" else "lines match"
        return ToolOutcome(output=f"No {what} {pattern!r} under {root}.", data={"matches": 0})
    more = len(lines) > limit
    lines = lines[:limit]
    if mode == "grep":
        lines = [
            line if len(line) <= SEARCH_LINE_CHARS else line[:SEARCH_LINE_CHARS] + " …" for line in lines
        ]
        header = f"Lines matching {pattern!r} under {root} (path:line:text):"
    else:
        header = f"Files matching {pattern!r} under {root} (relative to it):"
    footer = f"\n[Only the first {limit} results are shown; narrow the search.]" if more else ""
    return ToolOutcome(
        output=truncate_output(header + "\n" + "\n".join(lines) + footer),
        data={"matches": len(lines), "more": more},
    )


SEARCH = ToolSpec(
    name="search",
    description=(
        "Find text in files, or files by name, under a directory (default /workspace).\n"
        "- mode grep (default): lines whose content matches `pattern`, a Perl-compatible regular expression"
        " (escape regex characters for literal text, e.g. `foo\\(`), as path:line:text. `include` keeps"
        " files whose name matches a glob (e.g. `*.py`); `ignore_case` as it says. Binary files, .git and"
        " node_modules are skipped.\n"
        "- mode glob: file paths matching the glob `pattern`, relative to `path`: `*.py` at the top only,"
        " `**/*.py` at any depth, `src/**/test_*.py`. Hidden files match only if the pattern names them.\n"
        "At most `max_results` results (default 100)."
    ),
    parameters={
        "type": "object",
        "properties": {
            "pattern": {"type": "string", "description": "The regular expression (grep) or glob (glob)."},
            "mode": {"type": "string", "enum": ["grep", "glob"], "default": "grep"},
            "path": {
                "type": "string",
                "description": "The directory (or file, for grep) to search; default /workspace.",
            },
            "include": {"type": "string", "description": "grep: only files whose name matches this glob."},
            "ignore_case": {"type": "boolean", "default": False},
            "max_results": {"type": "integer", "minimum": 1, "maximum": SEARCH_MAX_RESULTS, "default": 100},
        },
        "required": ["pattern"],
        "additionalProperties": False,
    },
    handler=_guarded(_search),
)


# -- think, finish --------------------------------------------------------------------------------


def _think(ctx: ToolCallContext, arguments: dict[str, Any]) -> ToolOutcome:
    _check_names(arguments, ("thought",))
    thought = _required(arguments, "thought")
    return ToolOutcome(output="Thought noted.", data={"thought": thought})


THINK = ToolSpec(
    name="think",
    description=(
        "Think out loud: plan the next steps, weigh hypotheses about a bug, or review what you have learned."
        " Nothing is run and nothing changes; the thought is recorded in the run's timeline."
    ),
    parameters={
        "type": "object",
        "properties": {"thought": {"type": "string", "description": "Your reasoning."}},
        "required": ["thought"],
        "additionalProperties": False,
    },
    handler=_guarded(_think),
)


def _finish(ctx: ToolCallContext, arguments: dict[str, Any]) -> ToolOutcome:
    _check_names(arguments, ("answer",))
    answer = _required(arguments, "answer")
    return ToolOutcome(output="Finished.", finish=answer)


FINISH = ToolSpec(
    name="finish",
    description=(
        "End the run when the task is done (or cannot be done), with `answer`: what you did and found,"
        " which files you changed, how you checked it (tests run and their result), and anything left"
        " open. Your file changes stay in the workspace for review. Call it once, as your last action."
    ),
    parameters={
        "type": "object",
        "properties": {"answer": {"type": "string", "description": "The summary for the person who asked."}},
        "required": ["answer"],
        "additionalProperties": False,
    },
    handler=_guarded(_finish),
)


# -- knowledge_search ------------------------------------------------------------------------------


def _knowledge(ctx: ToolCallContext, arguments: dict[str, Any]) -> ToolOutcome:
    from apps.knowledge.agent import TOOL_NAME, knowledge_search

    text = knowledge_search(ctx.organization, str(ctx.run.pk), arguments)
    failed = text.startswith(f"{TOOL_NAME} error:")
    return ToolOutcome(output=truncate_output(text), error=failed)


def _knowledge_spec() -> ToolSpec:
    from apps.knowledge.agent import TOOL

    return ToolSpec(
        name=TOOL.name,
        description=TOOL.description,
        parameters=dict(TOOL.parameters),
        handler=_guarded(_knowledge),
    )


def builtin_tools() -> list[ToolSpec]:
    """The built-in tools, in the order the model is offered them."""
    return [BASH, PYTHON, EDITOR, SEARCH, THINK, FINISH, _knowledge_spec()]
