"""/api/v1/agents/tools and /api/v1/agents/tool-stats: spread into config/urls_api.py (plain
paths, so the isolation suite sees every route)."""

from django.urls import URLPattern, path

from apps.agents import api_tools

urlpatterns: list[URLPattern] = [
    path("agents/tools", api_tools.ToolList.as_view(), name="api-agents-tools"),
    path("agents/tools/<int:tool_id>", api_tools.ToolDetail.as_view(), name="api-agents-tool"),
    path(
        "agents/tools/<int:tool_id>/test", api_tools.ToolConnectionTest.as_view(), name="api-agents-tool-test"
    ),
    path("agents/tool-stats", api_tools.ToolStats.as_view(), name="api-agents-tool-stats"),
]
