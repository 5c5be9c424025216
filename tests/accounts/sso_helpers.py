"""Driving a login through the fake provider with Django's test client: the
client talks to our views, `requests` plays the browser at the provider."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import requests
from django.test import Client
from social_django.models import UserSocialAuth

from apps.accounts.models import User
from apps.tenancy.models import Membership, Organization, OrganizationSSO
from tests.fakes.oidc_provider import FakeIdentityProvider

OIDC_CLIENT = ("agentyard-alpha", "alpha-client-secret")
GITHUB_CLIENT = ("github-client", "github-secret")
GOOGLE_CLIENT = ("google-client", "google-secret")


@contextmanager
def fake_provider(settings: Any) -> Iterator[FakeIdentityProvider]:
    provider = FakeIdentityProvider(clients=dict([OIDC_CLIENT, GITHUB_CLIENT, GOOGLE_CLIENT]))
    with provider.running():
        settings.SOCIAL_AUTH_GITHUB_KEY, settings.SOCIAL_AUTH_GITHUB_SECRET = GITHUB_CLIENT
        settings.SOCIAL_AUTH_GITHUB_BASE_URL = provider.url
        settings.SOCIAL_AUTH_GITHUB_API_URL = provider.url
        settings.SOCIAL_AUTH_GOOGLE_OAUTH2_KEY, settings.SOCIAL_AUTH_GOOGLE_OAUTH2_SECRET = GOOGLE_CLIENT
        settings.SOCIAL_AUTH_GOOGLE_AUTHORIZATION_URL = f"{provider.url}/o/oauth2/auth"
        settings.SOCIAL_AUTH_GOOGLE_TOKEN_URL = f"{provider.url}/token"
        settings.SOCIAL_AUTH_GOOGLE_USERINFO_URL = f"{provider.url}/userinfo"
        yield provider


def configure_sso(
    organization: Organization, provider: FakeIdentityProvider, *, domain: str, required: bool = False
) -> OrganizationSSO:
    sso = OrganizationSSO(
        organization=organization,
        issuer=provider.url,
        client_id=OIDC_CLIENT[0],
        verified_domain=domain,
        sso_required=required,
    )
    sso.set_client_secret(OIDC_CLIENT[1])
    sso.save()
    return sso


def at_provider(authorize_url: str) -> str:
    """What a browser does at the provider: follow /authorize, get the callback URL."""
    response = requests.get(authorize_url, allow_redirects=False, timeout=10)
    assert response.status_code == 302, response.text
    return str(response.headers["Location"])


def local_path(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def with_state(callback_url: str, state: str) -> str:
    parts = urlsplit(callback_url)
    query = {key: values[0] for key, values in parse_qs(parts.query).items()}
    query["state"] = state
    return parts._replace(query=urlencode(query)).geturl()


def login_via(client: Client, start_path: str) -> tuple[str, str]:
    """POST the start of a login; returns (authorize URL at the provider, callback URL back)."""
    response = client.post(start_path)
    assert response.status_code == 302, response.content
    authorize_url = str(response["Location"])
    return authorize_url, at_provider(authorize_url)


def counts() -> tuple[int, int, int]:
    return User.objects.count(), UserSocialAuth.objects.count(), Membership.objects.count()
