"""/api/v1/agents/: spread into config/urls_api.py (plain paths, so the isolation suite sees
every route)."""

from django.urls import URLPattern, path

from apps.agents import api

urlpatterns: list[URLPattern] = [
    path("agents/profiles", api.ProfileList.as_view(), name="api-agents-profiles"),
    path("agents/profiles/<int:profile_id>", api.ProfileDetail.as_view(), name="api-agents-profile"),
    path("agents/runs", api.RunList.as_view(), name="api-agents-runs"),
    path("agents/runs/<uuid:run_id>", api.RunDetail.as_view(), name="api-agents-run"),
    path("agents/runs/<uuid:run_id>/events", api.RunEvents.as_view(), name="api-agents-run-events"),
    path("agents/runs/<uuid:run_id>/cancel", api.RunCancel.as_view(), name="api-agents-run-cancel"),
    path("agents/runs/<uuid:run_id>/pause", api.RunPause.as_view(), name="api-agents-run-pause"),
    path("agents/runs/<uuid:run_id>/resume", api.RunResume.as_view(), name="api-agents-run-resume"),
    path("agents/runs/<uuid:run_id>/approve", api.RunApprove.as_view(), name="api-agents-run-approve"),
    path("agents/runs/<uuid:run_id>/deny", api.RunDeny.as_view(), name="api-agents-run-deny"),
    path("agents/runs/<uuid:run_id>/commit", api.RunCommit.as_view(), name="api-agents-run-commit"),
]
