"""The Celery app. Tasks carry the schema they were sent from and run inside it."""

import os

from tenant_schemas_celery.app import CeleryApp

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")

app = CeleryApp("agentyard")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def _install_worker_heartbeat() -> None:
    from apps.core.heartbeat import WorkerHeartbeat

    app.steps["worker"].add(WorkerHeartbeat)


_install_worker_heartbeat()
