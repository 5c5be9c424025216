"""API keys: `ayk_<prefix>_<secret>`. The prefix finds the row by a unique index;
the SHA-256 of the whole key is compared in constant time. Keys are 240 bits of
randomness, so a fast hash is safe (nothing to brute-force), and resolution
stays well under a millisecond."""

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from apps.tenancy.models import ApiKey, Organization

KEY_PREFIX = "ayk_"
# Writing last-used on every request would turn each read into a write.
LAST_USED_RESOLUTION = timedelta(seconds=60)


def key_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def key_generate() -> tuple[str, str]:
    """(prefix, full key)."""
    prefix = secrets.token_hex(6)
    return prefix, f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(30)}"


@dataclass(frozen=True)
class KeyCheck:
    api_key: ApiKey | None
    error_code: str = ""
    error_message: str = ""


def key_check(raw: str) -> KeyCheck:
    """The key's row if it may be used now, else why not (for a 401/403 body)."""
    # The secret may itself contain "_"; the prefix (hex) never does.
    prefix, _, secret = raw.removeprefix(KEY_PREFIX).partition("_")
    if not raw.startswith(KEY_PREFIX) or not prefix or not secret:
        return KeyCheck(None, "invalid_api_key", "That is not an Agentyard API key.")
    digest = key_hash(raw)
    api_key = _key_lookup(prefix, digest)
    if api_key is None or not hmac.compare_digest(api_key.secret_hash, digest):
        return KeyCheck(None, "invalid_api_key", "The API key is not valid.")
    if api_key.revoked_at is not None:
        return KeyCheck(None, "revoked_api_key", "The API key was revoked.")
    if api_key.expires_at is not None and api_key.expires_at <= timezone.now():
        return KeyCheck(None, "expired_api_key", "The API key has expired.")
    if api_key.organization.status == Organization.Status.SUSPENDED:
        return KeyCheck(api_key, "organization_suspended", "The key's organization is suspended.")
    if api_key.organization.status != Organization.Status.ACTIVE:
        return KeyCheck(api_key, "organization_unavailable", "The key's organization is not available.")
    return KeyCheck(api_key)


# Verified keys, by the hash of the full key, for API_KEY_CACHE_SECONDS: a client
# calling in a loop skips the database lookup (about 0.8 ms) on all but the
# first call. A revocation in this process forgets the key at once; elsewhere
# it takes effect within that many seconds (the README says so).
_verified: dict[str, tuple[float, ApiKey]] = {}
_verified_lock = threading.Lock()
_VERIFIED_MAX = 10_000


def _key_lookup(prefix: str, digest: str) -> ApiKey | None:
    ttl = float(settings.API_KEY_CACHE_SECONDS)
    now = time.monotonic()
    if ttl > 0:
        hit = _verified.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
    api_key = ApiKey.objects.select_related("organization").filter(prefix=prefix).first()
    if ttl > 0 and api_key is not None and hmac.compare_digest(api_key.secret_hash, digest):
        with _verified_lock:
            if len(_verified) >= _VERIFIED_MAX:
                _verified.clear()
            _verified[digest] = (now + ttl, api_key)
    return api_key


def key_forget(api_key: ApiKey) -> None:
    """Drop a key from this process's cache (on revocation)."""
    with _verified_lock:
        for digest in [d for d, (_, cached) in _verified.items() if cached.pk == api_key.pk]:
            del _verified[digest]


def key_touch(api_key: ApiKey, ip: str | None) -> None:
    now = timezone.now()
    if (
        api_key.last_used_ip == ip
        and api_key.last_used_at
        and now - api_key.last_used_at < LAST_USED_RESOLUTION
    ):
        return
    ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now, last_used_ip=ip)
    api_key.last_used_at, api_key.last_used_ip = now, ip
