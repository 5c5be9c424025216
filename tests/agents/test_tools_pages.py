"""The agent tools pages (/settings/agent-tools/): a manager adds an HTTP tool and an MCP
server from the form, tests the server and sees the tools runs will get, changes and
deletes a tool; the usage table shows calls and error rates; a member reads but has no
form and is refused writes; header values never appear on a page."""

from collections.abc import Iterator

import pytest
from django.test import Client
from django_tenants.utils import schema_context

from apps.agents.models import OrganizationTool, ToolStat
from apps.agents.tool_services import tool_header_names
from tests.conftest import World, client_for
from tests.fakes.mcp_server import FakeMCP, mcp_server

pytestmark = pytest.mark.django_db

PAGE = "/settings/agent-tools/"


@pytest.fixture
def owner(world: World) -> Client:
    return client_for(world.alice, world.alpha)


@pytest.fixture
def member(world: World) -> Client:
    return client_for(world.amy, world.alpha)


@pytest.fixture
def mcp() -> Iterator[FakeMCP]:
    with mcp_server() as fake:
        yield fake


def _form(**fields: str) -> dict[str, str]:
    return {
        "name": "lookup",
        "kind": "http",
        "url": "http://127.0.0.1:9/tool",
        "description": "",
        "parameters": "",
        "headers": "",
        "timeout_seconds": "30",
        "enabled": "on",
        **fields,
    }


def _tool(world: World, name: str) -> OrganizationTool | None:
    with schema_context(world.alpha.schema_name):
        return OrganizationTool.objects.filter(name=name).first()


def test_a_manager_adds_an_http_tool_from_the_form(world: World, owner: Client) -> None:
    assert 'action="/settings/agent-tools/new/"' in owner.get(PAGE).content.decode()

    response = owner.post(
        f"{PAGE}new/",
        _form(
            parameters='{"type": "object", "properties": {"ticket": {"type": "string"}}}',
            headers="Authorization: Bearer hush-hush\nX-Team: core",
        ),
    )

    tool = _tool(world, "lookup")
    assert tool is not None
    assert response.status_code == 302
    assert response["Location"] == f"{PAGE}{tool.pk}/"
    assert tool.parameters == {"type": "object", "properties": {"ticket": {"type": "string"}}}
    with schema_context(world.alpha.schema_name):
        assert tool_header_names(tool) == ["Authorization", "X-Team"]
    listing = owner.get(PAGE).content.decode()
    assert 'data-testid="tool-row" data-name="lookup"' in listing
    detail = owner.get(f"{PAGE}{tool.pk}/").content.decode()
    assert "<code>Authorization</code>" in detail
    assert "hush-hush" not in listing + detail


def test_a_form_with_bad_parameters_says_why_and_adds_nothing(world: World, owner: Client) -> None:
    not_json = owner.post(f"{PAGE}new/", _form(parameters="{type: object"))
    not_schema = owner.post(f"{PAGE}new/", _form(parameters='{"type": "object", "required": "ticket"}'))
    reserved = owner.post(f"{PAGE}new/", _form(name="think"))

    assert not_json.status_code == 400
    assert "This is not JSON" in not_json.content.decode()
    assert not_schema.status_code == 400
    assert "not a valid JSON Schema" in not_schema.content.decode()
    assert reserved.status_code == 400
    assert "built-in tool" in reserved.content.decode()
    with schema_context(world.alpha.schema_name):
        assert OrganizationTool.objects.count() == 0


def test_testing_an_mcp_server_from_its_page_shows_the_tools_runs_will_get(
    world: World, owner: Client, mcp: FakeMCP
) -> None:
    owner.post(f"{PAGE}new/", _form(name="repo", kind="mcp", url=mcp.url))
    tool = _tool(world, "repo")
    assert tool is not None

    page = owner.post(f"{PAGE}{tool.pk}/test/").content.decode()

    assert 'data-testid="test-ok"' in page
    assert 'data-testid="discovered-tool" data-name="repo__repo_search"' in page
    assert 'data-testid="discovered-tool" data-name="repo__add"' in page


def test_a_manager_changes_a_tool_keeping_or_removing_its_headers(world: World, owner: Client) -> None:
    owner.post(f"{PAGE}new/", _form(headers="Authorization: Bearer one"))
    tool = _tool(world, "lookup")
    assert tool is not None

    kept = owner.post(f"{PAGE}{tool.pk}/edit/", _form(description="Finds tickets", timeout_seconds="5"))
    assert kept.status_code == 302
    changed = _tool(world, "lookup")
    assert changed is not None
    assert (changed.description, changed.timeout_seconds) == ("Finds tickets", 5)
    with schema_context(world.alpha.schema_name):
        assert tool_header_names(changed) == ["Authorization"]

    owner.post(f"{PAGE}{tool.pk}/edit/", _form(clear_headers="on"))
    cleared = _tool(world, "lookup")
    assert cleared is not None
    with schema_context(world.alpha.schema_name):
        assert tool_header_names(cleared) == []

    deleted = owner.post(f"{PAGE}{tool.pk}/delete/")
    assert deleted.status_code == 302
    assert _tool(world, "lookup") is None


def test_the_usage_table_shows_calls_and_error_rates(world: World, member: Client) -> None:
    with schema_context(world.alpha.schema_name):
        ToolStat.objects.create(tool="bash", calls=8, errors=2, total_ms=800, last_error="exit 1")
        ToolStat.objects.create(tool="repo__add", calls=1, errors=0, total_ms=12)

    page = member.get(PAGE).content.decode()

    assert 'data-testid="usage-row" data-tool="bash"' in page
    bash_row = page.split('data-tool="bash"', 1)[1].split("</tr>", 1)[0]
    assert '<td data-testid="usage-calls">8</td>' in bash_row
    assert '<td data-testid="usage-error-rate">25%</td>' in bash_row
    assert "100 ms" in bash_row
    assert 'data-tool="repo__add"' in page


def test_a_member_reads_the_page_without_a_form_and_is_refused_writes(world: World, member: Client) -> None:
    page = member.get(PAGE)
    assert page.status_code == 200
    assert 'action="/settings/agent-tools/new/"' not in page.content.decode()

    assert member.post(f"{PAGE}new/", _form()).status_code == 403
    assert _tool(world, "lookup") is None
