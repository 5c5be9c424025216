"""How a request finds its organization.

Resolvers are tried in order; the first that answers wins. Browsers are
resolved by host (`acme.<BASE_DOMAIN>`). The API key resolver (identity issue)
plugs in here too, so an API request runs in its key's schema whatever its host.
"""

from collections.abc import Callable
from dataclasses import dataclass

from django.http import HttpRequest

from apps.tenancy.hosts import is_public_host, split_host
from apps.tenancy.models import Organization
from apps.tenancy.selectors import organization_for_host


@dataclass(frozen=True)
class Resolution:
    """public=True: the public site. organization=None and public=False: nobody here (404)."""

    public: bool
    organization: Organization | None = None


Resolver = Callable[[HttpRequest], Resolution | None]


def resolve_by_host(request: HttpRequest) -> Resolution | None:
    hostname = split_host(request.get_host())[0]
    if is_public_host(hostname):
        return Resolution(public=True)
    return Resolution(public=False, organization=organization_for_host(hostname))


RESOLVERS: list[Resolver] = [resolve_by_host]


def resolve_request(request: HttpRequest) -> Resolution:
    for resolver in RESOLVERS:
        resolution = resolver(request)
        if resolution is not None:
            return resolution
    return Resolution(public=False)
