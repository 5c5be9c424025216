"""/api/v1/knowledge/: spread into config/urls_api.py (plain paths, so the isolation
suite sees every route)."""

from django.urls import URLPattern, path

from apps.knowledge import api, api_ingest

urlpatterns: list[URLPattern] = [
    path("knowledge/search", api.KnowledgeSearch.as_view(), name="api-knowledge-search"),
    path("knowledge/sources", api_ingest.SourceCollection.as_view(), name="api-knowledge-sources"),
    path("knowledge/sources/<int:source_id>", api.SourceDetail.as_view(), name="api-knowledge-source"),
    path(
        "knowledge/sources/<int:source_id>/reindex",
        api_ingest.SourceReindex.as_view(),
        name="api-knowledge-source-reindex",
    ),
    path("knowledge/policy", api.PolicyView.as_view(), name="api-knowledge-policy"),
]
