"""Workspace pages and the secrets page on the organization's host (members only, by
the middleware; what each member may do, by @require_action in apps/workspaces/pages.py)."""

from django.urls import URLPattern, URLResolver, path

from apps.workspaces import pages

urlpatterns: list[URLPattern | URLResolver] = [
    path("workspaces/", pages.workspaces_page, name="workspaces"),
    path("workspaces/new/", pages.workspace_create_page, name="workspace-create"),
    path("workspaces/<int:workspace_id>/", pages.workspace_page, name="workspace"),
    path("workspaces/<int:workspace_id>/start/", pages.workspace_start_page, name="workspace-start"),
    path("workspaces/<int:workspace_id>/stop/", pages.workspace_stop_page, name="workspace-stop"),
    path("workspaces/<int:workspace_id>/archive/", pages.workspace_archive_page, name="workspace-archive"),
    path("workspaces/<int:workspace_id>/destroy/", pages.workspace_destroy_page, name="workspace-destroy"),
    path("workspaces/<int:workspace_id>/tree/", pages.workspace_tree_page, name="workspace-tree"),
    path("workspaces/<int:workspace_id>/file/", pages.workspace_file_page, name="workspace-file"),
    path("settings/secrets/", pages.secrets_page, name="settings-secrets"),
    path("settings/secrets/new/", pages.secret_set_page, name="settings-secret-set"),
    path("settings/secrets/<int:secret_id>/delete/", pages.secret_delete_page, name="settings-secret-delete"),
]
