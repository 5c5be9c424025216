"""Acceptance: a scripted model (the OpenAI fake replaying fixed tool calls) fixes a
failing test in a sample repository inside a real sandbox, driven by the real worker;
the run ends succeeded with the diff the script wrote."""

from __future__ import annotations

from django_tenants.utils import schema_context

from apps.agents import services
from apps.agents.models import AgentRun, Event, ToolStat
from apps.workspaces.services import workspace_exec
from tests.agents.engine import as_alice, bash, events, finish, start, tool, wait_state
from tests.conftest import World


def _calls(world: World, tool_name: str) -> int:
    with schema_context(world.alpha.schema_name):
        stat = ToolStat.objects.filter(tool=tool_name).first()
        return stat.calls if stat else 0


def test_a_scripted_agent_fixes_the_failing_test_and_the_run_ends_with_its_diff(
    live_db: World, llm, sample_workspace
) -> None:
    llm.script(
        bash("cd /workspace/sample && python3 -m unittest 2>&1"),
        tool(
            "str_replace_editor",
            command="str_replace",
            path="/workspace/sample/calc.py",
            old_str="    return a - b",
            new_str="    return a + b",
        ),
        bash("cd /workspace/sample && python3 -m unittest 2>&1"),
        finish("add() subtracted; it adds now and the test passes."),
    )
    bash_calls_before = _calls(live_db, "bash")
    run = start(live_db, sample_workspace, "Make the failing test in sample/ pass.")

    run = wait_state(live_db, run, timeout=90)

    assert run.state == AgentRun.State.SUCCEEDED, run.state_reason
    assert run.result["answer"] == "add() subtracted; it adds now and the test passes."
    assert run.result["path"] == "sample"
    diff = run.result["diff"]
    told = [(e.kind, e.payload) for e in events(live_db, run) if e.kind in ("action", "observation", "error")]
    assert "-    return a - b\n+    return a + b\n" in diff, told
    assert "calc.py" in diff
    assert "test_calc.py" not in diff
    with schema_context(live_db.alpha.schema_name):
        git_diff = workspace_exec(
            actor=as_alice(live_db), workspace=sample_workspace, command="git diff --no-color", cwd="sample"
        ).stdout
    assert diff == git_diff
    # The agent's test runs leave no bytecode behind (a stale cache would also have run the
    # old add() when the edit landed within the second of the first run).
    with schema_context(live_db.alpha.schema_name):
        caches = workspace_exec(
            actor=as_alice(live_db),
            workspace=sample_workspace,
            command="find . -name __pycache__",
            cwd="sample",
        ).stdout
    assert caches == ""
    assert run.steps == 4
    assert run.input_tokens > 0
    assert run.output_tokens > 0
    assert run.cost > 0

    observations = [event.payload for event in events(live_db, run, Event.Kind.OBSERVATION)]
    assert [observation["tool"] for observation in observations] == [
        "bash", "str_replace_editor", "bash", "finish",
    ]  # fmt: skip
    assert "FAILED" in observations[0]["output"]
    assert observations[0]["data"]["exit_code"] != 0
    assert "OK" in observations[2]["output"]
    assert observations[2]["data"]["exit_code"] == 0
    # Each step's model and tool time is on its events, so the platform's share can be told apart.
    actions = [event.payload for event in events(live_db, run, Event.Kind.ACTION)]
    assert all(action["model_ms"] > 0 for action in actions)
    assert all(observation["data"]["tool_ms"] > 0 for observation in observations)
    assert observations[0]["data"]["tool_ms"] >= observations[0]["data"]["duration_seconds"] * 1000
    history = events(live_db, run)
    assert [event.seq for event in history] == list(range(1, len(history) + 1))
    assert [e.payload["state"] for e in history if e.kind == Event.Kind.STATE] == [
        "queued",
        "running",
        "succeeded",
    ]

    assert _calls(live_db, "bash") == bash_calls_before + 2  # the tool's usage count

    # What the model was told: the template with the task, the workspace's facts, the tools.
    first = llm.chat_requests[0].json
    system = first["messages"][0]["content"]
    assert "Make the failing test in sample/ pass." in system
    assert "Operating system:" in system
    assert {t["function"]["name"] for t in first["tools"]} >= {"bash", "str_replace_editor", "finish"}
    # The second request carries the first step's call and its result.
    second = llm.chat_requests[1].json["messages"]
    assert second[-2]["tool_calls"][0]["function"]["name"] == "bash"
    assert second[-1]["role"] == "tool"
    assert "FAILED" in second[-1]["content"]


def test_committing_a_finished_runs_diff_records_the_commit(live_db: World, llm, sample_workspace) -> None:
    llm.script(
        bash("cd /workspace/sample && sed -i 's/a - b/a + b/' calc.py"),
        finish("Fixed."),
    )
    run = wait_state(live_db, start(live_db, sample_workspace, "Fix add()."), timeout=60)
    assert run.state == AgentRun.State.SUCCEEDED, run.state_reason

    with schema_context(live_db.alpha.schema_name):
        committed = services.run_commit(
            actor=as_alice(live_db), organization=live_db.alpha, run=run, message="Fix add()"
        )
        log = workspace_exec(
            actor=as_alice(live_db),
            workspace=sample_workspace,
            command="git log -1 --format='%H %s' && git status --porcelain",
            cwd="sample",
        ).stdout
    assert len(committed.result["commit"]) == 40
    assert log.strip() == f"{committed.result['commit']} Fix add()"
