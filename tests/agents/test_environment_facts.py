"""What the agent is told about its workspace, read from the real sandbox with one exec:
the OS, toolchains with versions, environment variable names (never their values), the
repository's instructions file and git state."""

import json
from pathlib import Path

import pytest

from apps.agents.models import AgentRun
from apps.agents.tools.environment import INSTRUCTIONS_CHARS, environment_facts, environment_text
from apps.tenancy.audit import Actor
from tests.agents.tool_sandbox import Agent, agent_fixture, running_workspace  # noqa: F401 (a fixture)
from tests.conftest import World
from tests.workspaces.conftest import in_schema

pytestmark = pytest.mark.django_db


def _host_pretty_name() -> str:
    # The sandbox's /etc/os-release is the runtime host's, bound read-only.
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return ""


@pytest.mark.usefixtures("_distinct_sandbox_ids")
def test_facts_name_the_os_toolchains_env_names_instructions_and_git(
    world: World, runtime_server: object
) -> None:
    secret_env = {"API_TOKEN": "s3cret-value-123", "DEPLOY_STAGE": "qa"}
    with running_workspace(world, name="facts", env=secret_env) as workspace, in_schema(world.alpha):
        agent = Agent(world, workspace, run=AgentRun.objects.create(task="facts", workspace=workspace))
        setup = agent.call(
            "bash",
            command="printf '# Rules\\nRun tests with `make test`.\\n' > AGENTS.md"
            " && mkdir -p src && touch src/a.py && git init -q -b trunk && git add AGENTS.md"
            " && git -c user.name=t -c user.email=t@example.test commit -qm init"
            " && echo extra > untracked.txt",
        )
        assert setup.data["exit_code"] == 0, setup.output
        facts = environment_facts(workspace, Actor(user=world.alice))

    assert facts["os"] == _host_pretty_name()
    assert facts["cwd"] == "/workspace"
    assert facts["user"] == "sandbox"
    assert facts["tools"]["python3"].startswith("Python 3.")
    assert facts["tools"]["git"].startswith("git version ")
    assert {"API_TOKEN", "DEPLOY_STAGE", "PATH"} <= set(facts["env"])
    assert facts["instructions"] == {
        "path": "/workspace/AGENTS.md",
        "text": "# Rules\nRun tests with `make test`.\n",
        "truncated": False,
    }
    assert facts["git"] == {"branch": "trunk", "changed_files": 2}  # src/ and untracked.txt
    assert facts["files"] == [".git/", "AGENTS.md", "src/", "untracked.txt"]
    # Names only: no value of the workspace's environment reaches the prompt.
    assert "s3cret-value-123" not in json.dumps(facts)

    text = environment_text(facts, tool_names=["bash", "finish"])
    assert f"Operating system: {facts['os']}" in text
    assert "Environment variables set (names only): " in text
    assert "API_TOKEN" in text
    assert "Git: branch trunk, 2 changed or untracked files" in text
    assert "Tools you can call: bash, finish" in text
    assert text.endswith(
        "The repository's instructions, from /workspace/AGENTS.md:\n# Rules\nRun tests with `make test`."
    )
    assert "s3cret-value-123" not in text


def test_the_agentyard_instructions_file_is_used_without_agents_md_and_cut_when_long(agent: Agent) -> None:
    agent.call(
        "bash",
        command=f"mkdir -p .agentyard && head -c {INSTRUCTIONS_CHARS * 2} /dev/zero | tr '\\0' 'x'"
        " > .agentyard/instructions.md",
    )
    facts = environment_facts(agent.workspace)
    assert facts["instructions"]["path"] == "/workspace/.agentyard/instructions.md"
    assert facts["instructions"]["truncated"] is True
    assert facts["instructions"]["text"] == "x" * INSTRUCTIONS_CHARS
    assert facts["git"] is None
    assert "(cut; read the whole file with the editor)" in environment_text(facts)


def test_a_workspace_without_instructions_says_nothing_of_them(agent: Agent) -> None:
    facts = environment_facts(agent.workspace)
    assert facts["instructions"] is None
    assert facts["files"] == []
    assert "instructions" not in environment_text(facts)
