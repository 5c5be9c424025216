"""Where the server may be told to connect by an organization's settings.

An organization's owner types its OIDC issuer URL, and the server then fetches
that URL and the endpoints its discovery document names. Without a check an
owner could point them at the platform's own network (the database, cloud
metadata at 169.254.169.254) and read what comes back. Production allows only
https URLs whose host resolves to public addresses; development and tests,
whose providers run on loopback, set SSO_ALLOW_PRIVATE_ISSUERS.

A name that resolves differently between this check and the connection (DNS
rebinding) is not covered; an egress proxy is the complete answer at scale.
"""

import ipaddress
import socket
from urllib.parse import urlsplit

from django.conf import settings


def outbound_url_problem(url: str) -> str | None:
    """Why the server must not fetch `url`, or None when it may."""
    parts = urlsplit(url)
    if settings.SSO_ALLOW_PRIVATE_ISSUERS:
        return None if parts.scheme in {"http", "https"} and parts.hostname else "That is not a web address."
    if parts.scheme != "https" or not parts.hostname:
        return "Use an https:// address."
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(parts.hostname, parts.port or 443)}
    except (OSError, UnicodeError):
        return f"{parts.hostname} does not resolve."
    for address in addresses:
        if not ipaddress.ip_address(str(address).split("%", 1)[0]).is_global:
            return f"{parts.hostname} resolves to a private or local address ({address})."
    return None
