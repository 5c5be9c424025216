import time
from typing import Any

from django.conf import settings
from django.db import connection

from apps.core.heartbeat import heartbeats_read, redis_client


def _timed(check: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        detail = check()
        result = {"ok": True, **(detail or {})}
    except Exception as exc:  # a health check reports every failure, whatever it is
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    result["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


def _database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _redis() -> None:
    redis_client().ping()


def _workers() -> dict[str, Any]:
    stale_after = settings.WORKER_HEARTBEAT_SECONDS * 3
    now = time.time()
    alive = [beat["hostname"] for beat in heartbeats_read() if now - beat["at"] <= stale_after]
    if not alive:
        raise RuntimeError(f"no worker heartbeat in the last {stale_after} s")
    return {"workers": sorted(alive)}


def health_report() -> tuple[int, dict[str, Any]]:
    """200 when the database and Redis answer; "degraded" (still 200) with no live worker."""
    checks = {"database": _timed(_database), "redis": _timed(_redis)}
    checks["workers"] = _timed(_workers) if checks["redis"]["ok"] else {"ok": False, "error": "Redis is down"}
    if not (checks["database"]["ok"] and checks["redis"]["ok"]):
        return 503, {"status": "down", "checks": checks}
    status = "ok" if checks["workers"]["ok"] else "degraded"
    return 200, {"status": status, "checks": checks}
