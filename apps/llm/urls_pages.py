"""LLM gateway pages on the organization's host (members only, by the middleware;
what each member may do, by @require_action in apps/llm/pages.py)."""

from django.urls import URLPattern, URLResolver, path

from apps.llm import pages

urlpatterns: list[URLPattern | URLResolver] = [
    path("llm/models/", pages.models_page, name="llm-models"),
    path("llm/models/switch/", pages.model_switch_page, name="llm-model-switch"),
    path("llm/credentials/", pages.credentials_page, name="llm-credentials"),
    path("llm/credentials/set/", pages.credential_set_page, name="llm-credential-set"),
    path("llm/credentials/delete/", pages.credential_delete_page, name="llm-credential-delete"),
    path("llm/usage/", pages.usage_page, name="llm-usage"),
]
