"""The organization's own tools as a run gets them (apps/agents/tools/organization.py):
an HTTP tool POSTing the model's arguments to a loopback endpoint with the stored
headers, and an MCP server (the official SDK's own server, over streamable HTTP on
loopback) whose tools are discovered on connect and called by name. Errors, timeouts
and unreachable servers become outcomes the model reads and errors the run records,
never exceptions."""

import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings
from django_tenants.utils import schema_context

from apps.agents import tool_services
from apps.agents.models import AgentRun, Event, OrganizationTool
from apps.agents.tools.base import ToolCallContext, ToolOutcome, ToolSpec
from apps.agents.tools.organization import (
    MAX_OUTPUT_CHARS,
    organization_tools,
    organization_tools_discover,
)
from apps.tenancy.audit import Actor
from apps.workspaces.models import Workspace
from tests.conftest import World
from tests.fakes.http_tool_server import Answer, FakeHttpTool, http_tool_server
from tests.fakes.mcp_server import FakeMCP, mcp_server

pytestmark = pytest.mark.django_db

LOOKUP_SCHEMA = {
    "type": "object",
    "properties": {"ticket": {"type": "string"}, "verbose": {"type": "boolean"}},
    "required": ["ticket"],
}


@pytest.fixture
def alpha(world: World) -> Iterator[World]:
    with schema_context(world.alpha.schema_name):
        yield world


@pytest.fixture
def run(alpha: World) -> AgentRun:
    workspace = Workspace.objects.create(name="org-tools", state=Workspace.State.STOPPED)
    return AgentRun.objects.create(task="Look things up", workspace=workspace, settings={"max_seconds": 600})


@pytest.fixture
def http_tool() -> Iterator[FakeHttpTool]:
    with http_tool_server() as fake:
        yield fake


@pytest.fixture
def mcp() -> Iterator[FakeMCP]:
    with mcp_server() as fake:
        yield fake


def _add(world: World, **fields: Any) -> OrganizationTool:
    return tool_services.tool_create(actor=Actor(user=world.alice), organization=world.alpha, **fields)


def _context(world: World, run: AgentRun) -> ToolCallContext:
    assert run.workspace is not None
    return ToolCallContext(
        run=run,
        organization=world.alpha,
        workspace=run.workspace,
        actor=Actor(user=world.alice),
        step=1,
        deadline=time.monotonic() + 600,
    )


def _by_name(specs: list[ToolSpec]) -> dict[str, ToolSpec]:
    return {spec.name: spec for spec in specs}


def _call(world: World, run: AgentRun, spec: ToolSpec, arguments: dict[str, Any]) -> ToolOutcome:
    return spec.handler(_context(world, run), arguments)


# HTTP tools ------------------------------------------------------------------------------------


def test_an_http_tool_posts_the_arguments_with_its_headers_and_returns_the_answer(
    alpha: World, run: AgentRun, http_tool: FakeHttpTool
) -> None:
    _add(
        alpha,
        name="ticket_lookup",
        kind="http",
        url=http_tool.url,
        description="Find a support ticket",
        parameters=LOOKUP_SCHEMA,
        headers={"Authorization": "Bearer s3cret"},
    )
    specs = _by_name(organization_tools(run))
    spec = specs["ticket_lookup"]
    assert spec.source == "http"
    assert spec.description == "Find a support ticket"
    assert spec.parameters == LOOKUP_SCHEMA
    # It reaches outside the workspace: in confirmation mode a member approves each call.
    assert spec.risk is not None
    assert spec.risk({"ticket": "T-1"}) == "network: calls the organization's tool ticket_lookup at 127.0.0.1"

    http_tool.script(Answer(body='{"ticket": "T-1", "state": "open"}'))
    outcome = _call(alpha, run, spec, {"ticket": "T-1"})

    assert outcome.error is False
    assert outcome.output == '{"ticket": "T-1", "state": "open"}'
    assert outcome.data == {"status": 200}
    request = http_tool.requests[-1]
    assert request.json == {"ticket": "T-1"}
    assert request.headers["authorization"] == "Bearer s3cret"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-agentyard-run"] == str(run.pk)


def test_an_http_tool_s_error_answer_is_an_error_outcome_with_status_and_body(
    alpha: World, run: AgentRun, http_tool: FakeHttpTool
) -> None:
    _add(alpha, name="ticket_lookup", kind="http", url=http_tool.url, parameters=LOOKUP_SCHEMA)
    spec = _by_name(organization_tools(run))["ticket_lookup"]
    http_tool.script(
        Answer(status=503, body="ticket system is down for maintenance", content_type="text/plain")
    )

    outcome = _call(alpha, run, spec, {"ticket": "T-2"})

    assert outcome.error is True
    assert "HTTP 503" in outcome.output
    assert "ticket system is down for maintenance" in outcome.output
    assert outcome.data == {"status": 503}


def test_an_http_tool_that_does_not_answer_in_time_is_a_timeout_outcome(
    alpha: World, run: AgentRun, http_tool: FakeHttpTool
) -> None:
    _add(alpha, name="slow_tool", kind="http", url=http_tool.url, timeout_seconds=1)
    spec = _by_name(organization_tools(run))["slow_tool"]
    http_tool.script(Answer(delay=3))

    outcome = _call(alpha, run, spec, {})

    assert outcome.error is True
    assert outcome.output == "The tool slow_tool did not answer within 1 s."
    assert outcome.data == {"timeout": True}


def test_arguments_that_do_not_match_the_schema_never_reach_the_tool(
    alpha: World, run: AgentRun, http_tool: FakeHttpTool
) -> None:
    _add(alpha, name="ticket_lookup", kind="http", url=http_tool.url, parameters=LOOKUP_SCHEMA)
    spec = _by_name(organization_tools(run))["ticket_lookup"]

    outcome = _call(alpha, run, spec, {"verbose": "yes"})

    assert outcome.error is True
    assert "do not match" in outcome.output
    assert "'ticket' is a required property" in outcome.output or "'yes' is not of type" in outcome.output
    assert http_tool.requests == []


def test_a_schema_referring_elsewhere_is_never_fetched_and_the_tool_judges_the_arguments(
    alpha: World, run: AgentRun, http_tool: FakeHttpTool
) -> None:
    remote = {"type": "object", "properties": {"ticket": {"$ref": f"{http_tool.url}/ticket.json"}}}
    _add(alpha, name="ticket_lookup", kind="http", url=http_tool.url, parameters=remote)
    spec = _by_name(organization_tools(run))["ticket_lookup"]

    outcome = _call(alpha, run, spec, {"ticket": "T-3"})

    assert outcome.error is False
    assert [request.path for request in http_tool.requests] == ["/tool"]
    assert http_tool.requests[0].json == {"ticket": "T-3"}


def test_a_large_answer_is_truncated_with_a_marker(
    alpha: World, run: AgentRun, http_tool: FakeHttpTool
) -> None:
    _add(alpha, name="dump", kind="http", url=http_tool.url)
    spec = _by_name(organization_tools(run))["dump"]
    http_tool.script(Answer(body="x" * (MAX_OUTPUT_CHARS + 5000), content_type="text/plain"))

    outcome = _call(alpha, run, spec, {})

    assert outcome.error is False
    assert outcome.output.startswith("x" * MAX_OUTPUT_CHARS)
    assert outcome.output.endswith("[... output truncated: 5000 more characters not shown]")


def test_an_unreachable_http_tool_is_an_error_outcome(alpha: World, run: AgentRun) -> None:
    with http_tool_server() as gone:
        url = gone.url
    _add(alpha, name="gone", kind="http", url=url)
    spec = _by_name(organization_tools(run))["gone"]

    outcome = _call(alpha, run, spec, {})

    assert outcome.error is True
    assert outcome.output.startswith("The tool gone could not be reached")


def test_a_tool_on_a_private_address_is_not_called_where_those_are_not_allowed(
    alpha: World, run: AgentRun, http_tool: FakeHttpTool
) -> None:
    _add(alpha, name="internal", kind="http", url=http_tool.url)
    spec = _by_name(organization_tools(run))["internal"]

    with override_settings(AGENTS_TOOLS_ALLOW_PRIVATE_URLS=False):
        outcome = _call(alpha, run, spec, {})

    assert outcome.error is True
    assert "may not be called" in outcome.output
    assert http_tool.requests == []


def test_disabled_tools_are_not_offered(alpha: World, run: AgentRun, http_tool: FakeHttpTool) -> None:
    _add(alpha, name="on", kind="http", url=http_tool.url)
    _add(alpha, name="off", kind="http", url=http_tool.url, enabled=False)

    assert [spec.name for spec in organization_tools(run)] == ["on"]


# MCP servers -----------------------------------------------------------------------------------


def test_an_mcp_server_s_tools_are_discovered_on_connect_and_named_for_the_gateway(
    alpha: World, run: AgentRun, mcp: FakeMCP
) -> None:
    _add(alpha, name="fake", kind="mcp", url=mcp.url, headers={"Authorization": "Bearer mcp-token"})

    specs = _by_name(organization_tools(run))

    assert set(specs) == {"fake__add", "fake__echo", "fake__fail", "fake__sleep", "fake__repo_search"}
    add = specs["fake__add"]
    assert add.source == "mcp"
    assert add.risk is not None
    assert add.risk({"a": 1, "b": 2}) == "network: calls the organization's tool fake at 127.0.0.1"
    assert add.description == "Add two integers. (MCP server fake)"
    assert add.parameters["type"] == "object"
    assert set(add.parameters["properties"]) == {"a", "b"}
    assert sorted(add.parameters["required"]) == ["a", "b"]
    assert mcp.requests, "the server was never asked"
    assert all(request.headers.get("authorization") == "Bearer mcp-token" for request in mcp.requests)


def test_an_mcp_tool_is_called_by_its_own_name_and_its_answer_returned(
    alpha: World, run: AgentRun, mcp: FakeMCP
) -> None:
    _add(alpha, name="fake", kind="mcp", url=mcp.url)
    specs = _by_name(organization_tools(run))

    added = _call(alpha, run, specs["fake__add"], {"a": 2, "b": 40})
    searched = _call(alpha, run, specs["fake__repo_search"], {"query": "TODO"})

    assert added.error is False
    assert added.output == "42"
    assert added.data == {"server": "fake", "tool": "add"}
    assert searched.output == "3 hits for TODO"
    assert mcp.calls == [("add", {"a": 2, "b": 40}), ("repo.search", {"query": "TODO"})]


def test_an_mcp_tool_s_failure_is_an_error_outcome_with_its_message(
    alpha: World, run: AgentRun, mcp: FakeMCP
) -> None:
    _add(alpha, name="fake", kind="mcp", url=mcp.url)
    specs = _by_name(organization_tools(run))

    outcome = _call(alpha, run, specs["fake__fail"], {"message": "the index is rebuilding"})

    assert outcome.error is True
    assert "the index is rebuilding" in outcome.output


def test_an_mcp_tool_that_does_not_answer_in_time_is_a_timeout_outcome(
    alpha: World, run: AgentRun, mcp: FakeMCP
) -> None:
    _add(alpha, name="fake", kind="mcp", url=mcp.url, timeout_seconds=1)
    specs = _by_name(organization_tools(run))

    outcome = _call(alpha, run, specs["fake__sleep"], {"seconds": 3})

    assert outcome.error is True
    assert outcome.output == "The MCP server fake did not answer sleep within 1 s."


def test_a_run_lists_a_server_s_tools_once_and_again_after_the_tool_changes(
    alpha: World, run: AgentRun, mcp: FakeMCP
) -> None:
    tool = _add(alpha, name="fake", kind="mcp", url=mcp.url)
    first = [spec.name for spec in organization_tools(run)]
    asked = len(mcp.requests)

    again = [spec.name for spec in organization_tools(run)]
    assert again == first
    assert len(mcp.requests) == asked  # the second step read the run's cached listing

    tool_services.tool_update(
        actor=Actor(user=alpha.alice), organization=alpha.alpha, tool=tool, description="changed"
    )
    organization_tools(run)
    assert len(mcp.requests) > asked

    other_run = AgentRun.objects.create(task="Another", workspace=run.workspace)
    asked = len(mcp.requests)
    organization_tools(other_run)
    assert len(mcp.requests) > asked


def test_an_unreachable_mcp_server_offers_no_tools_and_the_run_records_why_once(
    alpha: World, run: AgentRun, http_tool: FakeHttpTool
) -> None:
    with mcp_server() as gone:
        url = gone.url
    _add(alpha, name="offline", kind="mcp", url=url)
    _add(alpha, name="lookup", kind="http", url=http_tool.url)

    first = organization_tools(run)
    second = organization_tools(run)

    assert [spec.name for spec in first] == ["lookup"]
    assert [spec.name for spec in second] == ["lookup"]
    errors = list(Event.objects.filter(run=run, kind="error"))
    assert len(errors) == 1
    assert errors[0].payload["code"] == "tool_unavailable"
    assert errors[0].payload["tool"] == "offline"
    assert "The MCP server offline could not be reached" in errors[0].payload["message"]


def test_discovery_without_recording_reports_the_problem_and_writes_nothing(
    alpha: World, run: AgentRun
) -> None:
    with mcp_server() as gone:
        url = gone.url
    _add(alpha, name="offline", kind="mcp", url=url)

    discovery = organization_tools_discover(run)

    assert discovery.specs == []
    assert [problem.tool for problem in discovery.problems] == ["offline"]
    assert not Event.objects.filter(run=run).exists()


def test_another_organization_s_tools_are_not_offered(
    world: World, run: AgentRun, http_tool: FakeHttpTool
) -> None:
    with schema_context(world.beta.schema_name):
        tool_services.tool_create(
            actor=Actor(user=world.bob),
            organization=world.beta,
            name="beta_only",
            kind="http",
            url=http_tool.url,
        )
    with schema_context(world.alpha.schema_name):
        assert organization_tools(run) == []
