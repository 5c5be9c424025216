"""The plan's features where they apply: staff turn a feature off for Alpha (whose
Business plan has every feature) and the terminal, git, AI assistance and knowledge are
refused with a message naming the feature and the plans that include it; turned back
on, each works again. Overrides made on committed data are put back afterwards."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import openai
import pytest
from django.test import override_settings
from django_tenants.utils import schema_context

from apps.accounts.models import User
from apps.agents import context, services
from apps.agents.models import AgentRun, Event
from apps.agents.tools.registry import tools_for
from apps.billing.plans import billing_account_for
from apps.billing.quotas import quota_snapshots_clear
from apps.billing.services import account_overrides_set
from apps.tenancy.audit import Actor
from apps.tenancy.models import Organization
from apps.workspaces.models import Workspace
from tests.api.conftest import API, key_client, new_key
from tests.billing.plan_helpers import make_staff
from tests.conftest import ROOT, LiveServer, World, _worker_env, client_for
from tests.fakes.llm_fake import Reply
from tests.fakes.openai_server import FakeOpenAI
from tests.knowledge.conftest import knowledge_index, make_source, put_file  # noqa: F401 (a fixture)
from tests.llm.conftest import openai_fake  # noqa: F401 (a fixture)
from tests.llm.test_openai_endpoint import Keys, alpha_openai, keys, raw_request, sdk  # noqa: F401
from tests.websocket import session_cookie_for, ws_connect
from tests.workspaces.conftest import running, workspaces_cleanup  # noqa: F401 (fixtures)
from tests.workspaces.test_terminal import TerminalClient, terminal_path, workspace  # noqa: F401

ALL_PLANS = ["free", "payg", "team", "business", "reserved"]  # every plan has these four features


@pytest.fixture(autouse=True)
def _fresh_feature_readings() -> Iterator[None]:
    """A rolled-back override must not linger in this process's feature readings."""
    quota_snapshots_clear()
    yield
    quota_snapshots_clear()


def _turn(organization: Organization, key: str, enabled: bool) -> None:
    """Staff switch one feature for the organization, keeping its other overrides (inside
    the test's transaction, rolled back afterwards)."""
    staff = User.objects.filter(is_staff=True, email="sam@agentyard.test").first() or make_staff()
    overrides = dict(billing_account_for(organization).feature_overrides or {})
    account_overrides_set(
        actor=Actor(user=staff),
        organization=organization,
        feature_overrides={**overrides, key: enabled},
    )


@contextmanager
def overridden(organization: Organization, key: str, enabled: bool) -> Iterator[None]:
    """For committed data (live tests): the override set directly (the test's set-up, not
    its subject; the staff service is the subject of tests/billing/test_features.py), and
    the account's overrides as they were afterwards."""
    account = billing_account_for(organization)
    saved = dict(account.feature_overrides or {})
    account.feature_overrides = {**saved, key: enabled}
    account.save(update_fields=["feature_overrides", "updated_at"])
    quota_snapshots_clear()
    try:
        yield
    finally:
        account = billing_account_for(organization)
        account.feature_overrides = saved
        account.save(update_fields=["feature_overrides", "updated_at"])
        quota_snapshots_clear()


def _assert_refused(response: Any, feature: str, plans: list[str]) -> dict[str, Any]:
    assert response.status_code == 403, response.content
    body: dict[str, Any] = response.json()
    assert (body["code"], body["feature"], body["plans"]) == ("feature_not_in_plan", feature, plans)
    assert body["error"]["code"] == "feature_not_in_plan"
    assert f"'{feature}' feature" in body["detail"]
    assert "turned off for Alpha" in body["detail"]  # the plan has it; staff took it away
    return body


def _running_workspace(name: str) -> Workspace:
    """A workspace row the services take for running (no sandbox: nothing here reaches one)."""
    return Workspace.objects.create(name=name, state=Workspace.State.RUNNING)


# --- terminal ------------------------------------------------------------------------


def test_the_terminal_socket_says_the_plan_lacks_it_and_closes_4403(
    asgi_server: LiveServer,
    world: World,
    workspace: Workspace,  # noqa: F811 (the fixture imported above)
) -> None:
    cookie = session_cookie_for(world.alice)

    async def refused() -> TerminalClient:
        async with ws_connect(asgi_server, world.alpha, terminal_path(workspace), cookie=cookie) as socket:
            alice = TerminalClient(socket)
            await alice.until(lambda me: me.close_code is not None)
            return alice

    async def attached() -> TerminalClient:
        async with ws_connect(asgi_server, world.alpha, terminal_path(workspace), cookie=cookie) as socket:
            return await TerminalClient(socket).attached()

    with overridden(world.alpha, "terminal", False):
        alice = asyncio.run(refused())
    assert alice.close_code == 4403  # the page stops retrying
    assert [message["type"] for message in alice.controls] == ["error"]  # no hello, no shell
    error = alice.controls[0]
    assert (error["code"], error["feature"], error["plans"]) == ("feature_not_in_plan", "terminal", ALL_PLANS)
    assert "'terminal' feature" in error["message"]
    assert "Free, Pay as you go, Team, Business and Reserved capacity plans include" in error["message"]
    assert alice.output == b""

    assert asyncio.run(attached()).first("attached")["rows"] > 0


def test_an_open_terminal_is_cut_off_when_the_feature_goes(
    asgi_server: LiveServer,
    world: World,
    workspace: Workspace,  # noqa: F811 (the fixture imported above)
) -> None:
    cookie = session_cookie_for(world.alice)
    saved = dict(billing_account_for(world.alpha).feature_overrides or {})

    def set_overrides(overrides: dict[str, bool]) -> None:
        account = billing_account_for(world.alpha)
        account.feature_overrides = overrides
        account.save(update_fields=["feature_overrides", "updated_at"])

    async def scenario() -> TerminalClient:
        async with ws_connect(asgi_server, world.alpha, terminal_path(workspace), cookie=cookie) as socket:
            alice = await TerminalClient(socket).attached()
            await asyncio.to_thread(set_overrides, {**saved, "terminal": False})
            await alice.until(lambda me: me.close_code is not None)
            return alice

    try:
        with override_settings(WORKSPACES_TERMINAL_HEARTBEAT_SECONDS=0.3):
            alice = asyncio.run(scenario())
    finally:
        set_overrides(saved)
    assert alice.close_code == 4403
    assert alice.last("error")["code"] == "feature_not_in_plan"
    assert alice.last("error")["feature"] == "terminal"


@pytest.mark.django_db
def test_the_workspace_and_run_pages_show_why_instead_of_the_terminal(world: World) -> None:
    alice = client_for(world.alice, world.alpha)
    with schema_context(world.alpha.schema_name):
        found = _running_workspace("terminal-page")
        run = services.run_create(
            actor=Actor(user=world.alice), organization=world.alpha, workspace=found, task="Look around"
        )
    _turn(world.alpha, "terminal", False)
    for path in (f"/workspaces/{found.pk}/", f"/agents/runs/{run.pk}/"):
        page = alice.get(path)
        assert page.status_code == 200
        text = page.content.decode()
        assert 'data-testid="terminal-not-in-plan"' in text
        assert "Terminal needs the &#x27;terminal&#x27; feature" in text
        assert "data-terminal " not in text  # no socket for terminal.js to open
        assert "js/terminal.js" not in text

    _turn(world.alpha, "terminal", True)
    for path in (f"/workspaces/{found.pk}/", f"/agents/runs/{run.pk}/"):
        text = alice.get(path).content.decode()
        assert "terminal-not-in-plan" not in text
        assert "data-terminal " in text


# --- git -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_git_api_is_refused_without_git_and_works_with_it(
    world: World,
    running: Workspace,  # noqa: F811 (the fixture imported above)
) -> None:
    alice = client_for(world.alice, world.alpha)
    base = f"{API}/workspaces/{running.pk}"
    made = alice.post(
        f"{base}/exec", json.dumps({"command": "git init -q -b main repo"}), content_type="application/json"
    )
    assert made.json()["exit_code"] == 0, made.content

    _turn(world.alpha, "git", False)
    _assert_refused(alice.get(f"{base}/git/status", {"path": "repo"}), "git", ALL_PLANS)
    _assert_refused(alice.get(f"{base}/git/diff", {"path": "repo"}), "git", ALL_PLANS)
    for action, body in (
        ("branch", {"path": "repo", "name": "feature/x", "create": True}),
        ("commit", {"path": "repo", "message": "x"}),
        ("clone", {"url": "repo", "path": "copy"}),
        ("push", {"path": "repo"}),
    ):
        refused = alice.post(f"{base}/git/{action}", json.dumps(body), content_type="application/json")
        _assert_refused(refused, "git", ALL_PLANS)
    # Nothing ran: the branch was not made, the clone not taken.
    listing = alice.post(
        f"{base}/exec",
        json.dumps({"command": "ls; git -C repo branch --list"}),
        content_type="application/json",
    ).json()
    assert listing["stdout"].split() == ["repo"]

    _turn(world.alpha, "git", True)
    status = alice.get(f"{base}/git/status", {"path": "repo"})
    assert status.status_code == 200, status.content
    assert status.json()["branch"] == "main"


@pytest.mark.django_db
def test_committing_a_runs_changes_needs_git(world: World) -> None:
    _, raw = new_key(world, ["admin"], name="features git")
    api = key_client(raw)
    with schema_context(world.alpha.schema_name):
        run = services.run_create(
            actor=Actor(user=world.alice),
            organization=world.alpha,
            workspace=_running_workspace("commit-home"),
            task="Change something",
        )
    path = f"{API}/agents/runs/{run.pk}/commit"
    _turn(world.alpha, "git", False)
    _assert_refused(api.post(path, {"message": "Done"}, content_type="application/json"), "git", ALL_PLANS)

    _turn(world.alpha, "git", True)
    allowed = api.post(path, {"message": "Done"}, content_type="application/json")
    # Past the plan: the next thing said is about the run itself.
    assert allowed.status_code == 409
    assert allowed.json()["error"]["code"] == "run_not_finished"


# --- AI assistance ---------------------------------------------------------------------


@pytest.mark.django_db
def test_starting_a_run_needs_ai_assistance_through_the_api_and_the_page(world: World) -> None:
    _, raw = new_key(world, ["admin"], name="features ai")
    api = key_client(raw)
    page = client_for(world.alice, world.alpha)
    with schema_context(world.alpha.schema_name):
        found = _running_workspace("ai-home")
    body = {"workspace": found.pk, "task": "Fix the tests"}
    form = {**body, "priority": "interactive"}

    _turn(world.alpha, "ai_assistance", False)
    _assert_refused(
        api.post(f"{API}/agents/runs", body, content_type="application/json"), "ai_assistance", ALL_PLANS
    )
    refused = page.post("/agents/new/", form)
    assert refused.status_code == 403
    assert "AI assistance needs the &#x27;ai_assistance&#x27; feature" in refused.content.decode()
    with schema_context(world.alpha.schema_name):
        assert not AgentRun.objects.filter(workspace=found).exists()  # nothing half-made

    _turn(world.alpha, "ai_assistance", True)
    created = api.post(f"{API}/agents/runs", body, content_type="application/json")
    assert created.status_code == 201, created.content
    made = page.post("/agents/new/", form)
    assert made.status_code == 302
    with schema_context(world.alpha.schema_name):
        assert AgentRun.objects.filter(workspace=found).count() == 2


@pytest.fixture
def stopped_workspace(live_db: World) -> Iterator[Workspace]:
    with schema_context(live_db.alpha.schema_name):
        found = Workspace.objects.create(name="features-cli", state=Workspace.State.STOPPED)
    yield found
    with schema_context(live_db.alpha.schema_name):
        Workspace.objects.filter(pk=found.pk).delete()


def _agent_run(stopped: Workspace) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "agent", "run", "--org", "alpha", "--workspace", stopped.name, "Fix"],
        cwd=ROOT,
        env=_worker_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_manage_py_agent_run_says_the_plan_lacks_ai_assistance(
    live_db: World, stopped_workspace: Workspace
) -> None:
    with overridden(live_db.alpha, "ai_assistance", False):
        refused = _agent_run(stopped_workspace)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "AI assistance needs the 'ai_assistance' feature" in refused.stderr
    assert "Traceback" not in refused.stderr

    # With it back, the command goes on to the workspace (stopped here, so it says so).
    allowed = _agent_run(stopped_workspace)
    assert "'ai_assistance' feature" not in allowed.stderr
    assert "start it before running an agent on it" in allowed.stderr


def test_the_openai_compatible_endpoint_needs_ai_assistance(
    asgi_server: LiveServer,
    world: World,
    keys: Keys,  # noqa: F811 (the fixture imported above)
    alpha_openai: FakeOpenAI,  # noqa: F811
) -> None:
    chat = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]})
    with overridden(world.alpha, "ai_assistance", False):
        status, _, text = raw_request(asgi_server, "POST", "/v1/chat/completions", keys.alpha, chat)
        assert status == 403
        error = json.loads(text)["error"]
        assert (error["code"], error["type"]) == ("feature_not_in_plan", "permission_error")
        assert (error["feature"], error["plans"]) == ("ai_assistance", ALL_PLANS)
        assert "'ai_assistance' feature" in error["message"]
        embed = json.dumps({"model": "text-embedding-3-small", "input": "hello"})
        assert raw_request(asgi_server, "POST", "/v1/embeddings", keys.alpha, embed)[0] == 403
        # The official SDK raises its usual exception, with our code.
        with pytest.raises(openai.PermissionDeniedError) as denied:
            sdk(asgi_server, keys.alpha).chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]
            )
        assert denied.value.code == "feature_not_in_plan"
        # Beta's plan is its own (Beta has no provider credentials: that is what it is told).
        _, _, beta = raw_request(asgi_server, "POST", "/v1/chat/completions", keys.beta, chat)
        assert json.loads(beta)["error"]["code"] != "feature_not_in_plan"

    alpha_openai.script(Reply(text="Hello again."))
    completion = sdk(asgi_server, keys.alpha).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]
    )
    assert completion.choices[0].message.content == "Hello again."


# --- knowledge in agent runs -----------------------------------------------------------------


@pytest.mark.django_db
def test_a_run_without_knowledge_gets_no_knowledge_tool_and_no_knowledge_block(
    world: World,
    knowledge_index: Any,  # noqa: F811 (the fixture imported above)
) -> None:
    task = "How do deployments go out?"
    with schema_context(world.alpha.schema_name):
        source = make_source(world, world.alpha, name="releases.md")
        put_file(source, "releases.md", "# Releases\n\nDeployments go out with `make ship`.\n")
        _turn(world.alpha, "knowledge", False)
        run = services.run_create(
            actor=Actor(user=world.alice),
            organization=world.alpha,
            workspace=_running_workspace("knowledge-off"),
            task=task,
        )
        toolbox = tools_for(run, organization=world.alpha)
        events = list(Event.objects.filter(run=run).order_by("seq"))
        _, first = context.conversation(organization=world.alpha, run=run, events=events, toolbox=toolbox)
        assert "knowledge_search" not in toolbox.names()
        assert "knowledge_search" not in tools_for(run).names()  # the schema's organization too
        assert "bash" in toolbox.names()
        assert first.content == task  # no "Relevant knowledge" beside it

        _turn(world.alpha, "knowledge", True)
        toolbox = tools_for(run, organization=world.alpha)
        _, first = context.conversation(organization=world.alpha, run=run, events=events, toolbox=toolbox)
    assert "knowledge_search" in toolbox.names()
    assert first.content is not None
    assert "Relevant knowledge" in first.content
    assert "make ship" in first.content
