"""Workers write a heartbeat to Redis; /healthz reads it to tell whether any worker lives."""

import contextlib
import json
import socket
import time
from typing import Any

import redis
from celery import bootsteps
from django.conf import settings

HEARTBEAT_KEY_PREFIX = "agentyard:worker-heartbeat:"


def redis_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)


def heartbeat_write(*, hostname: str) -> None:
    ttl = settings.WORKER_HEARTBEAT_SECONDS * 3
    payload = json.dumps({"hostname": hostname, "at": time.time()})
    redis_client().set(HEARTBEAT_KEY_PREFIX + hostname, payload, ex=ttl)


def heartbeats_read() -> list[dict[str, Any]]:
    client = redis_client()
    keys = list(client.scan_iter(HEARTBEAT_KEY_PREFIX + "*"))
    values = client.mget(keys) if keys else []
    return [json.loads(value) for value in values if value]


class WorkerHeartbeat(bootsteps.StartStopStep):
    """A worker bootstep: a timer in the worker itself, so a hung worker stops beating."""

    requires = ("celery.worker.components:Timer",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        self.tref: Any = None
        self.hostname = getattr(worker, "hostname", None) or socket.gethostname()

    def start(self, worker: Any) -> None:
        self._beat()
        self.tref = worker.timer.call_repeatedly(settings.WORKER_HEARTBEAT_SECONDS, self._beat)

    def stop(self, worker: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None
        with contextlib.suppress(redis.RedisError):
            redis_client().delete(HEARTBEAT_KEY_PREFIX + self.hostname)

    def _beat(self) -> None:
        # /healthz reports Redis itself when it is down.
        with contextlib.suppress(redis.RedisError):
            heartbeat_write(hostname=self.hostname)
