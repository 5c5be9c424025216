"""Which host serves what, and how to build links between the public site and organizations."""

from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest

from apps.tenancy.models import Organization


def split_host(host: str) -> tuple[str, str]:
    """'acme.localhost:8000' -> ('acme.localhost', '8000'); IPv6 literals keep their brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1], host[end + 2 :] if end + 1 < len(host) else ""
    name, _, port = host.partition(":")
    return name, port


def is_public_host(hostname: str) -> bool:
    return hostname == settings.BASE_DOMAIN or hostname in settings.PUBLIC_HOSTS


def is_platform_host(hostname: str) -> bool:
    """The bare domain or one of its subdomains: safe targets for redirects after login."""
    return is_public_host(hostname) or hostname.endswith("." + settings.BASE_DOMAIN)


def _port_suffix(request: HttpRequest) -> str:
    if settings.SITE_PORT:
        port = str(settings.SITE_PORT)
    else:
        try:
            port = split_host(request.get_host())[1]
        except DisallowedHost:  # the 400 page for a foreign host still renders links home
            port = ""
    if not port or (request.scheme, port) in {("http", "80"), ("https", "443")}:
        return ""
    return ":" + port


def organization_host(organization: Organization) -> str:
    return f"{organization.slug}.{settings.BASE_DOMAIN}"


def organization_url(request: HttpRequest, organization: Organization, path: str = "/") -> str:
    return f"{request.scheme}://{organization_host(organization)}{_port_suffix(request)}{path}"


def public_url(request: HttpRequest, path: str = "/") -> str:
    return f"{request.scheme}://{settings.BASE_DOMAIN}{_port_suffix(request)}{path}"


def is_safe_redirect(url: str) -> bool:
    """A 'next' URL may point at the public site or any organization subdomain, never elsewhere."""
    if not url:
        return False
    # Browsers read a backslash as "/" and drop control characters, where urlsplit
    # does not: "https://evil.example<backslash>.localhost/" would pass as ours and
    # send the browser to evil.example.
    if "\\" in url or any(ord(char) < 0x20 or ord(char) == 0x7F for char in url):
        return False
    parts = urlsplit(url)
    if not parts.netloc:
        return url.startswith("/") and not url.startswith("//") and "\\" not in url
    if parts.scheme not in {"http", "https"}:
        return False
    return is_platform_host(split_host(parts.netloc)[0])
