from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from apps.tenancy.audit import request_id


class RequestIdMiddleware:
    """Every response names its request (X-Request-ID), and so does its audit event."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        rid = request_id(request)
        response = self.get_response(request)
        response["X-Request-ID"] = rid
        return response
