"""The OpenAPI schema's shared parts: the error body, and the error responses every
operation can give, so clients (and schemathesis) know each status in advance.

Apart from apps/core/api.py because rest_framework.views imports that module
while it loads, and drf-spectacular imports rest_framework.views."""

from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import ComponentRegistry
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

# Why each error status happens; the body is always ApiError.
ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "The request is not valid: malformed JSON, a wrong type, an unknown field or parameter."
    " `fields` names each field at fault.",
    401: "No credentials, or an API key that is invalid (`invalid_api_key`), expired"
    " (`expired_api_key`) or revoked (`revoked_api_key`).",
    403: "Not allowed: the key lacks the scope (`missing_scope`, the message names it), the role may"
    " not (`role_forbidden`), the key belongs to another organization's host (`wrong_organization`),"
    " a missing CSRF token, or a rule such as `owner_only`; or the organization's plan lacks the feature"
    " (`feature_not_in_plan`: beside `error` the body names the `feature` and the `plans` that include it).",
    404: "No such object in this organization, or an unknown page cursor.",
    409: "The change conflicts with the current state, e.g. `last_owner` or `already_member`.",
    412: "If-Match (or If-Unmodified-Since) does not match the current version: read it again.",
    415: "The body is not JSON.",
    429: "Too many requests for this key or person; retry after Retry-After seconds.",
}


@extend_schema_field(
    {
        "type": "object",
        "additionalProperties": {
            "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]
        },
        "description": "Field name -> what is wrong with it. Empty when no one field is at fault.",
    }
)
class ErrorFieldsField(serializers.DictField):
    pass


class ApiErrorDetail(serializers.Serializer[Any]):
    code = serializers.CharField(help_text="Machine-readable, e.g. `missing_scope`, `last_owner`.")
    message = serializers.CharField(help_text="For people: what went wrong and what to do.")
    # DRF's metaclass takes declared fields out of the class body, so this name
    # does not replace Serializer.fields at run time; mypy cannot know that.
    fields = ErrorFieldsField()  # type: ignore[assignment]


class ApiError(serializers.Serializer[Any]):
    error = ApiErrorDetail()


def error_statuses(method: str, operation: dict[str, Any]) -> list[int]:
    """The error statuses an operation can answer with, from what it accepts."""
    statuses = [401, 403, 404, 429]
    takes_query = any(parameter.get("in") == "query" for parameter in operation.get("parameters", []))
    takes_body = "requestBody" in operation
    if takes_query or takes_body:
        statuses.append(400)
    if takes_body:
        statuses.append(415)
    if method in {"POST", "PATCH", "PUT", "DELETE"}:
        statuses.append(409)
    if method in {"PATCH", "PUT"}:
        statuses.append(412)
    return sorted(statuses)


class ApiAutoSchema(AutoSchema):
    """drf-spectacular's schema, with every error status documented with the error body."""

    def get_operation(
        self, path: str, path_regex: str, path_prefix: str, method: str, registry: ComponentRegistry
    ) -> dict[str, Any] | None:
        operation = super().get_operation(path, path_regex, path_prefix, method, registry)
        if operation is None:
            return None
        responses: dict[str, Any] = operation["responses"]
        for status in error_statuses(method.upper(), operation):
            if str(status) in responses:
                continue
            response: dict[str, Any] = self._get_response_for_code(  # type: ignore[no-untyped-call]
                ApiError, str(status)
            )
            response["description"] = ERROR_DESCRIPTIONS[status]
            if status == 429:
                response["headers"] = {
                    "Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}
                }
            if status == 401:
                response["headers"] = {
                    "WWW-Authenticate": {"schema": {"type": "string"}, "description": 'Bearer realm="api"'}
                }
            responses[str(status)] = response
        return operation
