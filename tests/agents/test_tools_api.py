"""/api/v1/agents/tools and /api/v1/agents/tool-stats over HTTP: a manager adds, changes,
tests and deletes the organization's tools; header values go in and never come out;
bad input is a 400 naming the field with nothing written; members read, only managers
write; the usage table counts real calls made through a run's toolbox; another
organization's tools and counts stay out of reach."""

import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client, override_settings
from django_tenants.utils import schema_context

from apps.agents.models import AgentRun, OrganizationTool, ToolStat
from apps.agents.tools.base import ToolCallContext
from apps.agents.tools.registry import tools_for
from apps.tenancy.audit import Actor
from apps.tenancy.models import AuditEvent
from apps.workspaces.models import Workspace
from tests.api.conftest import error_of, key_client, new_key, send_json, throttle_reset
from tests.conftest import World, client_for
from tests.fakes.http_tool_server import Answer, FakeHttpTool, http_tool_server
from tests.fakes.mcp_server import FakeMCP, mcp_server

pytestmark = pytest.mark.django_db

API = "/api/v1"
SCHEMA = {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}


@pytest.fixture(autouse=True)
def _fresh_throttle() -> Iterator[None]:
    throttle_reset()
    yield
    throttle_reset()


@pytest.fixture
def owner(world: World) -> Client:
    return client_for(world.alice, world.alpha)


@pytest.fixture
def member(world: World) -> Client:
    return client_for(world.amy, world.alpha)


@pytest.fixture
def http_tool() -> Iterator[FakeHttpTool]:
    with http_tool_server() as fake:
        yield fake


@pytest.fixture
def mcp() -> Iterator[FakeMCP]:
    with mcp_server() as fake:
        yield fake


def _create(client: Client, body: dict[str, Any]) -> Any:
    return send_json(client, "post", "/agents/tools", body)


def _tools(client: Client) -> list[dict[str, Any]]:
    response = client.get(f"{API}/agents/tools")
    assert response.status_code == 200, response.content
    return list(response.json())


def _count(world: World) -> int:
    with schema_context(world.alpha.schema_name):
        return OrganizationTool.objects.count()


def test_a_manager_adds_changes_and_deletes_an_http_tool(
    world: World, owner: Client, http_tool: FakeHttpTool
) -> None:
    created = _create(
        owner,
        {
            "name": "search_docs",
            "kind": "http",
            "url": http_tool.url,
            "description": "Search the internal docs",
            "parameters": SCHEMA,
            "headers": {"Authorization": "Bearer very-secret", "X-Team": "core"},
            "timeout_seconds": 10,
        },
    )
    assert created.status_code == 201, created.content
    tool = created.json()
    assert tool["name"] == "search_docs"
    assert tool["kind"] == "http"
    assert tool["parameters"] == SCHEMA
    assert tool["header_names"] == ["Authorization", "X-Team"]
    assert tool["enabled"] is True
    assert "very-secret" not in created.content.decode()
    assert _tools(owner) == [tool]

    changed = send_json(
        owner, "patch", f"/agents/tools/{tool['id']}", {"description": "Docs search", "enabled": False}
    )
    assert changed.status_code == 200, changed.content
    assert changed.json()["description"] == "Docs search"
    assert changed.json()["enabled"] is False
    assert changed.json()["header_names"] == ["Authorization", "X-Team"]  # left out: kept

    cleared = send_json(owner, "patch", f"/agents/tools/{tool['id']}", {"headers": {}})
    assert cleared.json()["header_names"] == []

    assert owner.delete(f"{API}/agents/tools/{tool['id']}").status_code == 204
    assert owner.get(f"{API}/agents/tools/{tool['id']}").status_code == 404
    with schema_context(world.alpha.schema_name):
        actions = list(
            AuditEvent.objects.filter(action__startswith="agent_tool.")
            .order_by("id")
            .values_list("action", flat=True)
        )
        logged = AuditEvent.objects.filter(action="agent_tool.created").latest("id")
    assert actions == ["agent_tool.created", "agent_tool.updated", "agent_tool.updated", "agent_tool.deleted"]
    assert logged.changes["after"]["headers"] == ["Authorization", "X-Team"]
    assert "very-secret" not in str(logged.changes)


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"name": "has.dot"}, "name", "letters, digits"),
        ({"name": "a" * 65}, "name", "64"),
        ({"name": "bash"}, "name", "built-in"),
        ({"name": "two__parts"}, "name", "'__'"),
        ({"kind": "grpc"}, "kind", "grpc"),
        ({"url": "ftp://example.com/tool"}, "url", "http"),
        ({"url": "not a url"}, "url", ""),
        ({"url": "http://[not-ipv6]/tool"}, "url", "not a valid web address"),
        ({"url": "http://example.com:99999/tool"}, "url", "not a valid web address"),
        ({"parameters": {"type": "string"}}, "parameters", "type object"),
        (
            {"parameters": {"type": "object", "properties": {"q": {"type": "strng"}}}},
            "parameters",
            "JSON Schema",
        ),
        ({"parameters": ["query"]}, "parameters", "type object"),
        ({"headers": {"Bad Header": "x"}}, "headers", "header name"),
        ({"headers": {"X-Token": "line\nbreak"}}, "headers", "one line"),
        ({"headers": {"Host": "elsewhere"}}, "headers", "platform"),
        ({"timeout_seconds": 0}, "timeout_seconds", ""),
        ({"timeout_seconds": 301}, "timeout_seconds", ""),
        ({"unknown": 1}, "unknown", "Unknown field"),
    ],
)
def test_bad_input_on_create_is_a_400_naming_the_field_and_writes_nothing(
    world: World, owner: Client, body: dict[str, Any], field: str, says: str
) -> None:
    before = _count(world)
    response = _create(owner, {"name": "lookup", "kind": "http", "url": "http://127.0.0.1:9/tool", **body})

    assert response.status_code == 400, response.content
    error = error_of(response)
    assert field in error["fields"], error
    assert says in error["message"] or says in str(error["fields"])
    assert _count(world) == before


def test_an_mcp_server_takes_no_parameters_of_its_own(world: World, owner: Client) -> None:
    response = _create(
        owner, {"name": "docs", "kind": "mcp", "url": "http://127.0.0.1:9/mcp", "parameters": SCHEMA}
    )
    assert response.status_code == 400
    assert "parameters" in error_of(response)["fields"]


def test_a_second_tool_of_the_same_name_is_a_409(world: World, owner: Client) -> None:
    assert (
        _create(owner, {"name": "lookup", "kind": "http", "url": "http://127.0.0.1:9/a"}).status_code == 201
    )
    again = _create(owner, {"name": "LOOKUP", "kind": "mcp", "url": "http://127.0.0.1:9/b"})
    assert again.status_code == 409
    assert error_of(again)["code"] == "name_taken"
    assert _count(world) == 1


def test_a_tool_s_kind_cannot_change(owner: Client) -> None:
    tool = _create(owner, {"name": "lookup", "kind": "http", "url": "http://127.0.0.1:9/a"}).json()
    response = send_json(owner, "patch", f"/agents/tools/{tool['id']}", {"kind": "mcp"})
    assert response.status_code == 400
    assert "kind" in error_of(response)["fields"]


@override_settings(AGENTS_TOOLS_ALLOW_PRIVATE_URLS=False)
def test_private_addresses_are_refused_where_the_platform_does_not_allow_them(
    world: World, owner: Client
) -> None:
    for url in (
        "https://127.0.0.1/tool",
        "https://10.0.0.8/tool",
        "https://[::1]/mcp",
        "http://example.com/tool",
    ):
        response = _create(owner, {"name": "internal", "kind": "http", "url": url})
        assert response.status_code == 400, url
        assert error_of(response)["fields"] == {"url": [error_of(response)["message"]]}
    assert _count(world) == 0


def test_members_read_the_tools_and_only_managers_change_them(owner: Client, member: Client) -> None:
    tool = _create(owner, {"name": "lookup", "kind": "http", "url": "http://127.0.0.1:9/a"}).json()

    assert [entry["name"] for entry in _tools(member)] == ["lookup"]
    assert member.get(f"{API}/agents/tool-stats").status_code == 200
    assert _create(member, {"name": "mine", "kind": "http", "url": "http://127.0.0.1:9/b"}).status_code == 403
    assert send_json(member, "patch", f"/agents/tools/{tool['id']}", {"enabled": False}).status_code == 403
    assert member.delete(f"{API}/agents/tools/{tool['id']}").status_code == 403
    assert member.post(f"{API}/agents/tools/{tool['id']}/test").status_code == 403


def test_a_key_scoped_to_read_agents_lists_but_cannot_add(world: World) -> None:
    _, raw = new_key(world, ["agents:read"], name="reader")
    reader = key_client(raw)
    assert reader.get(f"{API}/agents/tools").status_code == 200
    response = _create(reader, {"name": "lookup", "kind": "http", "url": "http://127.0.0.1:9/a"})
    assert response.status_code == 403
    assert error_of(response)["code"] == "missing_scope"


def test_testing_an_mcp_server_lists_the_tools_runs_will_see(owner: Client, mcp: FakeMCP) -> None:
    tool = _create(
        owner, {"name": "repo", "kind": "mcp", "url": mcp.url, "headers": {"Authorization": "Bearer t0ken"}}
    ).json()

    response = owner.post(f"{API}/agents/tools/{tool['id']}/test")

    assert response.status_code == 200, response.content
    result = response.json()
    assert result["ok"] is True
    assert result["error"] is None
    by_name = {entry["name"]: entry for entry in result["tools"]}
    assert set(by_name) == {"repo__add", "repo__echo", "repo__fail", "repo__sleep", "repo__repo_search"}
    assert by_name["repo__repo_search"]["server_name"] == "repo.search"
    assert by_name["repo__add"]["description"] == "Add two integers."
    assert mcp.requests[0].headers["authorization"] == "Bearer t0ken"


def test_testing_an_unreachable_mcp_server_says_why(owner: Client) -> None:
    with mcp_server() as gone:
        url = gone.url
    tool = _create(owner, {"name": "offline", "kind": "mcp", "url": url, "timeout_seconds": 5}).json()

    result = owner.post(f"{API}/agents/tools/{tool['id']}/test").json()

    assert result["ok"] is False
    assert result["tools"] == []
    assert result["error"]


def test_an_http_tool_cannot_be_tested(owner: Client) -> None:
    tool = _create(owner, {"name": "lookup", "kind": "http", "url": "http://127.0.0.1:9/a"}).json()
    response = owner.post(f"{API}/agents/tools/{tool['id']}/test")
    assert response.status_code == 400
    assert error_of(response)["code"] == "not_mcp"


def test_the_usage_table_counts_calls_made_through_a_run_s_tools(
    world: World, owner: Client, http_tool: FakeHttpTool
) -> None:
    _create(owner, {"name": "lookup", "kind": "http", "url": http_tool.url, "parameters": SCHEMA})
    http_tool.script(
        Answer(body="found"), Answer(status=500, body="index broken"), Answer(body="found again")
    )
    with schema_context(world.alpha.schema_name):
        workspace = Workspace.objects.create(name="stats", state=Workspace.State.STOPPED)
        run = AgentRun.objects.create(task="Use the tools", workspace=workspace)
        lookup = tools_for(run).get("lookup")
        assert lookup is not None
        context = ToolCallContext(
            run=run,
            organization=world.alpha,
            workspace=workspace,
            actor=Actor(user=world.alice),
            step=1,
            deadline=time.monotonic() + 60,
        )
        outcomes = [lookup.handler(context, {"query": query}) for query in ("a", "b", "c")]
    assert [outcome.error for outcome in outcomes] == [False, True, False]

    response = owner.get(f"{API}/agents/tool-stats")

    assert response.status_code == 200
    rows = {row["tool"]: row for row in response.json()}
    assert rows["lookup"]["calls"] == 3
    assert rows["lookup"]["errors"] == 1
    assert rows["lookup"]["error_rate"] == pytest.approx(1 / 3)
    assert rows["lookup"]["avg_ms"] >= 0
    assert "HTTP 500" in rows["lookup"]["last_error"]
    assert rows["lookup"]["last_used_at"]


def test_another_organization_s_tools_and_usage_are_out_of_reach(world: World, owner: Client) -> None:
    tool = _create(owner, {"name": "alpha_only", "kind": "http", "url": "http://127.0.0.1:9/a"}).json()
    with schema_context(world.alpha.schema_name):
        ToolStat.objects.create(tool="alpha_only", calls=5, errors=1, total_ms=50)
    _, raw = new_key(world, ["admin"], organization=world.beta, name="beta admin")
    beta = key_client(raw)

    assert beta.get(f"{API}/agents/tools").json() == []
    assert beta.get(f"{API}/agents/tool-stats").json() == []
    assert beta.get(f"{API}/agents/tools/{tool['id']}").status_code == 404
    assert send_json(beta, "patch", f"/agents/tools/{tool['id']}", {"enabled": False}).status_code == 404
    assert beta.delete(f"{API}/agents/tools/{tool['id']}").status_code == 404
    assert beta.post(f"{API}/agents/tools/{tool['id']}/test").status_code == 404
    assert _tools(owner)[0]["enabled"] is True
