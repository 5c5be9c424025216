"""/v1/openapi.json documents the OpenAI-compatible endpoint: what it serves, its
additions (fallbacks, timeout, route headers) and its errors."""

from typing import Any

import pytest
from django.test import Client
from django.urls import URLPattern

import apps.llm.urls_openai
from tests.conftest import host

pytestmark = pytest.mark.django_db


def _document() -> dict[str, Any]:
    response = Client(HTTP_HOST=host(None)).get("/v1/openapi.json")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    document: dict[str, Any] = response.json()
    return document


def test_the_document_lists_exactly_the_endpoints_served(world: Any) -> None:
    document = _document()
    assert document["openapi"].startswith("3.1")
    served = set()
    for pattern in apps.llm.urls_openai.urlpatterns:
        assert isinstance(pattern, URLPattern)
        route = str(pattern.pattern)
        if route in ("openapi.json", "<path:endpoint>"):
            continue
        served.add("/" + route.replace("<str:model_id>", "{model}"))
    assert set(document["paths"]) == served
    chat = document["paths"]["/chat/completions"]["post"]
    assert {"200", "400", "401", "402", "403", "429", "502", "503", "504"} <= set(chat["responses"])
    assert "x-agentyard-model" in chat["responses"]["200"]["headers"]


def test_every_reference_resolves_and_the_additions_are_described(world: Any) -> None:
    document = _document()
    schemas = document["components"]["schemas"]

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if "$ref" in node else []
            return found + [ref for value in node.values() for ref in refs(value)]
        if isinstance(node, list):
            return [ref for value in node for ref in refs(value)]
        return []

    for ref in refs(document):
        assert ref.startswith("#/components/schemas/")
        assert ref.rsplit("/", 1)[1] in schemas, ref
    request = schemas["ChatCompletionRequest"]["properties"]
    assert "extra_body" in request["fallbacks"]["description"]
    assert request["timeout"]["maximum"] == 600
    parts = schemas["Message"]["properties"]["content"]["oneOf"][1]["items"]["oneOf"]
    assert [part["properties"]["type"]["const"] for part in parts] == ["text", "image_url"]
