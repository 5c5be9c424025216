"""What every API response shares: the error body, pagination, authentication,
permissions and throttles. Views only name the action they perform."""

from typing import TYPE_CHECKING, Any

import redis
from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, SessionAuthentication
from rest_framework.pagination import CursorPagination
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle

from apps.core.errors import ServiceError

if TYPE_CHECKING:
    # Not at run time: rest_framework.views reads the settings that name this module.
    from rest_framework.views import APIView
from apps.tenancy.roles import ACTIONS, key_allows, role_allows


def error_body(code: str, message: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "fields": fields or {}}}


def api_error(
    status_code: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JsonResponse:
    """An error answered before DRF runs (by middleware), in the same body DRF views use."""
    response = JsonResponse(error_body(code, message), status=status_code)
    if status_code == 401:
        # RFC 9110: a 401 names the scheme to authenticate with.
        response["WWW-Authenticate"] = 'Bearer realm="api"'
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def _message(detail: Any) -> str:
    if isinstance(detail, list) and detail:
        return _message(detail[0])
    if isinstance(detail, dict) and detail:
        return _message(next(iter(detail.values())))
    return str(detail)


def _fields(detail: Any) -> dict[str, Any]:
    if isinstance(detail, dict):
        return {
            str(key): [str(item) for item in value] if isinstance(value, list) else str(value)
            for key, value in detail.items()
        }
    return {}


def handle_exception(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, with every error in one body: {"error": {"code", "message", "fields"}}."""
    if isinstance(exc, ServiceError):
        fields = {exc.field: [exc.message]} if exc.field else {}
        # Some errors carry more for clients (billing's feature and quota refusals).
        extra: dict[str, Any] = getattr(exc, "extra_body", None) or {}
        return Response({**error_body(exc.code, exc.message, fields), **extra}, status=exc.status)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    from rest_framework.views import exception_handler

    response = exception_handler(exc, context)
    if response is None or not isinstance(exc, exceptions.APIException):
        return response
    detail = exc.detail
    if isinstance(exc, exceptions.ValidationError):
        fields = _fields(detail)
        non_field = fields.pop("non_field_errors", None)
        message = _message(non_field) if non_field else "Some fields are not valid."
        if isinstance(detail, list):
            message = _message(detail)
        response.data = error_body("invalid", message, fields)
    else:
        code = exc.get_codes()
        response.data = error_body(code if isinstance(code, str) else exc.default_code, _message(detail))
    return response


class ApiKeyAuthentication(BaseAuthentication):
    """The key was checked by the tenant middleware, which also chose the schema from it."""

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        api_key = getattr(request._request, "api_key", None)
        if api_key is None:
            return None
        from django.contrib.auth.models import AnonymousUser

        return AnonymousUser(), api_key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


class CsrfSessionAuthentication(SessionAuthentication):
    """Browser sessions, with CSRF enforced on unsafe methods (DRF's behaviour, named)."""


class ActionPermission(BasePermission):
    """The view's `actions` maps HTTP methods to keys of apps.tenancy.roles.ACTIONS."""

    def has_permission(self, request: Request, view: "APIView") -> bool:
        chooser = getattr(view, "action_for", None)
        action_key = chooser(request) if chooser else getattr(view, "actions", {}).get(request.method)
        if action_key is None:
            raise exceptions.MethodNotAllowed(str(request.method))
        api_key = getattr(request._request, "api_key", None)
        if api_key is not None:
            if not key_allows(api_key, action_key):
                raise exceptions.PermissionDenied(
                    f"This API key lacks the scope {ACTIONS[action_key].scope}.", code="missing_scope"
                )
            return True
        membership = getattr(request._request, "membership", None)
        if membership is None:
            raise exceptions.NotAuthenticated()
        if not role_allows(membership.role, action_key):
            raise exceptions.PermissionDenied(
                f"Your role ({membership.get_role_display().lower()}) may not do this.", code="role_forbidden"
            )
        return True


class StableCursorPagination(CursorPagination):
    page_size = 50
    max_page_size = 200
    page_size_query_param = "page_size"
    ordering = ("-created_at", "-id")


_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_redis_clients: dict[str, "redis.Redis"] = {}


def _throttle_redis() -> "redis.Redis":
    url = str(settings.CACHES["default"]["LOCATION"])
    client = _redis_clients.get(url)
    if client is None:
        client = _redis_clients[url] = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    return client


class PrincipalRateThrottle(BaseThrottle):
    """One budget per API key, or per person for browser sessions, in Redis.

    A counter per principal that starts with its first request and expires a
    period later: one pipelined round trip and O(1) work per request. (DRF's
    SimpleRateThrottle pickles the time of every request in the window on each
    request, which grows with the rate itself.)"""

    def __init__(self) -> None:
        self.retry_after: int | None = None

    def _principal(self, request: Request) -> str:
        api_key = getattr(request._request, "api_key", None)
        if api_key is not None:
            return f"throttle:key:{api_key.pk}"
        if request.user and request.user.is_authenticated:
            return f"throttle:user:{request.user.pk}"
        return f"throttle:ip:{self.get_ident(request)}"

    @staticmethod
    def rate() -> tuple[int, int]:
        """API_RATE_LIMIT as (requests, seconds), e.g. "600/min" -> (600, 60)."""
        count, _, period = str(settings.API_RATE_LIMIT).partition("/")
        return int(count), _PERIODS[period[:1]]

    def allow_request(self, request: Request, view: "APIView") -> bool:
        limit, window = self.rate()
        key = self._principal(request)
        pipe = _throttle_redis().pipeline(transaction=False)  # INCR is atomic; no MULTI needed
        pipe.incr(key)
        pipe.expire(key, window, nx=True)
        pipe.ttl(key)
        count, _, ttl = pipe.execute()
        if int(count) <= limit:
            return True
        self.retry_after = int(ttl) if int(ttl) > 0 else window
        return False

    def wait(self) -> float | None:
        return self.retry_after


def unauthenticated_api(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
    """/api/v1/ on the public host without a key: say how to authenticate."""
    return api_error(
        401,
        "not_authenticated",
        "Send an API key (Authorization: Bearer ayk_...), or call from your organization's host"
        " when logged in.",
    )
