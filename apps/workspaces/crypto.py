"""Encryption at rest for workspace environment variables and organization secrets.

The same scheme as SSO client secrets (apps/accounts/sso_crypto.py: Fernet, a key
from WORKSPACES_ENCRYPTION_KEY when set, else derived from SECRET_KEY), under its
own derivation label, so one key never serves two purposes."""

import base64
import hashlib
import json

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings

from apps.core.errors import Invalid


def _fernet() -> Fernet:
    material = getattr(settings, "WORKSPACES_ENCRYPTION_KEY", "") or settings.SECRET_KEY
    digest = hashlib.sha256(("agentyard.workspaces.secret:" + material).encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def encrypt_text(value: str) -> str:
    return _fernet().encrypt(value.encode()).decode()


def decrypt_text(token: str, *, what: str) -> str:
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise Invalid(
            f"The stored {what} cannot be read (the encryption key changed); set it again.",
            code="secret_unreadable",
        ) from None


def encrypt_env(env: dict[str, str]) -> str:
    return encrypt_text(json.dumps(env, sort_keys=True)) if env else ""


def decrypt_env(token: str) -> dict[str, str]:
    if not token:
        return {}
    loaded = json.loads(decrypt_text(token, what="environment of this workspace"))
    return {str(key): str(value) for key, value in loaded.items()}
