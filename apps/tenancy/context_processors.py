from django.http import HttpRequest

from apps.tenancy.hosts import organization_url, public_url


def tenancy(request: HttpRequest) -> dict[str, object]:
    organization = getattr(request, "tenant", None)
    return {
        "org": organization,
        "membership": getattr(request, "membership", None),
        "public_home_url": public_url(request, "/"),
        "org_home_url": organization_url(request, organization) if organization else None,
    }
