"""The published OpenAPI schema: valid, warning-free, documenting every error, and
served with its Swagger UI on the public host."""

import io
from pathlib import Path

import pytest
import yaml
from django.core.management import call_command
from django.test import Client

from tests.conftest import host

pytestmark = pytest.mark.django_db


def test_the_schema_generates_and_validates_without_a_single_warning(tmp_path: Path) -> None:
    out = tmp_path / "schema.yaml"
    stderr = io.StringIO()
    call_command(
        "spectacular",
        urlconf="config.urls_tenant",
        validate=True,
        fail_on_warn=True,
        file=str(out),
        stderr=stderr,
    )
    assert "Warning" not in stderr.getvalue()
    assert "Error" not in stderr.getvalue()
    schema = yaml.safe_load(out.read_text())
    assert schema["openapi"].startswith("3.")
    assert "/api/v1/organization" in schema["paths"]


def _schema() -> dict[str, object]:
    response = Client(HTTP_HOST=host()).get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema: dict[str, object] = response.json()
    return schema


def test_the_schema_is_served_on_the_public_host(world: object) -> None:
    schema = _schema()
    paths = schema["paths"]
    assert isinstance(paths, dict)
    assert {
        "/api/v1/organization",
        "/api/v1/members",
        "/api/v1/members/{member_id}",
        "/api/v1/invitations",
        "/api/v1/api-keys",
        "/api/v1/audit-events",
        "/api/v1/audit-events/export",
    } <= set(paths)


def test_the_schema_and_docs_are_served_to_a_client_that_sends_its_key(world: object) -> None:
    from tests.api.conftest import key_client, new_key

    _, raw = new_key(world, ["organization:read"])  # type: ignore[arg-type]
    client = key_client(raw)
    assert client.get("/api/schema/").status_code == 200
    assert client.get("/api/docs/").status_code == 200


def test_every_operation_documents_its_errors_with_the_error_body(world: object) -> None:
    schema = _schema()
    paths = schema["paths"]
    assert isinstance(paths, dict)
    for path, operations in paths.items():
        for method, operation in operations.items():
            responses = operation["responses"]
            for status in ("401", "403", "404", "429"):
                body = responses[status]["content"]["application/json"]["schema"]
                assert body == {"$ref": "#/components/schemas/ApiError"}, (method, path, status)
            if method == "patch":
                assert "412" in responses, path
                assert "400" in responses, path
            if method in {"post", "patch", "delete"}:
                assert "409" in responses, (method, path)
            assert "Retry-After" in responses["429"]["headers"]


def test_deleting_answers_what_the_schema_says(world: object) -> None:
    paths = _schema()["paths"]
    assert isinstance(paths, dict)
    revoke = paths["/api/v1/api-keys/{key_id}"]["delete"]["responses"]
    assert revoke["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ApiKeyOut"
    }
    assert "204" in paths["/api/v1/members/{member_id}"]["delete"]["responses"]


def test_the_swagger_ui_is_served_from_our_own_static_files(world: object) -> None:
    client = Client(HTTP_HOST=host())
    response = client.get("/api/docs/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "/static/vendor/swagger-ui/swagger-ui-bundle.js" in page
    assert "/api/schema/" in page
    assert "cdn" not in page.lower()
    bundle = client.get("/static/vendor/swagger-ui/swagger-ui-bundle.js")
    assert bundle.status_code == 200


def test_the_schema_is_not_served_on_an_organization_host(world: object) -> None:
    from tests.conftest import client_for

    response = client_for(None).get("/api/schema/", HTTP_HOST="alpha.localhost")
    assert response.status_code in {302, 401, 404}
