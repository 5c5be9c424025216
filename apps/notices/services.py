from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from apps.notices.models import Notice
from apps.tenancy.db import tenant_connection
from apps.tenancy.groups import tenant_group


def notice_payload(notice: Notice) -> dict[str, object]:
    return {
        "id": notice.pk,
        "title": notice.title,
        "body": notice.body,
        "level": notice.level,
        "created_at": notice.created_at.isoformat(),
    }


@transaction.atomic
def notice_create(*, title: str, body: str = "", level: str = Notice.Level.INFO) -> Notice:
    """Store a notice in the current organization's schema and push it to open pages."""
    notice = Notice.objects.create(title=title, body=body, level=level)
    group = tenant_group("notices", tenant_connection().schema_name)
    payload = notice_payload(notice)
    transaction.on_commit(lambda: notice_broadcast(group=group, payload=payload))
    return notice


def notice_broadcast(*, group: str, payload: dict[str, object]) -> None:
    layer = get_channel_layer()
    if layer is not None:
        async_to_sync(layer.group_send)(group, {"type": "notice.created", "notice": payload})
