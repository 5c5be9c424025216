"""/v1/: the OpenAI-compatible endpoint (apps/llm/openai_compat.py), on the public host and
on every organization's host; the API key selects the organization."""

from django.urls import path

from apps.llm import openai_compat, openapi_v1

urlpatterns = [
    path("chat/completions", openai_compat.chat_completions, name="openai-chat-completions"),
    path("embeddings", openai_compat.embeddings, name="openai-embeddings"),
    path("models", openai_compat.models, name="openai-models"),
    path("models/<str:model_id>", openai_compat.model_detail, name="openai-model"),
    path("openapi.json", openapi_v1.openapi_json, name="openai-openapi"),
    path("<path:endpoint>", openai_compat.unknown_endpoint, name="openai-unknown"),
]
