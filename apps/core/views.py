from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from apps.core.health import health_report


@require_GET
def landing(request: HttpRequest) -> HttpResponse:
    return render(request, "core/landing.html")


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    status, report = health_report()
    return JsonResponse(report, status=status)
