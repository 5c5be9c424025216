"""Encryption at rest for SSO client secrets (Fernet: AES-128-CBC with HMAC-SHA256).

The key is SSO_ENCRYPTION_KEY when set (any string; rotate by re-saving the
secrets), else derived from SECRET_KEY, so a database dump alone reveals no secret.
"""

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings

from apps.core.errors import Invalid


def _fernet() -> Fernet:
    material = getattr(settings, "SSO_ENCRYPTION_KEY", "") or settings.SECRET_KEY
    digest = hashlib.sha256(("agentyard.sso.secret:" + material).encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def secret_encrypt(secret: str) -> str:
    return _fernet().encrypt(secret.encode()).decode()


def secret_decrypt(token: str) -> str:
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise Invalid(
            "The stored SSO client secret cannot be read (the encryption key changed); enter it again.",
            code="sso_secret_unreadable",
        ) from None
