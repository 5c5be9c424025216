"""A run uses the organization's own tools end to end: the real worker offers the MCP
server's discovered tools and the HTTP tool to the model (the scripted OpenAI fake) beside
the built-ins, calls them when the model asks, records their answers as observations and
counts them in the usage table."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django_tenants.utils import schema_context

from apps.agents import tool_services
from apps.agents.models import AgentRun, Event, OrganizationTool, ToolStat
from apps.tenancy.audit import Actor
from tests.agents.engine import events, finish, start, tool, wait_state
from tests.conftest import World
from tests.fakes.http_tool_server import Answer, FakeHttpTool, http_tool_server
from tests.fakes.mcp_server import FakeMCP, mcp_server

NAMES = ("repo", "lookup")
STATS = ("repo__add", "lookup")


@pytest.fixture
def organization_tools(live_db: World) -> Iterator[tuple[FakeMCP, FakeHttpTool]]:
    """Alpha's MCP server and HTTP tool, committed for the worker, removed afterwards."""
    with mcp_server() as mcp, http_tool_server() as http_tool, schema_context(live_db.alpha.schema_name):
        actor = Actor(user=live_db.alice)
        tool_services.tool_create(
            actor=actor, organization=live_db.alpha, name="repo", kind="mcp", url=mcp.url
        )
        tool_services.tool_create(
            actor=actor,
            organization=live_db.alpha,
            name="lookup",
            kind="http",
            url=http_tool.url,
            description="Look a ticket up",
            parameters={
                "type": "object",
                "properties": {"ticket": {"type": "string"}},
                "required": ["ticket"],
            },
            headers={"Authorization": "Bearer run-token"},
        )
        try:
            yield mcp, http_tool
        finally:
            OrganizationTool.objects.filter(name__in=NAMES).delete()
            ToolStat.objects.filter(tool__in=STATS).delete()


def test_a_run_calls_an_mcp_tool_and_an_http_tool_of_its_organization(
    live_db: World, llm: Any, sample_workspace: Any, organization_tools: tuple[FakeMCP, FakeHttpTool]
) -> None:
    mcp, http_tool = organization_tools
    http_tool.script(Answer(body='{"ticket": "T-9", "state": "closed"}'))
    llm.script(
        tool("repo__add", a=2, b=40),
        tool("lookup", ticket="T-9"),
        finish("2 + 40 is 42 and T-9 is closed."),
    )

    run = start(live_db, sample_workspace, "Add 2 and 40, then look up ticket T-9.")
    run = wait_state(live_db, run, timeout=90)

    assert run.state == AgentRun.State.SUCCEEDED, run.state_reason
    observations = [event.payload for event in events(live_db, run, Event.Kind.OBSERVATION)]
    assert [observation["tool"] for observation in observations] == ["repo__add", "lookup", "finish"]
    assert observations[0]["output"] == "42"
    assert observations[0]["error"] is False
    assert observations[1]["output"] == '{"ticket": "T-9", "state": "closed"}'
    assert mcp.calls == [("add", {"a": 2, "b": 40})]
    assert http_tool.requests[0].json == {"ticket": "T-9"}
    assert http_tool.requests[0].headers["authorization"] == "Bearer run-token"

    offered = {entry["function"]["name"]: entry["function"] for entry in llm.chat_requests[0].json["tools"]}
    assert {"bash", "finish", "repo__add", "repo__repo_search", "lookup"} <= set(offered)
    assert set(offered["repo__add"]["parameters"]["properties"]) == {"a", "b"}
    assert offered["lookup"]["description"] == "Look a ticket up"

    with schema_context(live_db.alpha.schema_name):
        counted = {stat.tool: stat.calls for stat in ToolStat.objects.filter(tool__in=STATS)}
    assert counted == {"repo__add": 1, "lookup": 1}
