"""The agent tools pages on the organization's host, under Settings (members only, by the
middleware; what each member may do, by @require_action in apps/agents/pages_tools.py)."""

from django.urls import URLPattern, path

from apps.agents import pages_tools

urlpatterns: list[URLPattern] = [
    path("settings/agent-tools/", pages_tools.tools_page, name="agent-tools"),
    path("settings/agent-tools/new/", pages_tools.tool_create_page, name="agent-tool-create"),
    path("settings/agent-tools/<int:tool_id>/", pages_tools.tool_page, name="agent-tool"),
    path("settings/agent-tools/<int:tool_id>/edit/", pages_tools.tool_update_page, name="agent-tool-update"),
    path("settings/agent-tools/<int:tool_id>/test/", pages_tools.tool_test_page, name="agent-tool-test"),
    path(
        "settings/agent-tools/<int:tool_id>/delete/", pages_tools.tool_delete_page, name="agent-tool-delete"
    ),
]
