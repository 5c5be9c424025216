"""Prompt template pages on the organization's host (members only, by the middleware;
what each member may do, by @require_action in apps/prompts/pages.py)."""

from django.urls import URLPattern, URLResolver, path

from apps.prompts import pages

urlpatterns: list[URLPattern | URLResolver] = [
    path("prompts/", pages.prompts_page, name="prompts"),
    path("prompts/new/", pages.prompt_create_page, name="prompt-create"),
    path("prompts/<int:prompt_id>/", pages.prompt_page, name="prompt"),
    path("prompts/<int:prompt_id>/edit/", pages.prompt_edit_page, name="prompt-edit"),
    path("prompts/<int:prompt_id>/preview/", pages.prompt_preview_page, name="prompt-preview"),
    path("prompts/<int:prompt_id>/diff/", pages.prompt_diff_page, name="prompt-diff"),
    path(
        "prompts/<int:prompt_id>/versions/<int:prompt_version>/",
        pages.prompt_version_page,
        name="prompt-version",
    ),
    path("prompts/<int:prompt_id>/rollback/", pages.prompt_rollback_page, name="prompt-rollback"),
    path("prompts/<int:prompt_id>/delete/", pages.prompt_delete_page, name="prompt-delete"),
]
