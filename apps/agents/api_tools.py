"""REST endpoints for the organization's agent tools (/api/v1/agents/tools): list and
add, read, change and delete, test an MCP server's connection (its tools as runs will
see them), and the usage table of every tool runs have called.

Thin: each view names its action (apps/tenancy/roles.py) and calls one service or
selector. Header values are write-only: only their names come back."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.agents import tool_selectors, tool_services
from apps.agents.models import OrganizationTool
from apps.core.openapi import ApiError
from apps.tenancy.api import StrictSerializer
from apps.tenancy.audit import Actor
from apps.tenancy.models import Organization


def _tenant(request: Request) -> Organization:
    organization: Organization = request._request.tenant  # type: ignore[attr-defined]
    return organization


def _actor(request: Request) -> Actor:
    return Actor.from_request(request._request)


HEADERS_HELP = (
    'Sent with every call, e.g. {"Authorization": "Bearer ..."}; stored encrypted and never shown'
    " back (only their names). Left out on a change: kept; {}: removed."
)
PARAMETERS_HELP = (
    "HTTP tools: the JSON Schema (type object) of the arguments the model sends, POSTed as the"
    " JSON body. MCP servers: leave out (their tools describe their own)."
)


class ToolOut(serializers.ModelSerializer[OrganizationTool]):
    header_names = serializers.SerializerMethodField(
        help_text="The stored headers' names; values are never shown."
    )
    created_by = serializers.IntegerField(source="created_by_id", read_only=True, allow_null=True)

    class Meta:
        model = OrganizationTool
        fields = [
            "id",
            "name",
            "kind",
            "description",
            "url",
            "parameters",
            "header_names",
            "timeout_seconds",
            "enabled",
            "created_by",
            "created_at",
            "updated_at",
        ]

    def get_header_names(self, tool: OrganizationTool) -> list[str]:
        return tool_services.tool_header_names(tool)


class ToolIn(StrictSerializer):
    name = serializers.CharField(
        max_length=64,
        help_text="Letters, digits, _ and -. An MCP server's tools are named <name>__<its tool>.",
    )
    kind = serializers.ChoiceField(choices=OrganizationTool.Kind.choices)
    url = serializers.CharField(max_length=2000)
    description = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")
    parameters = serializers.JSONField(required=False, default=None, help_text=PARAMETERS_HELP)
    headers = serializers.DictField(
        child=serializers.CharField(allow_blank=True, trim_whitespace=False),
        required=False,
        default=None,
        help_text=HEADERS_HELP,
    )
    timeout_seconds = serializers.IntegerField(required=False, default=30, min_value=1, max_value=300)
    enabled = serializers.BooleanField(required=False, default=True)


class ToolPatch(StrictSerializer):
    name = serializers.CharField(max_length=64, required=False)
    url = serializers.CharField(max_length=2000, required=False)
    description = serializers.CharField(max_length=2000, required=False, allow_blank=True)
    parameters = serializers.JSONField(required=False, help_text=PARAMETERS_HELP)
    headers = serializers.DictField(
        child=serializers.CharField(allow_blank=True, trim_whitespace=False),
        required=False,
        help_text=HEADERS_HELP,
    )
    timeout_seconds = serializers.IntegerField(required=False, min_value=1, max_value=300)
    enabled = serializers.BooleanField(required=False)


class DiscoveredToolOut(serializers.Serializer[Any]):
    name = serializers.CharField(help_text="The name runs see: <server>__<tool>.")
    server_name = serializers.CharField(help_text="The tool's name on the MCP server.")
    description = serializers.CharField()
    parameters = serializers.JSONField()


class ConnectionTestOut(serializers.Serializer[Any]):
    ok = serializers.BooleanField(help_text="The server answered and listed its tools.")
    tools = DiscoveredToolOut(many=True)
    error = serializers.CharField(allow_null=True, help_text="Why the server could not be listed.")


# A serializer class cannot declare a field named "errors" (DRF's own attribute), hence inline.
ToolUsageOut = inline_serializer(
    name="AgentToolUsage",
    fields={
        "tool": serializers.CharField(),
        "calls": serializers.IntegerField(),
        "errors": serializers.IntegerField(),
        "error_rate": serializers.FloatField(help_text="errors / calls, 0 to 1."),
        "avg_ms": serializers.FloatField(help_text="Mean time of a call, in milliseconds."),
        "last_error": serializers.CharField(),
        "last_used_at": serializers.DateTimeField(allow_null=True),
    },
    many=True,
)


def _usage(row: tool_selectors.ToolUsage) -> dict[str, Any]:
    return {
        "tool": row.tool,
        "calls": row.calls,
        "errors": row.errors,
        "error_rate": row.error_rate,
        "avg_ms": round(row.avg_ms, 1),
        "last_error": row.last_error,
        "last_used_at": row.last_used_at.isoformat() if row.last_used_at else None,
    }


BAD_TOOL = OpenApiResponse(
    ApiError,
    description="A field is not valid: the name (`invalid_name`, or a built-in's: `name_taken`), the kind,"
    " the URL (`invalid_url`: not http(s), or a private address where those are not allowed), the"
    " parameters (not a JSON Schema of type object), a header, the timeout.",
)
TAKEN = OpenApiResponse(
    ApiError, description="Another tool has this name (`name_taken`), or the organization's limit is reached."
)


class ToolList(APIView):
    actions = {"GET": "agents.view", "POST": "agents.manage"}

    @extend_schema(responses=ToolOut(many=True), operation_id="agent_tools_list")
    def get(self, request: Request) -> Response:
        return Response(ToolOut(tool_selectors.tools_list(), many=True).data)

    @extend_schema(
        request=ToolIn, responses={201: ToolOut, 400: BAD_TOOL, 409: TAKEN}, operation_id="agent_tool_create"
    )
    def post(self, request: Request) -> Response:
        data = ToolIn(data=request.data)
        data.is_valid(raise_exception=True)
        tool = tool_services.tool_create(
            actor=_actor(request), organization=_tenant(request), **data.validated_data
        )
        return Response(ToolOut(tool).data, status=201)


class ToolDetail(APIView):
    actions = {"GET": "agents.view", "PATCH": "agents.manage", "DELETE": "agents.manage"}

    @extend_schema(responses=ToolOut, operation_id="agent_tool_read")
    def get(self, request: Request, tool_id: int) -> Response:
        return Response(ToolOut(tool_selectors.tool_get(tool_id=tool_id)).data)

    @extend_schema(
        request=ToolPatch,
        responses={200: ToolOut, 400: BAD_TOOL, 409: TAKEN},
        operation_id="agent_tool_update",
    )
    def patch(self, request: Request, tool_id: int) -> Response:
        tool = tool_selectors.tool_get(tool_id=tool_id)
        data = ToolPatch(data=request.data)
        data.is_valid(raise_exception=True)
        tool = tool_services.tool_update(
            actor=_actor(request), organization=_tenant(request), tool=tool, **data.validated_data
        )
        return Response(ToolOut(tool).data)

    @extend_schema(responses={204: None}, operation_id="agent_tool_delete")
    def delete(self, request: Request, tool_id: int) -> Response:
        tool = tool_selectors.tool_get(tool_id=tool_id)
        tool_services.tool_delete(actor=_actor(request), organization=_tenant(request), tool=tool)
        return Response(status=204)


class ToolConnectionTest(APIView):
    # Managers only: it connects out with the stored headers.
    actions = {"POST": "agents.manage"}

    @extend_schema(
        request=None,
        responses={
            200: ConnectionTestOut,
            400: OpenApiResponse(ApiError, description="The tool is not an MCP server (`not_mcp`)."),
        },
        operation_id="agent_tool_test",
    )
    def post(self, request: Request, tool_id: int) -> Response:
        result = tool_services.tool_connection_test(tool=tool_selectors.tool_get(tool_id=tool_id))
        return Response(
            ConnectionTestOut({"ok": result.ok, "tools": result.tools, "error": result.error}).data
        )


class ToolStats(APIView):
    actions = {"GET": "agents.view"}

    @extend_schema(responses=ToolUsageOut, operation_id="agent_tool_stats")
    def get(self, request: Request) -> Response:
        return Response([_usage(row) for row in tool_selectors.tool_stats_list()])
