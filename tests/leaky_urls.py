"""The real tenant URLconf plus one view that forgets isolation, to prove the
isolation suite catches it (tests/test_isolation.py)."""

from django.http import HttpRequest, JsonResponse
from django.urls import path

from apps.notices.models import Notice
from apps.tenancy.middleware import outsiders_allowed
from config.urls_tenant import urlpatterns as tenant_urlpatterns


@outsiders_allowed
def leaky_notices(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"notices": list(Notice.objects.values_list("title", flat=True))})


urlpatterns = [*tenant_urlpatterns, path("leaky/notices/", leaky_notices)]
