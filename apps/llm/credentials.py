"""Provider credentials: an organization's own (encrypted at rest) or the platform's.

An organization's ProviderCredential for a provider kind wins; otherwise the
platform default from settings (OPENAI_API_KEY / OPENAI_BASE_URL, ANTHROPIC_*,
GEMINI_*). Keys are encrypted with Fernet (AES-128-CBC + HMAC-SHA256) under
LLM_ENCRYPTION_KEY, or a key derived from SECRET_KEY, so a database dump alone
reveals no key. The "local" provider needs none; "openai_compatible" needs a base URL.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings

from apps.core.errors import Invalid

# Provider kinds that work without an API key.
KEYLESS_PROVIDERS = frozenset({"local"})
# Provider kinds that need a base URL (there is no public endpoint to default to).
BASE_URL_REQUIRED = frozenset({"openai_compatible"})
# Provider kinds whose credentials carry options (ProviderConfig.options), and those options:
# an OpenAI-compatible server's preset and per-option overrides (providers/openai_compatible.py).
OPTION_PROVIDERS = frozenset({"openai_compatible"})
COMPATIBLE_OPTIONS = ("server", "tools", "json", "stream_usage", "embeddings")
# Provider kind -> the settings holding the platform default key and base URL.
PLATFORM_SETTINGS = {
    "openai": ("OPENAI_API_KEY", "OPENAI_BASE_URL"),
    "anthropic": ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"),
    "gemini": ("GEMINI_API_KEY", "GEMINI_BASE_URL"),
}


@dataclass(frozen=True)
class ResolvedCredential:
    provider: str
    api_key: str
    base_url: str
    source: str  # "organization", "platform" or "none" (a keyless provider)
    # The provider's options (ProviderConfig.options), e.g. an openai_compatible server's preset.
    options: dict[str, Any] = field(default_factory=dict)


def _fernet() -> Fernet:
    material = getattr(settings, "LLM_ENCRYPTION_KEY", "") or settings.SECRET_KEY
    digest = hashlib.sha256(("agentyard.llm.provider-key:" + material).encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def api_key_encrypt(api_key: str) -> str:
    return _fernet().encrypt(api_key.encode()).decode() if api_key else ""


def api_key_decrypt(token: str) -> str:
    if not token:
        return ""
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise Invalid(
            "The stored provider API key cannot be read (the encryption key changed); enter it again.",
            code="llm_key_unreadable",
        ) from None


def api_key_hint(api_key: str) -> str:
    return "…" + api_key[-4:] if len(api_key) >= 8 else ""


def platform_credential(provider: str) -> ResolvedCredential | None:
    names = PLATFORM_SETTINGS.get(provider)
    if names is None:
        return None
    api_key = str(getattr(settings, names[0], "") or "")
    base_url = str(getattr(settings, names[1], "") or "")
    if not api_key:
        return None
    return ResolvedCredential(provider=provider, api_key=api_key, base_url=base_url, source="platform")
