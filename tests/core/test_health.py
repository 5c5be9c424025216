import json
import subprocess

import pytest
from django.test import override_settings

from tests.conftest import World, client_for, free_port


def _health() -> tuple[int, dict[str, object]]:
    response = client_for(None).get("/healthz")
    assert response["Content-Type"] == "application/json"
    return response.status_code, json.loads(response.content)


def test_healthz_is_ok_with_database_redis_and_a_live_worker(
    live_db: World, celery_worker: subprocess.Popen[bytes]
) -> None:
    status, report = _health()
    assert status == 200
    assert report["status"] == "ok"
    checks = report["checks"]
    assert isinstance(checks, dict)
    assert checks["database"]["ok"] is True
    assert checks["redis"]["ok"] is True
    assert any(name.startswith("test-worker@") for name in checks["workers"]["workers"])


@pytest.mark.django_db
def test_healthz_is_degraded_when_no_worker_beats(world: World) -> None:
    with override_settings(REDIS_URL="redis://127.0.0.1:6379/12"):  # a database no worker writes to
        status, report = _health()
    assert status == 200
    assert report["status"] == "degraded"
    assert "no worker heartbeat" in report["checks"]["workers"]["error"]  # type: ignore[index]


@pytest.mark.django_db
def test_healthz_is_down_and_names_redis_when_redis_is_unreachable(world: World) -> None:
    with override_settings(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"):
        status, report = _health()
    assert status == 503
    assert report["status"] == "down"
    assert report["checks"]["redis"]["ok"] is False  # type: ignore[index]
    assert "Connection" in report["checks"]["redis"]["error"]  # type: ignore[index]


@pytest.mark.django_db
def test_healthz_is_served_on_the_public_site_only(world: World) -> None:
    assert client_for(world.amy, world.alpha).get("/healthz").status_code == 404


@pytest.mark.django_db
def test_metrics_count_requests_and_database_queries(world: World) -> None:
    client_for(world.amy, world.alpha).get("/")
    body = client_for(None).get("/metrics").content.decode()
    assert "django_http_requests_total_by_view_transport_method_total" in body
    # Counted through django-tenants' ORIGINAL_BACKEND, django-prometheus' PostgreSQL backend.
    assert 'django_db_execute_total{alias="default",vendor="postgresql"}' in body
