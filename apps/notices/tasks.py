from celery import shared_task

from apps.notices import services


@shared_task(name="notices.notice_create")
def notice_create_task(title: str, body: str = "", level: str = "info") -> int:
    """Runs in the schema of whoever sent it (tenant-schemas-celery carries it)."""
    return services.notice_create(title=title, body=body, level=level).pk
