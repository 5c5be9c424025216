"""Agent run pages on the organization's host (members only, by the middleware; what each
member may do, by @require_action in apps/agents/pages.py)."""

from django.urls import URLPattern, path

from apps.agents import pages, pages_profiles

urlpatterns: list[URLPattern] = [
    path("agents/", pages.runs_page, name="agent-runs"),
    path("agents/new/", pages.run_create_page, name="agent-run-create"),
    path("agents/runs/<uuid:run_id>/", pages.run_page, name="agent-run"),
    path("agents/runs/<uuid:run_id>/cancel/", pages.run_cancel_page, name="agent-run-cancel"),
    path("agents/runs/<uuid:run_id>/pause/", pages.run_pause_page, name="agent-run-pause"),
    path("agents/runs/<uuid:run_id>/resume/", pages.run_resume_page, name="agent-run-resume"),
    path("agents/runs/<uuid:run_id>/approve/", pages.run_approve_page, name="agent-run-approve"),
    path("agents/runs/<uuid:run_id>/deny/", pages.run_deny_page, name="agent-run-deny"),
    path("agents/runs/<uuid:run_id>/commit/", pages.run_commit_page, name="agent-run-commit"),
    path("agents/profiles/", pages_profiles.profiles_page, name="agent-profiles"),
    path("agents/profiles/new/", pages_profiles.profile_create_page, name="agent-profile-create"),
    path("agents/profiles/<int:profile_id>/", pages_profiles.profile_page, name="agent-profile"),
    path(
        "agents/profiles/<int:profile_id>/delete/",
        pages_profiles.profile_delete_page,
        name="agent-profile-delete",
    ),
]
