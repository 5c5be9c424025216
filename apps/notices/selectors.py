from django.db.models import QuerySet

from apps.notices.models import Notice


def notices_recent(*, limit: int = 20) -> QuerySet[Notice]:
    return Notice.objects.all()[:limit]
