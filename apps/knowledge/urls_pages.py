"""The knowledge page on the organization's host (members only, by the middleware; what
each member may do, by @require_action in apps/knowledge/pages.py)."""

from django.urls import URLPattern, URLResolver, path

from apps.knowledge import pages

urlpatterns: list[URLPattern | URLResolver] = [
    path("knowledge/", pages.knowledge_page, name="knowledge"),
    path("knowledge/sources/", pages.sources_fragment, name="knowledge-sources"),
    path("knowledge/repositories/", pages.repository_add_page, name="knowledge-repository-add"),
    path("knowledge/documents/", pages.document_upload_page, name="knowledge-document-upload"),
    path(
        "knowledge/sources/<int:source_id>/reindex/",
        pages.source_reindex_page,
        name="knowledge-source-reindex",
    ),
    path(
        "knowledge/sources/<int:source_id>/delete/", pages.source_delete_page, name="knowledge-source-delete"
    ),
]
