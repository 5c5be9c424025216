"""The OpenAPI document of the OpenAI-compatible endpoint, served at /v1/openapi.json.

/v1/ follows OpenAI's API (its clients work unchanged), so this document describes
the subset served here and Agentyard's additions to it: the extra request fields
`fallbacks` and `timeout`, the route headers (`x-agentyard-*`) and the error codes.
It is its own document, not part of /api/schema/: the management API's errors and
authentication differ (OpenAI's error body here, Agentyard's there)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

ERROR_STATUSES = {
    "400": "The request is wrong (`param` names the part): an unknown model or fallback (`unknown_model`,"
    " `fallback_unusable`), messages over the context window (`context_window_exceeded`), an invalid tool"
    " schema (`invalid_tool`), images for a model without vision (`vision_unsupported`), a bad or"
    " oversized image (`invalid_image`, `too_many_images`), a body over 32 MiB"
    " (`request_too_large`), or another invalid parameter.",
    "401": "No API key, or an unknown, revoked or expired one.",
    "402": "Over a budget of the organization, the API key or the run (code `budget_exceeded`);"
    " nothing was sent.",
    "403": "The key lacks the scope (`llm:write` to call, `llm:read` to list), the model is turned off for"
    " the organization (`model_disabled`), its provider has no credentials (`missing_credentials`), or"
    " the organization's plan lacks AI assistance (`feature_not_in_plan`; the error names `feature`"
    " and `plans`).",
    "429": "Rate limited (this key's throttle, or the provider's, after retries); see Retry-After.",
    "502": "The provider failed (its error's stable code, e.g. `provider_error`, `malformed_response`).",
    "503": "Every provider of the model and its fallbacks is failing (`circuit_open`) or unreachable.",
    "504": "The provider did not answer within the timeout (`provider_timeout`).",
}

ROUTE_HEADERS = {
    "x-agentyard-model": "The catalog model that answered.",
    "x-agentyard-provider": "Its provider kind.",
    "x-agentyard-reason": "Why the router chose it (e.g. the `auto` heuristic, a fallback).",
    "x-agentyard-cache": "The cache level that answered (l1, l2, l3), if any.",
    "x-agentyard-cost-usd": "What the call cost (0 for a cache hit).",
    "x-agentyard-latency-ms": "Time spent in the gateway, provider included.",
    "x-agentyard-attempts": "Each model tried and its outcome, as JSON.",
}


def _error_responses() -> dict[str, Any]:
    return {
        status: {
            "description": text,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for status, text in ERROR_STATUSES.items()
    }


def _content_part() -> dict[str, Any]:
    return {
        "oneOf": [
            {
                "type": "object",
                "required": ["type", "text"],
                "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
            },
            {
                "type": "object",
                "required": ["type", "image_url"],
                "properties": {
                    "type": {"const": "image_url"},
                    "image_url": {
                        "type": "object",
                        "required": ["url"],
                        "properties": {
                            "url": {
                                "type": "string",
                                "description": "An https URL or a `data:image/...;base64,` URL."
                                " For models with vision only.",
                            },
                            "detail": {"type": "string", "enum": ["auto", "low", "high"]},
                        },
                    },
                },
            },
        ]
    }


def _schemas() -> dict[str, Any]:
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["message", "type", "code"],
                    "properties": {
                        "message": {"type": "string"},
                        "type": {"type": "string", "description": "OpenAI's error type for the status."},
                        "param": {"type": ["string", "null"]},
                        "code": {"type": "string", "description": "Agentyard's stable error code."},
                    },
                }
            },
        },
        "Message": {
            "type": "object",
            "required": ["role"],
            "properties": {
                "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
                "content": {
                    "oneOf": [
                        {"type": "string"},
                        {"type": "array", "items": _content_part()},
                        {"type": "null"},
                    ]
                },
                "name": {"type": "string"},
                "tool_calls": {"type": "array", "items": {"$ref": "#/components/schemas/ToolCall"}},
                "tool_call_id": {"type": "string", "description": "Required for role `tool`."},
            },
        },
        "ToolCall": {
            "type": "object",
            "required": ["id", "type", "function"],
            "properties": {
                "id": {"type": "string"},
                "type": {"const": "function"},
                "function": {
                    "type": "object",
                    "required": ["name", "arguments"],
                    "properties": {
                        "name": {"type": "string"},
                        "arguments": {"type": "string", "description": "JSON text."},
                    },
                },
            },
        },
        "ChatCompletionRequest": {
            "type": "object",
            "required": ["model", "messages"],
            "properties": {
                "model": {
                    "type": "string",
                    "description": "A catalog model or alias the organization may use (GET /v1/models), "
                    "or `auto`: the router picks a cheaper model for simple requests and a stronger "
                    "one for hard ones.",
                },
                "messages": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"$ref": "#/components/schemas/Message"},
                },
                "tools": {
                    "type": "array",
                    "description": "Function tools (JSON Schema of type object). Models without native "
                    "tool calling get them emulated, with the same result shape.",
                    "items": {"type": "object"},
                },
                "tool_choice": {
                    "description": "`auto`, `none`, `required` or {type: function, function: {name}}."
                },
                "response_format": {
                    "type": "object",
                    "description": "{type: text | json_object | json_schema, json_schema: {schema}}.",
                },
                "temperature": {"type": "number", "minimum": 0, "maximum": 2},
                "top_p": {"type": "number", "minimum": 0, "maximum": 1},
                "max_tokens": {"type": "integer", "minimum": 1},
                "max_completion_tokens": {"type": "integer", "minimum": 1},
                "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
                "seed": {"type": "integer"},
                "n": {"type": "integer", "enum": [1]},
                "stream": {"type": "boolean", "description": "Server-sent events, as OpenAI sends them."},
                "stream_options": {
                    "type": "object",
                    "properties": {"include_usage": {"type": "boolean"}},
                },
                "fallbacks": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Agentyard: models to try in order when the chosen one fails, for this "
                    "request only (instead of the organization's routing policy). With the openai SDK: "
                    "`extra_body={'fallbacks': [...]}`.",
                },
                "timeout": {
                    "type": "number",
                    "minimum": 1,
                    "maximum": 600,
                    "description": "Agentyard: seconds each attempt (and each streamed chunk) may take, "
                    "for this request only.",
                },
            },
        },
        "ChatCompletion": {
            "type": "object",
            "description": "OpenAI's chat.completion object; `usage.prompt_tokens_details.cached_tokens` "
            "counts prompt tokens the provider served from its cache.",
            "required": ["id", "object", "created", "model", "choices", "usage"],
            "properties": {
                "id": {"type": "string"},
                "object": {"const": "chat.completion"},
                "created": {"type": "integer"},
                "model": {"type": "string"},
                "choices": {"type": "array", "items": {"type": "object"}},
                "usage": {"type": "object"},
            },
        },
        "EmbeddingRequest": {
            "type": "object",
            "required": ["model", "input"],
            "properties": {
                "model": {"type": "string"},
                "input": {
                    "oneOf": [
                        {"type": "string"},
                        {"type": "array", "items": {"type": "string"}, "maxItems": 2048},
                    ]
                },
                "encoding_format": {"type": "string", "enum": ["float", "base64"]},
            },
        },
        "Model": {
            "type": "object",
            "required": ["id", "object", "created", "owned_by"],
            "properties": {
                "id": {"type": "string"},
                "object": {"const": "model"},
                "created": {"type": "integer"},
                "owned_by": {"type": "string"},
            },
        },
    }


def openapi_document() -> dict[str, Any]:
    json_body = "application/json"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Agentyard OpenAI-compatible API",
            "version": "1.0.0",
            "description": "OpenAI's chat completions, embeddings and models endpoints, served by the "
            "Agentyard LLM gateway (routing, fallback, caching, budgets and metering for the organization "
            "of the API key). Point an OpenAI client at `https://<host>/v1` with an Agentyard API key.",
        },
        "servers": [{"url": "/v1"}],
        "security": [{"apiKey": []}],
        "components": {
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An Agentyard API key (`ayk_...`); it selects its organization.",
                }
            },
            "schemas": _schemas(),
        },
        "paths": {
            "/chat/completions": {
                "post": {
                    "operationId": "chat_completions",
                    "summary": "A chat completion (JSON, or server-sent events with `stream`).",
                    "requestBody": {
                        "required": True,
                        "content": {
                            json_body: {"schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "The completion; with `stream`, `text/event-stream` chunks"
                            " ending in `data: [DONE]`.",
                            "headers": {
                                name: {"description": text, "schema": {"type": "string"}}
                                for name, text in ROUTE_HEADERS.items()
                            },
                            "content": {
                                json_body: {"schema": {"$ref": "#/components/schemas/ChatCompletion"}},
                                "text/event-stream": {"schema": {"type": "string"}},
                            },
                        },
                        **_error_responses(),
                    },
                }
            },
            "/embeddings": {
                "post": {
                    "operationId": "embeddings",
                    "summary": "Embeddings of one or more texts.",
                    "requestBody": {
                        "required": True,
                        "content": {json_body: {"schema": {"$ref": "#/components/schemas/EmbeddingRequest"}}},
                    },
                    "responses": {
                        "200": {"description": "OpenAI's `list` of `embedding` objects, with usage."},
                        **_error_responses(),
                    },
                }
            },
            "/models": {
                "get": {
                    "operationId": "models_list",
                    "summary": "The models the key's organization may call.",
                    "responses": {
                        "200": {
                            "description": "OpenAI's `list` of `model` objects.",
                            "content": {
                                json_body: {
                                    "schema": {
                                        "type": "object",
                                        "properties": {
                                            "object": {"const": "list"},
                                            "data": {
                                                "type": "array",
                                                "items": {"$ref": "#/components/schemas/Model"},
                                            },
                                        },
                                    }
                                }
                            },
                        },
                        **_error_responses(),
                    },
                }
            },
            "/models/{model}": {
                "get": {
                    "operationId": "models_retrieve",
                    "summary": "One model, if the organization may call it.",
                    "parameters": [
                        {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {
                        "200": {
                            "description": "The model.",
                            "content": {json_body: {"schema": {"$ref": "#/components/schemas/Model"}}},
                        },
                        **_error_responses(),
                    },
                }
            },
        },
    }


@require_GET
def openapi_json(request: HttpRequest) -> JsonResponse:
    """The document, to anyone (it holds no organization's data)."""
    response = JsonResponse(openapi_document())
    response["Cache-Control"] = "public, max-age=3600"
    return response
