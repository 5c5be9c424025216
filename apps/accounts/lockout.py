"""Login throttling against password guessing.

Failed password logins are counted in the cache per email and per client IP,
each in a window of LOGIN_FAILURE_WINDOW_SECONDS from its first failure. At
LOGIN_FAILURE_LIMIT failures for an email, or LOGIN_IP_FAILURE_LIMIT from one
IP, that email or IP is locked for LOGIN_LOCKOUT_SECONDS: every login for it
answers 429 with Retry-After, even with the right password, so guessing on
learns nothing. A successful login clears the email's count, never the IP's
(one valid account must not reset a guesser's budget).

Emails are hashed in the keys: the cache need not hold who tried to log in.
"""

import hashlib
import math
import time
import unicodedata
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm
from django.core.cache import cache
from django.core.exceptions import NON_FIELD_ERRORS
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from apps.accounts.models import User, normalize_email
from apps.tenancy.audit import Actor, audit_record, client_ip

EMAIL = "email"
IP = "ip"


@dataclass(frozen=True)
class Lockout:
    scope: str  # EMAIL or IP
    seconds_left: int

    @property
    def minutes_left(self) -> int:
        return max(1, math.ceil(self.seconds_left / 60))

    @property
    def message(self) -> str:
        who = "this account" if self.scope == EMAIL else "your network"
        unit = "minute" if self.minutes_left == 1 else "minutes"
        return f"Too many failed attempts for {who}. Try again in {self.minutes_left} {unit}."


def _subject(scope: str, value: str) -> str:
    if scope == EMAIL:
        # As the login form reads it (NFKC, like Django's UsernameField), so a
        # look-alike spelling of the address shares the address's count.
        value = normalize_email(unicodedata.normalize("NFKC", value))
    return hashlib.sha256(f"{scope}:{value}".encode()).hexdigest()[:32]


def _failures_key(scope: str, value: str) -> str:
    return f"login-failures:{_subject(scope, value)}"


def _lock_key(scope: str, value: str) -> str:
    return f"login-lock:{_subject(scope, value)}"


def _subjects(email: str, ip: str | None) -> list[tuple[str, str, int]]:
    subjects = []
    if email.strip():
        subjects.append((EMAIL, email, int(settings.LOGIN_FAILURE_LIMIT)))
    if ip:
        subjects.append((IP, ip, int(settings.LOGIN_IP_FAILURE_LIMIT)))
    return subjects


def lockout_check(*, email: str, ip: str | None) -> Lockout | None:
    """The lock that refuses this login now, if any (the longer one when both apply)."""
    now = time.time()
    found: Lockout | None = None
    for scope, value, _limit in _subjects(email, ip):
        until = cache.get(_lock_key(scope, value))
        if until is not None and float(until) > now:
            lock = Lockout(scope=scope, seconds_left=math.ceil(float(until) - now))
            if found is None or lock.seconds_left > found.seconds_left:
                found = lock
    return found


def _count(key: str, window: int) -> int:
    cache.add(key, 0, timeout=window)
    try:
        return int(cache.incr(key))
    except ValueError:  # the window ran out between add and incr
        cache.set(key, 1, timeout=window)
        return 1


def failure_record(*, email: str, ip: str | None) -> Lockout | None:
    """Count a failed login; returns the lock it starts, if it reaches a limit."""
    window = int(settings.LOGIN_FAILURE_WINDOW_SECONDS)
    seconds = int(settings.LOGIN_LOCKOUT_SECONDS)
    started: Lockout | None = None
    for scope, value, limit in _subjects(email, ip):
        if _count(_failures_key(scope, value), window) >= limit:
            cache.set(_lock_key(scope, value), time.time() + seconds, timeout=seconds)
            cache.delete(_failures_key(scope, value))
            started = started or Lockout(scope=scope, seconds_left=seconds)
    return started


def success_record(*, email: str) -> None:
    cache.delete(_failures_key(EMAIL, email))


def lockout_clear(*, email: str = "", ip: str | None = None) -> None:
    """Lift locks and counts (support, and tests)."""
    for scope, value, _limit in _subjects(email, ip):
        cache.delete_many([_failures_key(scope, value), _lock_key(scope, value)])


class LoginThrottleMixin:
    """For a LoginView: refuses locked logins with 429 before the password is
    checked, counts failures, and audits auth.login_failed, auth.locked_out
    and auth.login (no organization: logins happen on the public site)."""

    request: HttpRequest
    template_name: str

    def _attempted_email(self) -> str:
        return str(self.request.POST.get("username", ""))[:254]

    def _locked_response(self, lock: Lockout) -> HttpResponse:
        form_class: type[AuthenticationForm] = self.get_form_class()  # type: ignore[attr-defined]
        form = form_class(self.request, initial={"username": self._attempted_email()})
        # Unbound, so the password is never checked; the message shows where login errors do.
        form.cleaned_data = {}
        form.add_error(None, lock.message)
        context = self.get_context_data(form=form)  # type: ignore[attr-defined]
        response = TemplateResponse(self.request, self.template_name, context, status=429)
        response["Retry-After"] = str(lock.seconds_left)
        return response

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        lock = lockout_check(email=self._attempted_email(), ip=client_ip(request))
        if lock is not None:
            return self._locked_response(lock)
        response: HttpResponse = super().post(request, *args, **kwargs)  # type: ignore[misc]
        return response

    def form_invalid(self, form: Any) -> HttpResponse:
        guessed = form.has_error(NON_FIELD_ERRORS, "invalid_login") or form.has_error(
            NON_FIELD_ERRORS, "inactive"
        )
        if not guessed:  # a missing field, or a login that must go through SSO: no password was tried
            response: HttpResponse = super().form_invalid(form)  # type: ignore[misc]
            return response
        email = self._attempted_email()
        actor = Actor.from_request(self.request)
        target = User.objects.filter(email=normalize_email(email)).first() if email else None
        audit_record(
            actor=actor, organization=None, action="auth.login_failed", target=target, after={"email": email}
        )
        lock = failure_record(email=email, ip=actor.ip)
        if lock is not None:
            audit_record(
                actor=actor,
                organization=None,
                action="auth.locked_out",
                target=target if lock.scope == EMAIL else None,
                after={"email": email, "scope": lock.scope, "seconds": lock.seconds_left},
            )
            return self._locked_response(lock)
        refused: HttpResponse = super().form_invalid(form)  # type: ignore[misc]
        return refused

    def form_valid(self, form: Any) -> HttpResponse:
        response: HttpResponse = super().form_valid(form)  # type: ignore[misc]
        user = form.get_user()
        success_record(email=user.email)
        audit_record(
            actor=Actor.from_request(self.request), organization=None, action="auth.login", target=user
        )
        return response
