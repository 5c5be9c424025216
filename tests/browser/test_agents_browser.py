"""A member starts an agent from the browser and watches it work: the run page draws each
event as the real worker writes it (the model is the scripted OpenAI fake, the commands
run in a real sandbox), stops for approval of a risky command, goes on when approved,
finishes with its diff and cost, and the member commits the diff from the page."""

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from apps.agents.models import AgentProfile, AgentRun
from apps.workspaces.models import Workspace
from tests.agents.cleanup import forget_experience
from tests.agents.engine import (  # noqa: F401 (fixtures)
    _distinct_sandbox_ids,
    agent_fake,
    agent_llm,
    bash,
    fetch,
    finish,
    llm,
    profile,
    remove_profile,
    sample_workspace,
    tool,
)
from tests.conftest import LiveServer, World
from tests.fakes.openai_server import FakeOpenAI

pytestmark = pytest.mark.browser

UNITTEST = "cd /workspace/sample && python3 -m unittest 2>&1"


@pytest.fixture
def careful(live_db: World) -> Iterator[AgentProfile]:
    """A profile in confirmation mode: risky commands wait for a member."""
    found = profile(live_db, name="careful-browser", confirmation=True)
    yield found
    forget_experience(live_db, found)
    remove_profile(live_db, found)


def test_start_a_run_watch_it_live_approve_a_command_and_commit_the_diff(
    page: Any,
    asgi_server: LiveServer,
    world: World,
    llm: FakeOpenAI,  # noqa: F811
    sample_workspace: Workspace,  # noqa: F811
    careful: AgentProfile,
) -> None:
    llm.script(
        bash(UNITTEST),
        bash("rm -rf /workspace/sample/__pycache__"),
        tool(
            "str_replace_editor",
            command="str_replace",
            path="/workspace/sample/calc.py",
            old_str="    return a - b",
            new_str="    return a + b",
        ),
        bash(UNITTEST),
        finish("add() subtracted; it adds now and the test passes."),
    )
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(asgi_server.url(path="/login/"))
    page.get_by_label("Email").fill(world.alice.email)
    page.get_by_label("Password").fill(world.password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Alpha")

    page.get_by_role("navigation", name="Organization").get_by_role("link", name="Agents").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Agents")
    page.get_by_role("link", name="New run").click()
    page.get_by_label("Workspace").select_option(label=sample_workspace.name)
    page.get_by_label("Profile").select_option(label=careful.name)
    page.get_by_label("Task").fill("Make the failing test in sample/ pass.")
    page.get_by_role("button", name="Start the run").click()

    # The page draws the run's first steps as the worker writes them, without a reload.
    expect(page.get_by_test_id("stream-status")).to_have_text("Live")
    first_output = page.get_by_test_id("observation").first
    expect(first_output).to_contain_text("FAILED")
    expect(first_output).to_contain_text("exit 1")
    expect(page.get_by_test_id("run-state")).to_have_text("Waiting for approval")
    approval = page.get_by_test_id("approval")
    expect(approval).to_be_visible()
    expect(approval.get_by_test_id("approval-action")).to_have_text("$ rm -rf /workspace/sample/__pycache__")
    expect(page.get_by_test_id("meter-tokens")).not_to_have_text("0 in · 0 out")

    approval.get_by_role("button", name="Approve").click()

    expect(page.get_by_test_id("run-state")).to_have_text("Succeeded", timeout=60_000)
    timeline = page.get_by_test_id("timeline")
    expect(timeline).to_contain_text("+    return a + b")
    expect(timeline.locator("[data-kind=action]").last).to_contain_text("finish")
    expect(timeline.locator("[data-kind=action]").last).to_contain_text("add() subtracted")
    expect(page.get_by_test_id("answer")).to_have_text("add() subtracted; it adds now and the test passes.")
    expect(page.get_by_test_id("final-diff")).to_contain_text("-    return a - b")
    expect(page.get_by_test_id("final-diff")).to_contain_text("+    return a + b")
    expect(page.get_by_test_id("meter-cost")).not_to_have_text("$0.000000")
    run_id = page.locator("[data-run]").get_attribute("data-run-id")
    seqs = (
        page.get_by_test_id("timeline")
        .locator("[data-seq]")
        .evaluate_all("items => items.map(item => Number(item.dataset.seq))")
    )
    # Outputs sit under their action, so the page's order is not seq order; but every event
    # is drawn exactly once.
    assert sorted(seqs) == list(range(1, len(seqs) + 1)), seqs

    page.get_by_label("Commit message").fill("Make add() add")
    page.get_by_role("button", name="Commit").click()
    expect(page.get_by_test_id("committed")).to_contain_text("Committed as")
    run = fetch(world, AgentRun(pk=run_id))
    assert run.result["commit"]
    expect(page.get_by_test_id("committed")).to_contain_text(run.result["commit"][:7])
