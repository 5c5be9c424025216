"""The built-in tools in a real bwrap sandbox, called as the run loop calls them: bash keeps
the run's shell session (directory, variables, functions) from one call to the next, python
keeps its interpreter, the editor changes files with diffs and undo, search finds text and
files, and a bad call is an error the model reads, never an exception."""

import pytest
from django.test import override_settings

from apps.agents.tools.builtin import builtin_tools, sessions_end, truncate_output
from apps.core.errors import Conflict
from apps.tenancy.audit import Actor
from apps.workspaces import services
from tests.agents.tool_sandbox import Agent, agent_fixture, running_workspace  # noqa: F401 (a fixture)

pytestmark = pytest.mark.django_db


def test_the_model_is_offered_every_builtin_tool_with_a_schema() -> None:
    specs = builtin_tools()
    names = [spec.name for spec in specs]
    assert names == ["bash", "python", "str_replace_editor", "search", "think", "finish", "knowledge_search"]
    for spec in specs:
        assert spec.parameters["type"] == "object"
        assert spec.description
        assert set(spec.parameters["required"]) <= set(spec.parameters["properties"])


# -- bash ------------------------------------------------------------------------------------------


def test_bash_keeps_directory_variables_and_functions_between_calls(agent: Agent) -> None:
    first = agent.call(
        "bash",
        command="mkdir -p src/pkg && cd src/pkg && export GREETING=hello && COUNT=41\n"
        'shout() { echo "$1!"; }\n'
        "echo set",
    )
    assert not first.error, first.output
    assert first.output == "set\n[exit code 0; working directory /workspace/src/pkg]"
    assert first.data["cwd"] == "/workspace/src/pkg"

    second = agent.call("bash", command='pwd; echo "$GREETING $((COUNT + 1))"; shout hi; env | grep GREETING')
    assert second.output.splitlines()[:4] == ["/workspace/src/pkg", "hello 42", "hi!", "GREETING=hello"]
    assert second.data["exit_code"] == 0


def test_bash_reports_the_exit_code_and_keeps_state_even_when_the_command_exits(agent: Agent) -> None:
    failed = agent.call("bash", command="cd ~ && export AFTER_EXIT=yes && echo oops >&2 && exit 3")
    assert failed.data["exit_code"] == 3
    assert failed.output == "oops\n[exit code 3; working directory /home/sandbox]"
    # A failing command is a result for the model to read, not a failure of the tool.
    assert failed.error is False

    after = agent.call("bash", command="pwd; echo $AFTER_EXIT; false")
    assert after.output == "/home/sandbox\nyes\n[exit code 1; working directory /home/sandbox]"


def test_each_run_has_its_own_shell_session(agent: Agent) -> None:
    agent.call("bash", command="cd ~ && export MINE=first-run")
    other = agent.new_run()
    seen = agent.call("bash", run=other, command='pwd; echo "[$MINE]"')
    assert seen.output.splitlines()[:2] == ["/workspace", "[]"]


def test_a_command_past_its_timeout_is_killed_and_the_session_stays_as_before(agent: Agent) -> None:
    agent.call("bash", command="cd ~")
    slow = agent.call("bash", command="cd /; echo started; sleep 30", timeout=1)
    assert slow.error is True
    assert slow.data["timed_out"] is True
    assert slow.output.startswith("started\n[Timed out after 1 s: the command was killed.")
    assert slow.data["duration_seconds"] < 10
    assert agent.call("bash", command="pwd").output.startswith("/home/sandbox\n")


def test_the_timeout_is_cut_to_what_is_left_of_the_runs_time(agent: Agent) -> None:
    spec = agent.tools["bash"]
    outcome = spec.handler(agent.context(seconds_left=1.5), {"command": "sleep 20", "timeout": 600})
    assert outcome.data["timed_out"] is True
    assert outcome.data["duration_seconds"] < 10


def test_long_output_is_cut_in_the_middle_with_a_marker(agent: Agent) -> None:
    with override_settings(AGENTS_TOOL_OUTPUT_CHARS=2000):
        outcome = agent.call("bash", command="seq 1 100000")
    body, footer = outcome.output.rsplit("\n", 1)
    assert footer == "[exit code 0; working directory /workspace]"
    assert body.startswith("1\n2\n3\n")
    assert body.endswith("99999\n100000")
    assert "characters cut from the middle of the output (limit 2000)" in body
    assert len(body) < 2200


def test_truncation_leaves_short_text_alone_and_keeps_both_ends_of_long_text() -> None:
    assert truncate_output("short", limit=10) == "short"
    cut = truncate_output("a" * 50 + "b" * 50, limit=20)
    assert cut.startswith("a" * 10)
    assert cut.endswith("b" * 10)
    assert "[... 80 characters cut" in cut


def test_bash_reads_a_command_of_any_size_and_shape(agent: Agent) -> None:
    script = "cat > big.txt <<'EOF'\n" + "\n".join(
        f"line {n} with 'quotes' and $dollars" for n in range(5000)
    )
    script += "\nEOF\nwc -l < big.txt; tail -n 1 big.txt"
    outcome = agent.call("bash", command=script)
    assert outcome.output.splitlines()[:2] == ["5000", "line 4999 with 'quotes' and $dollars"]


def test_a_command_written_with_windows_line_ends_runs_as_written(agent: Agent) -> None:
    outcome = agent.call("bash", command="echo one\r\necho two\r\n")
    assert outcome.output == "one\ntwo\n[exit code 0; working directory /workspace]"


# -- python --------------------------------------------------------------------------------------


def test_python_keeps_its_variables_between_calls(agent: Agent) -> None:
    first = agent.call("python", code="x = 41")
    assert not first.error, first.output
    assert "Started a Python interpreter for this run" in first.output
    second = agent.call("python", code="print(x + 1)")
    assert second.output == "42"
    assert second.data["status"] == "ok"
    assert second.data["fresh_interpreter"] is False


def test_python_shows_the_last_expression_and_output_of_programs_it_starts(agent: Agent) -> None:
    agent.call("python", code="import os, subprocess\nitems = [1, 2]")
    outcome = agent.call("python", code="subprocess.run(['echo', 'from a child'])\nos.getcwd(), items")
    assert outcome.output.splitlines()[0] == "from a child"
    assert outcome.output.splitlines()[-1] == "('/workspace', [1, 2])"


def test_an_exception_is_a_traceback_and_the_interpreter_lives_on(agent: Agent) -> None:
    agent.call("python", code="kept = 'still here'")
    raised = agent.call("python", code="def broken():\n    return 1 / 0\nbroken()")
    assert raised.data["status"] == "raised"
    assert "ZeroDivisionError: division by zero" in raised.output
    assert "in broken" in raised.output
    assert "agentyard/runs" not in raised.output  # none of the tool's own frames
    exited = agent.call("python", code="import sys; sys.exit(2)")
    assert "SystemExit: 2" in exited.output
    assert agent.call("python", code="kept").output == "'still here'"


def test_python_code_past_its_timeout_is_interrupted_and_earlier_names_stay(agent: Agent) -> None:
    agent.call("python", code="before = 7")
    slow = agent.call("python", code="import time\nstarted = True\ntime.sleep(60)", timeout=1)
    assert slow.data["status"] == "interrupted"
    assert slow.error is True
    assert "KeyboardInterrupt" in slow.output
    assert "Interrupted after 1 s" in slow.output
    assert agent.call("python", code="before, started").output == "(7, True)"


def test_each_run_has_its_own_interpreter(agent: Agent) -> None:
    agent.call("python", code="secret_of_first = 1")
    other = agent.new_run()
    outcome = agent.call("python", run=other, code="'secret_of_first' in globals()")
    assert outcome.output.splitlines()[-1] == "False"


# -- str_replace_editor --------------------------------------------------------------------------


def test_create_view_edit_insert_and_undo_a_file(agent: Agent) -> None:
    path = "/workspace/app/calc.py"
    created = agent.call(
        "str_replace_editor", command="create", path=path, file_text="def add(a, b):\n    return a - b\n"
    )
    assert not created.error, created.output
    assert created.data["path"] == path
    assert created.data["diff"].startswith("--- /dev/null\n+++ b/app/calc.py\n")
    assert "+    return a - b\n" in created.data["diff"]

    viewed = agent.call("str_replace_editor", command="view", path="app/calc.py")
    assert viewed.output.splitlines()[1:] == ["     1\tdef add(a, b):", "     2\t    return a - b"]

    edited = agent.call(
        "str_replace_editor", command="str_replace", path=path, old_str="return a - b", new_str="return a + b"
    )
    assert not edited.error, edited.output
    assert edited.data["diff"] == (
        "--- a/app/calc.py\n+++ b/app/calc.py\n@@ -1,2 +1,2 @@\n def add(a, b):\n"
        "-    return a - b\n+    return a + b\n"
    )
    assert "     2\t    return a + b" in edited.output

    inserted = agent.call(
        "str_replace_editor", command="insert", path=path, insert_line=0, new_str='"""Arithmetic."""\n'
    )
    assert not inserted.error, inserted.output
    ran = agent.call("bash", command="cat app/calc.py")
    assert ran.output.startswith('"""Arithmetic."""\ndef add(a, b):\n    return a + b\n[exit code 0')

    # Undo steps back through the edits, newest first, down to before the file existed.
    agent.call("str_replace_editor", command="undo_edit", path=path)
    assert agent.call("bash", command="cat app/calc.py").output.startswith(
        "def add(a, b):\n    return a + b\n"
    )
    undone = agent.call("str_replace_editor", command="undo_edit", path=path)
    assert "-    return a + b\n+    return a - b\n" in undone.data["diff"]
    assert agent.call("bash", command="cat app/calc.py").output.startswith(
        "def add(a, b):\n    return a - b\n"
    )
    removed = agent.call("str_replace_editor", command="undo_edit", path=path)
    assert "the file is deleted" in removed.output
    assert agent.call("bash", command="test -e app/calc.py").data["exit_code"] == 1
    nothing = agent.call("str_replace_editor", command="undo_edit", path=path)
    assert nothing.error is True
    assert "no edit of /workspace/app/calc.py to undo" in nothing.output


def test_editing_a_script_keeps_it_executable(agent: Agent) -> None:
    agent.call("bash", command="printf '#!/bin/sh\\necho old\\n' > run.sh && chmod 755 run.sh")
    edited = agent.call(
        "str_replace_editor", command="str_replace", path="run.sh", old_str="old", new_str="new"
    )
    assert not edited.error, edited.output
    ran = agent.call("bash", command="./run.sh && stat -c %a run.sh")
    assert ran.output.splitlines()[:2] == ["new", "755"]
    agent.call("str_replace_editor", command="undo_edit", path="run.sh")
    assert agent.call("bash", command="./run.sh").output.startswith("old\n")


def test_str_replace_refuses_text_that_is_missing_or_not_unique(agent: Agent) -> None:
    agent.call("str_replace_editor", command="create", path="dup.txt", file_text="same\nother\nsame\n")
    missing = agent.call(
        "str_replace_editor", command="str_replace", path="dup.txt", old_str="absent", new_str="x"
    )
    assert missing.error is True
    assert "old_str was not found in /workspace/dup.txt; nothing was changed" in missing.output
    twice = agent.call(
        "str_replace_editor", command="str_replace", path="dup.txt", old_str="same", new_str="x"
    )
    assert twice.error is True
    assert "occurs 2 times in /workspace/dup.txt (at lines 1, 3)" in twice.output
    spaced = agent.call(
        "str_replace_editor", command="str_replace", path="dup.txt", old_str="  other  ", new_str="x"
    )
    assert "different leading or trailing whitespace" in spaced.output
    assert agent.call("bash", command="cat dup.txt").output.startswith("same\nother\nsame\n[exit")


def test_the_editor_refuses_paths_outside_the_workspace_and_overwriting_with_create(agent: Agent) -> None:
    outside = agent.call("str_replace_editor", command="view", path="/etc/passwd")
    assert outside.error is True
    assert "outside the workspace" in outside.output
    escaping = agent.call("str_replace_editor", command="create", path="../escape.txt", file_text="x")
    assert escaping.error is True
    agent.call("str_replace_editor", command="create", path="keep.txt", file_text="original\n")
    again = agent.call("str_replace_editor", command="create", path="keep.txt", file_text="replaced\n")
    assert again.error is True
    assert "already exists" in again.output
    missing = agent.call("str_replace_editor", command="view", path="nope.txt")
    assert missing.error is True
    assert "/workspace/nope.txt does not exist" in missing.output


def test_view_lists_a_directory_and_a_range_of_lines(agent: Agent) -> None:
    agent.call(
        "bash", command="mkdir -p pkg/sub .hidden && touch pkg/a.py pkg/sub/deep.py && seq 1 50 > n.txt"
    )
    listing = agent.call("str_replace_editor", command="view", path="/workspace")
    lines = listing.output.splitlines()
    assert {"pkg/", "pkg/a.py", "pkg/sub/", "n.txt"} <= set(lines)
    assert "pkg/sub/deep.py" not in lines  # two levels deep
    assert not any(".hidden" in line for line in lines)
    ranged = agent.call("str_replace_editor", command="view", path="n.txt", view_range=[48, -1])
    assert ranged.output.splitlines() == [
        "/workspace/n.txt (lines 48-50 of 50):",
        "    48\t48",
        "    49\t49",
        "    50\t50",
    ]
    wrong = agent.call("str_replace_editor", command="view", path="n.txt", view_range=[60, 70])
    assert wrong.error is True
    assert "which has 50 lines" in wrong.output


# -- search --------------------------------------------------------------------------------------


def test_search_finds_lines_by_regex_and_files_by_glob(agent: Agent) -> None:
    agent.call(
        "bash",
        command="mkdir -p src/deep && printf 'import os\\ndef main():\\n    return 42\\n' > src/app.py"
        " && printf 'def helper():\\n    pass\\n' > src/deep/util.py && echo 'def nothing' > notes.txt",
    )
    found = agent.call("search", pattern=r"^def \w+\(", include="*.py")
    assert found.output.splitlines()[0] == r"Lines matching '^def \\w+\\(' under /workspace (path:line:text):"
    assert sorted(found.output.splitlines()[1:]) == [
        "/workspace/src/app.py:2:def main():",
        "/workspace/src/deep/util.py:1:def helper():",
    ]
    assert found.data["matches"] == 2

    files = agent.call("search", mode="glob", pattern="**/*.py")
    assert files.output.splitlines()[1:] == ["src/app.py", "src/deep/util.py"]
    top = agent.call("search", mode="glob", pattern="*.txt")
    assert top.output.splitlines()[1:] == ["notes.txt"]

    none = agent.call("search", pattern="no such text anywhere", path="src")
    assert none.error is False
    assert none.output == "No lines match 'no such text anywhere' under /workspace/src."
    capped = agent.call("search", pattern="def", max_results=1)
    assert "Only the first 1 results are shown" in capped.output


def test_search_reports_a_broken_pattern_or_path_as_an_error(agent: Agent) -> None:
    broken = agent.call("search", pattern="foo(")
    assert broken.error is True
    assert broken.output.startswith("Error: grep:")
    missing = agent.call("search", pattern="x", path="/workspace/missing-dir")
    assert missing.error is True
    assert "No such file or directory" in missing.output


# -- think, finish, knowledge --------------------------------------------------------------------


def test_think_records_and_finish_ends_with_the_answer(agent: Agent) -> None:
    thought = agent.call("think", thought="The bug is in add().")
    assert (thought.error, thought.finish, thought.data) == (False, None, {"thought": "The bug is in add()."})
    finished = agent.call("finish", answer="Fixed add(); tests pass.")
    assert finished.finish == "Fixed add(); tests pass."
    assert finished.error is False


def test_knowledge_search_answers_a_bad_call_with_what_to_fix(agent: Agent) -> None:
    outcome = agent.call("knowledge_search", query="migrations", k=99)
    assert outcome.error is True
    assert "`k` is a whole number from 1 to 10" in outcome.output


# -- bad calls -----------------------------------------------------------------------------------

BAD_CALLS = [
    ("bash", {}, "`command` is required."),
    ("bash", {"command": 5}, "`command` must be a string, not int."),
    ("bash", {"command": "ls", "timeout": "soon"}, "`timeout` must be a whole number"),
    ("bash", {"command": "ls", "timeout": 0}, "`timeout` must be from 1 to"),
    ("bash", {"command": "ls", "cwd": "/"}, "Unknown argument 'cwd'; this tool takes: command, timeout."),
    ("python", {"code": None}, "`code` is required."),
    ("python", {"code": "   "}, "`code` is empty."),
    ("str_replace_editor", {"command": "frobnicate", "path": "a"}, "`command` must be one of view, create"),
    ("str_replace_editor", {"command": "view"}, "`path` is required."),
    ("str_replace_editor", {"command": "create", "path": "a.txt"}, "`file_text` is required."),
    ("str_replace_editor", {"command": "insert", "path": "a", "new_str": "x"}, "`insert_line` is required"),
    (
        "str_replace_editor",
        {"command": "insert", "path": "a", "insert_line": "3", "new_str": "x"},
        "whole number",
    ),
    ("str_replace_editor", {"command": "view", "path": "a", "view_range": [1]}, "`view_range` must be two"),
    ("str_replace_editor", {"command": "str_replace", "path": "a"}, "`old_str` is required."),
    ("search", {"pattern": "x", "mode": "regex"}, "`mode` must be grep"),
    ("search", {"pattern": "x", "max_results": 10_000}, "`max_results` must be from 1 to 500"),
    ("search", {"pattern": "x", "ignore_case": "yes"}, "`ignore_case` must be true or false."),
    ("think", {"thought": ["a"]}, "`thought` must be a string, not list."),
    ("finish", {}, "`answer` is required."),
    ("knowledge_search", {"question": "x"}, "Unknown argument 'question'"),
]


@pytest.mark.parametrize(("tool", "arguments", "message"), BAD_CALLS)
def test_a_bad_call_is_an_error_outcome_saying_what_to_fix(
    agent: Agent, tool: str, arguments: dict[str, object], message: str
) -> None:
    outcome = agent.call_raw(tool, arguments)
    assert outcome.error is True
    assert message in outcome.output
    assert outcome.finish is None


def test_arguments_that_are_not_an_object_are_an_error_outcome(agent: Agent) -> None:
    for tool in ("bash", "python", "str_replace_editor", "search", "think", "finish"):
        outcome = agent.call_raw(tool, ["ls"])
        assert (outcome.error, outcome.output) == (True, "Error: The arguments must be a JSON object.")


def test_a_directory_removed_under_the_shell_sends_it_back_to_the_workspace(agent: Agent) -> None:
    agent.call("bash", command="mkdir -p gone && cd gone && rmdir ../gone")
    outcome = agent.call("bash", command="pwd")
    assert outcome.output == (
        "(/workspace/gone is gone; the shell is in /workspace.)\n"
        "/workspace\n[exit code 0; working directory /workspace]"
    )


def test_a_stopped_workspace_is_a_platform_failure_not_a_model_error(agent: Agent) -> None:
    services.workspace_stop(
        actor=Actor(user=agent.world.alice), organization=agent.world.alpha, workspace=agent.workspace
    )
    with pytest.raises(Conflict) as raised:
        agent.call("bash", command="ls")
    assert raised.value.code == "workspace_not_running"


def test_ending_the_runs_sessions_stops_its_interpreter_and_forgets_its_shell(agent: Agent) -> None:
    agent.call("python", code="kept = 1")
    agent.call("bash", command="cd ~ && export LEFT=over")
    other = agent.new_run()
    agent.call("python", run=other, code="theirs = 2")

    sessions_end(workspace=agent.workspace, run_id=agent.run.pk)
    sessions_end(workspace=agent.workspace, run_id=agent.run.pk)  # again: nothing left, no error

    processes = agent.call("bash", run=other, command="ps -eo args | grep '[s]erve /tmp/agentyard'")
    assert str(other.pk) in processes.output
    assert str(agent.run.pk) not in processes.output
    assert agent.call("python", run=other, code="theirs").output == "2"
    assert agent.call("bash", command='pwd; echo "[$LEFT]"').output.startswith("/workspace\n[]\n")


def test_viewing_a_long_file_stops_at_the_output_limit_and_says_how_to_see_more(agent: Agent) -> None:
    agent.call("bash", command="seq 1 5000 > long.txt")
    with override_settings(AGENTS_TOOL_OUTPUT_CHARS=1000):
        viewed = agent.call("str_replace_editor", command="view", path="long.txt")
    lines = viewed.output.splitlines()
    assert lines[0].startswith("/workspace/long.txt (lines 1-")
    assert lines[1] == "     1\t1"
    shown_last = int(lines[-2].split("\t")[1])
    assert lines[-1] == (
        f"[Cut after line {shown_last} to keep the output short:"
        f" see more with view_range [{shown_last + 1}, 5000].]"
    )
    assert len(viewed.output) < 1200


def test_knowledge_search_finds_what_the_run_noted(agent: Agent) -> None:
    from apps.knowledge.agent import remember

    remember(str(agent.run.pk), "The deploy script lives in ops/deploy.sh and needs STAGE set.")
    outcome = agent.call("knowledge_search", query="where is the deploy script?", k=3)
    assert outcome.error is False, outcome.output
    assert "The deploy script lives in ops/deploy.sh and needs STAGE set." in outcome.output
    assert "this run's note" in outcome.output


def test_a_background_job_outlives_the_call_that_started_it(agent: Agent) -> None:
    started = agent.call(
        "bash",
        command="nohup sh -c 'echo started > bg.txt; sleep 30; echo finished >> bg.txt' > /dev/null 2>&1 &\n"
        "echo launched",
    )
    assert started.output == "launched\n[exit code 0; working directory /workspace]"
    later = agent.call("bash", command="sleep 1; cat bg.txt; ps -eo args | grep -c '^[s]leep 30'")
    assert later.output.splitlines()[:2] == ["started", "1"]
