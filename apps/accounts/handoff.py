"""Carrying a login from the public site to an organization's host.

Each host keeps its own session cookie: browsers do not share a cookie set for
`localhost` with `acme.localhost`, and host-only cookies keep one
organization's pages from reading another's session anyway. When a logged-in
person goes to an organization, the public site sends them through
`/auth/handoff/` on that host with a signed token that is valid for a minute,
once, and only while their password is unchanged.
"""

import secrets
from urllib.parse import urlencode, urlsplit

from django.contrib.auth import get_user_model
from django.core import signing
from django.core.cache import cache
from django.http import HttpRequest

from apps.accounts.models import User

SALT = "agentyard.accounts.handoff"
MAX_AGE_SECONDS = 60


def handoff_token(*, user: User, host: str, next_path: str) -> str:
    payload = {
        "u": user.pk,
        "d": host,
        "h": user.get_session_auth_hash(),
        "n": next_path,
        "j": secrets.token_urlsafe(12),
    }
    return signing.dumps(payload, salt=SALT, compress=True)


def handoff_redeem(*, token: str, host: str) -> tuple[User, str] | None:
    """The user and the path to show them, or None for a bad, old, reused or
    misdirected token (one minted for another organization's host)."""
    try:
        payload = signing.loads(token, salt=SALT, max_age=MAX_AGE_SECONDS)
    except signing.BadSignature:  # includes SignatureExpired
        return None
    if payload.get("d") != host:
        return None
    user = get_user_model().objects.filter(pk=payload.get("u"), is_active=True).first()
    if user is None or not secrets.compare_digest(user.get_session_auth_hash(), payload.get("h", "")):
        return None
    # Single use: the first redemption claims the nonce.
    if not cache.add(f"handoff-used:{payload['j']}", 1, timeout=MAX_AGE_SECONDS * 2):
        return None
    next_path = str(payload.get("n") or "/")
    if not next_path.startswith("/") or next_path.startswith("//") or "\\" in next_path:
        next_path = "/"
    return user, next_path


def handoff_url(request: HttpRequest, target_url: str) -> str:
    """`target_url` itself when it is on this host; otherwise the target host's
    handoff link carrying the current user's login."""
    parts = urlsplit(target_url)
    if not parts.netloc or parts.netloc == request.get_host() or not request.user.is_authenticated:
        return target_url
    next_path = parts.path or "/"
    if parts.query:
        next_path += "?" + parts.query
    token = handoff_token(user=request.user, host=parts.netloc, next_path=next_path)
    return f"{parts.scheme}://{parts.netloc}/auth/handoff/?{urlencode({'token': token})}"
