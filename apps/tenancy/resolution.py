"""How a request finds its organization.

Resolvers are tried in order; the first that answers wins. Browsers are
resolved by host (`acme.<BASE_DOMAIN>`). The API key resolver (identity issue)
plugs in here too, so an API request runs in its key's schema whatever its host.
"""

from collections.abc import Callable
from dataclasses import dataclass

from django.http import HttpRequest

from apps.tenancy.api_keys import key_check, key_touch
from apps.tenancy.audit import client_ip
from apps.tenancy.hosts import is_public_host, organization_host, split_host
from apps.tenancy.models import Organization
from apps.tenancy.selectors import organization_for_host


@dataclass(frozen=True)
class Resolution:
    """public=True: the public site. organization=None and public=False: nobody here (404).
    error: an API request refused before any view (status, code, message)."""

    public: bool
    organization: Organization | None = None
    error: tuple[int, str, str] | None = None


Resolver = Callable[[HttpRequest], Resolution | None]


def resolve_by_host(request: HttpRequest) -> Resolution | None:
    hostname = split_host(request.get_host())[0]
    if is_public_host(hostname):
        return Resolution(public=True)
    return Resolution(public=False, organization=organization_for_host(hostname))


# The organization API's own paths. The schema and its docs (/api/schema/, /api/docs/)
# live on the public host: a client that sends its key everywhere must still reach them.
API_KEY_PATH_PREFIX = "/api/v1/"


def resolve_by_api_key(request: HttpRequest) -> Resolution | None:
    """`Authorization: Bearer ayk_...` on /api/v1/: the key's organization, whatever the host."""
    header = request.headers.get("Authorization", "")
    if not request.path.startswith(API_KEY_PATH_PREFIX) or not header.lower().startswith("bearer "):
        return None
    check = key_check(header[7:].strip())
    if check.api_key is None:
        return Resolution(public=False, error=(401, check.error_code, check.error_message))
    if check.error_code:
        return Resolution(public=False, error=(403, check.error_code, check.error_message))
    organization = check.api_key.organization
    hostname = split_host(request.get_host())[0]
    if not is_public_host(hostname) and hostname != organization_host(organization):
        return Resolution(
            public=False,
            error=(403, "wrong_organization", "This API key belongs to another organization."),
        )
    key_touch(check.api_key, client_ip(request))
    request.api_key = check.api_key  # type: ignore[attr-defined]
    return Resolution(public=False, organization=organization)


RESOLVERS: list[Resolver] = [resolve_by_api_key, resolve_by_host]


def resolve_request(request: HttpRequest) -> Resolution:
    for resolver in RESOLVERS:
        resolution = resolver(request)
        if resolution is not None:
            return resolution
    return Resolution(public=False)
