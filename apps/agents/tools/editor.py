"""str_replace_editor: view, create and edit files of the workspace, with undo.

Files are read through the runtime's file API (paths under /workspace) and written by
one exec in the sandbox that first copies the file's previous bytes into the run's
state directory (`.../<run id>/undo/<hash of the path>/<n>`), so `undo_edit` works after
a worker restart and steps back through several edits of a file, newest first. Like the
shell session, the history lives until the sandbox stops (or the run's sessions end).

Every change answers with the edited lines (numbered, as `view` shows them) and puts
a unified diff in the outcome's data for the run's timeline.
"""

from __future__ import annotations

import difflib
import hashlib
import posixpath
from typing import Any

from django.conf import settings

from apps.agents.tools.base import ToolCallContext, ToolOutcome
from apps.agents.tools.shell import state_dir
from apps.core.errors import Invalid, NotFound
from apps.workspaces.selectors import workspace_path_read
from apps.workspaces.services import workspace_exec

WORKSPACE = "/workspace"
# Files the editor changes: text it can hold whole, with a margin under the exec output
# limit (undo reads the saved copy back through exec's stdout).
EDIT_LIMIT_BYTES = 512 * 1024
SNIPPET_CONTEXT = 4
DIRECTORY_ENTRIES = 400

# $1: the file's history directory, $2: the file. Keeps the file's bytes as they are (or a
# marker that it did not exist), then writes stdin into it in place, so its mode (an
# executable script stays executable) and any hard links are kept.
WRITE_KEEPING_HISTORY = """
mkdir -p "$1" || exit 125
entry=$(printf "%06d" $(( $(ls "$1" | wc -l) + 1 )))
if [ -e "$2" ]; then cp -- "$2" "$1/$entry" || exit 125; else : > "$1/$entry.absent" || exit 125; fi
mkdir -p -- "$(dirname -- "$2")" && cat > "$2"
"""
# $1, $2 as above. Puts back the newest kept version (exit 3: none) and prints what the file
# now holds, or "absent" on stderr when the undone edit had created it (it is deleted).
UNDO_FROM_HISTORY = """
entry=$(ls "$1" 2>/dev/null | sort | tail -n 1)
[ -n "$entry" ] || exit 3
case "$entry" in
  *.absent) rm -f -- "$2" && rm -f -- "$1/$entry" && printf absent >&2 ;;
  *) cat -- "$1/$entry" > "$2" && rm -f -- "$1/$entry" && cat -- "$2" ;;
esac
"""


class EditorError(Exception):
    """A call the model should change: the message says how."""


def workspace_relative(path: str) -> str:
    """`/workspace/src/a.py`, `src/a.py` or `./src/a.py` → `src/a.py`; anything outside the
    workspace is refused."""
    if not path or "\x00" in path:
        raise EditorError("Give the path of a file or directory under /workspace.")
    absolute = posixpath.normpath(path if path.startswith("/") else f"{WORKSPACE}/{path}")
    if absolute == WORKSPACE:
        return ""
    if not absolute.startswith(WORKSPACE + "/"):
        raise EditorError(
            f"{path} is outside the workspace: the editor works on files under {WORKSPACE}"
            " (use bash for anything else)."
        )
    return absolute[len(WORKSPACE) + 1 :]


def shown(relative: str) -> str:
    return f"{WORKSPACE}/{relative}" if relative else WORKSPACE


def numbered(text: str, first_line: int = 1) -> str:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return "\n".join(f"{number:6}\t{line}" for number, line in enumerate(lines, start=first_line))


def unified_diff(relative: str, before: str | None, after: str | None) -> str:
    """A unified diff as git shows it; None for a file that does not exist on that side."""
    lines = difflib.unified_diff(
        (before or "").splitlines(keepends=True),
        (after or "").splitlines(keepends=True),
        fromfile=f"a/{relative}" if before is not None else "/dev/null",
        tofile=f"b/{relative}" if after is not None else "/dev/null",
    )
    parts = []
    for line in lines:
        if not line.endswith("\n"):
            line += "\n\\ No newline at end of file\n"
        parts.append(line)
    return "".join(parts)


def _history_dir(ctx: ToolCallContext, relative: str) -> str:
    digest = hashlib.sha256(relative.encode()).hexdigest()[:24]
    return f"{state_dir(ctx)}/undo/{digest}"


def _read_text(ctx: ToolCallContext, relative: str) -> str | None:
    """The file's text, or None when it does not exist."""
    try:
        content = workspace_path_read(workspace=ctx.workspace, path=relative, limit=EDIT_LIMIT_BYTES)
    except NotFound:
        return None
    if content.data is None:
        kind = "a directory" if content.entries is not None else f"not a regular file ({content.entry.kind})"
        raise EditorError(f"{shown(relative)} is {kind}.")
    if content.truncated:
        raise EditorError(
            f"{shown(relative)} is larger than {EDIT_LIMIT_BYTES // 1024} KiB: too large for the editor;"
            " change it with bash (sed, python) instead."
        )
    try:
        return content.data.decode("utf-8")
    except UnicodeDecodeError:
        raise EditorError(
            f"{shown(relative)} is not UTF-8 text; the editor changes text files only."
        ) from None


def _write(ctx: ToolCallContext, relative: str, after: str) -> None:
    """Write the new content, keeping the old for undo, in one exec."""
    result = workspace_exec(
        actor=ctx.actor,
        workspace=ctx.workspace,
        argv=[
            "sh",
            "-c",
            WRITE_KEEPING_HISTORY,
            "agentyard-editor",
            _history_dir(ctx, relative),
            shown(relative),
        ],
        stdin=after.encode(),
        timeout=30,
    )
    if result.exit_code != 0:
        problem = (result.stderr or result.stdout).strip() or f"exit code {result.exit_code}"
        raise EditorError(f"{shown(relative)} could not be written: {problem}")


def _snippet(text: str, first: int, last: int) -> str:
    """Lines first..last (1-based) of text with some context, numbered."""
    lines = text.split("\n")
    start = max(1, first - SNIPPET_CONTEXT)
    end = min(len(lines), last + SNIPPET_CONTEXT)
    return numbered("\n".join(lines[start - 1 : end]), first_line=start)


def _changed(relative: str, before: str, after: str, summary: str, first: int, last: int) -> ToolOutcome:
    return ToolOutcome(
        output=f"{summary}\nThe lines around the change now read:\n{_snippet(after, first, last)}\n"
        "Check that the change is what you meant; undo_edit reverts it.",
        data={"path": shown(relative), "diff": unified_diff(relative, before, after)},
    )


# -- commands ------------------------------------------------------------------------------------


def view(ctx: ToolCallContext, relative: str, view_range: list[int] | None) -> ToolOutcome:
    try:
        content = workspace_path_read(workspace=ctx.workspace, path=relative, limit=EDIT_LIMIT_BYTES)
    except NotFound:
        raise EditorError(f"{shown(relative)} does not exist.") from None
    if content.entries is not None:
        if view_range is not None:
            raise EditorError("view_range applies to files, not directories.")
        return _view_directory(ctx, relative)
    if content.data is None:
        raise EditorError(f"{shown(relative)} is not a regular file ({content.entry.kind}).")
    try:
        text = content.data.decode("utf-8")
    except UnicodeDecodeError:
        return ToolOutcome(
            output=f"{shown(relative)} is a binary file of {content.entry.size} bytes; inspect it with bash"
            " (file, xxd, head -c)."
        )
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    first, last = 1, len(lines)
    if view_range is not None:
        first, last = view_range
        if last == -1:
            last = len(lines)
        if not 1 <= first <= max(len(lines), 1) or last < first or last > len(lines):
            raise EditorError(
                f"view_range {view_range} is outside the file, which has {len(lines)} lines: give"
                " [first, last] with 1 <= first <= last <= the line count, or last = -1 for the end."
            )
    body, shown_last = _within_limit(lines, first, last)
    note = ""
    if shown_last < last:
        note = (
            f"\n[Cut after line {shown_last} to keep the output short: see more with view_range"
            f" [{shown_last + 1}, {last}].]"
        )
        last = shown_last
    elif content.truncated:
        note = f"\n[Only the first {EDIT_LIMIT_BYTES // 1024} KiB of the file are shown.]"
    header = (
        f"{shown(relative)} (lines {first}-{last} of {len(lines)}):"
        if lines
        else f"{shown(relative)} is empty."
    )
    return ToolOutcome(output=f"{header}\n{body}{note}".rstrip("\n"))


def _within_limit(lines: list[str], first: int, last: int) -> tuple[str, int]:
    """Lines first..last numbered, stopping early at a line end when they would pass the
    output limit; and the last line shown."""
    limit = int(settings.AGENTS_TOOL_OUTPUT_CHARS)
    shown_lines: list[str] = []
    size = 0
    for number in range(first, last + 1):
        line = f"{number:6}\t{lines[number - 1]}"
        if shown_lines and size + len(line) + 1 > limit:
            return "\n".join(shown_lines), number - 1
        shown_lines.append(line)
        size += len(line) + 1
    return "\n".join(shown_lines), last


def _view_directory(ctx: ToolCallContext, relative: str) -> ToolOutcome:
    result = workspace_exec(
        actor=ctx.actor,
        workspace=ctx.workspace,
        argv=[
            "sh",
            "-c",
            'find . -mindepth 1 -maxdepth 2 -not -path "*/.*" -printf "%P%y\\n" 2>/dev/null'
            ' | sort | head -n "$1"',
            "agentyard-view",
            str(DIRECTORY_ENTRIES + 1),
        ],
        cwd=relative,
        timeout=30,
    )
    entries = []
    for line in result.stdout.splitlines():
        name, kind = line[:-1], line[-1:]
        entries.append(f"{name}/" if kind == "d" else name)
    more = ""
    if len(entries) > DIRECTORY_ENTRIES:
        entries = entries[:DIRECTORY_ENTRIES]
        more = f"\n[More entries not shown: list {shown(relative)} with bash (ls, find) to see them all.]"
    listing = "\n".join(entries) or "(empty)"
    return ToolOutcome(
        output=f"Files and directories in {shown(relative)}, two levels deep, hidden ones left out:\n"
        f"{listing}{more}"
    )


def create(ctx: ToolCallContext, relative: str, file_text: str) -> ToolOutcome:
    if not relative:
        raise EditorError("Give the path of the file to create.")
    before = _read_text_or_exists(ctx, relative)
    if before is not None:
        raise EditorError(
            f"{shown(relative)} already exists; `create` makes new files only. Change it with"
            " str_replace or insert (or delete it with bash first to replace it whole)."
        )
    _write(ctx, relative, file_text)
    count = len(file_text.splitlines())
    return ToolOutcome(
        output=f"Created {shown(relative)} ({count} line{'s' if count != 1 else ''}).",
        data={"path": shown(relative), "diff": unified_diff(relative, None, file_text)},
    )


def _read_text_or_exists(ctx: ToolCallContext, relative: str) -> str | None:
    try:
        return _read_text(ctx, relative)
    except EditorError:
        return ""  # exists, whatever it is


def str_replace(ctx: ToolCallContext, relative: str, old_str: str, new_str: str) -> ToolOutcome:
    before = _existing_text(ctx, relative)
    if old_str == "":
        raise EditorError("old_str is empty: give the exact text to replace (use insert to add lines).")
    if old_str == new_str:
        raise EditorError("old_str and new_str are the same: nothing would change.")
    count = before.count(old_str)
    if count == 0:
        hint = ""
        if old_str.strip() and old_str.strip() in before:
            hint = " It does appear with different leading or trailing whitespace: copy it exactly."
        raise EditorError(
            f"old_str was not found in {shown(relative)}; nothing was changed. It must match the file"
            f" exactly, including whitespace and indentation (view the file to copy it).{hint}"
        )
    if count > 1:
        lines = []
        start = 0
        while (found := before.find(old_str, start)) != -1:
            lines.append(str(before.count("\n", 0, found) + 1))
            start = found + 1
        raise EditorError(
            f"old_str occurs {count} times in {shown(relative)} (at lines {', '.join(lines)}); nothing was"
            " changed. Include more of the surrounding lines so it matches once."
        )
    offset = before.index(old_str)
    after = before[:offset] + new_str + before[offset + len(old_str) :]
    _write(ctx, relative, after)
    first = before.count("\n", 0, offset) + 1
    last = first + new_str.count("\n")
    return _changed(relative, before, after, f"Edited {shown(relative)}.", first, last)


def insert(ctx: ToolCallContext, relative: str, insert_line: int, new_str: str) -> ToolOutcome:
    before = _existing_text(ctx, relative)
    lines = before.split("\n") if before else []
    trailing_newline = before.endswith("\n")
    if trailing_newline:
        lines.pop()
    if not 0 <= insert_line <= len(lines):
        raise EditorError(
            f"insert_line {insert_line} is outside the file, which has {len(lines)} lines: give 0 to insert"
            f" at the top, or a line number up to {len(lines)} to insert after it."
        )
    added = new_str[:-1].split("\n") if new_str.endswith("\n") else new_str.split("\n")
    result = lines[:insert_line] + added + lines[insert_line:]
    after = "\n".join(result) + ("\n" if trailing_newline or not before else "")
    _write(ctx, relative, after)
    first = insert_line + 1
    return _changed(
        relative,
        before,
        after,
        f"Inserted {len(added)} line{'s' if len(added) != 1 else ''} into {shown(relative)}"
        f" after line {insert_line}.",
        first,
        first + len(added) - 1,
    )


def undo_edit(ctx: ToolCallContext, relative: str) -> ToolOutcome:
    current = _read_text_or_exists(ctx, relative)
    popped = workspace_exec(
        actor=ctx.actor,
        workspace=ctx.workspace,
        argv=[
            "sh",
            "-c",
            UNDO_FROM_HISTORY,
            "agentyard-editor",
            _history_dir(ctx, relative),
            shown(relative),
        ],
        timeout=30,
    )
    if popped.exit_code == 3:
        raise EditorError(
            f"There is no edit of {shown(relative)} to undo in this run (the history lasts until the"
            " workspace stops)."
        )
    if popped.exit_code != 0:
        raise EditorError(f"The edit history of {shown(relative)} could not be read: {popped.stderr.strip()}")
    if popped.stderr == "absent":
        return ToolOutcome(
            output=f"Undid the creation of {shown(relative)}: the file is deleted.",
            data={"path": shown(relative), "diff": unified_diff(relative, current, None)},
        )
    restored = popped.stdout
    return ToolOutcome(
        output=f"Undid the last edit of {shown(relative)}; it reads as before that edit"
        f" ({len(restored.splitlines())} lines).",
        data={"path": shown(relative), "diff": unified_diff(relative, current, restored)},
    )


def _existing_text(ctx: ToolCallContext, relative: str) -> str:
    if not relative:
        raise EditorError("Give the path of a file.")
    text = _read_text(ctx, relative)
    if text is None:
        raise EditorError(f"{shown(relative)} does not exist (create it with the create command).")
    return text


def run_command(ctx: ToolCallContext, command: str, relative: str, arguments: dict[str, Any]) -> ToolOutcome:
    """Dispatch one editor command (arguments already type-checked by the tool)."""
    try:
        if command == "view":
            return view(ctx, relative, arguments.get("view_range"))
        if command == "create":
            return create(ctx, relative, arguments["file_text"])
        if command == "str_replace":
            return str_replace(ctx, relative, arguments["old_str"], arguments.get("new_str") or "")
        if command == "insert":
            return insert(ctx, relative, arguments["insert_line"], arguments["new_str"])
        if command == "undo_edit":
            return undo_edit(ctx, relative)
    except Invalid as error:
        raise EditorError(error.message) from None
    raise EditorError(f"Unknown command {command!r}.")
