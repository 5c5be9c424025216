"""The one adapter to outside identity providers: GitHub, Google and each
organization's own OpenID Connect provider.

Every endpoint comes from settings (or, for an organization's provider, from its
issuer's discovery document), so tests point them at a loopback fake and run
this code unchanged.
"""

from typing import Any
from urllib.parse import urljoin

from django.conf import settings
from django.http import HttpResponse
from social_core.backends.github import GithubOAuth2
from social_core.backends.google import GoogleOAuth2
from social_core.backends.open_id_connect import OpenIdConnectAuth
from social_core.exceptions import AuthPolicyError, AuthSessionError

from apps.accounts.outbound import outbound_url_problem
from apps.tenancy.models import OrganizationSSO

# The session remembers which organization's provider a login started with.
SSO_ORGANIZATION_SESSION_KEY = "sso_organization"


class GithubBackend(GithubOAuth2[HttpResponse]):
    name = "github"
    title = "GitHub"
    # Always read /user/emails: only a primary, verified address identifies a person.
    DEFAULT_SCOPE = ["read:user", "user:email"]

    def authorization_url(self) -> str:
        return urljoin(_with_slash(settings.SOCIAL_AUTH_GITHUB_BASE_URL), "login/oauth/authorize")

    def access_token_url(self) -> str:
        return urljoin(_with_slash(settings.SOCIAL_AUTH_GITHUB_BASE_URL), "login/oauth/access_token")

    def api_url(self) -> str:
        return _with_slash(settings.SOCIAL_AUTH_GITHUB_API_URL)


class GoogleBackend(GoogleOAuth2[HttpResponse]):
    name = "google-oauth2"
    title = "Google"

    def authorization_url(self) -> str:
        return str(settings.SOCIAL_AUTH_GOOGLE_AUTHORIZATION_URL)

    def access_token_url(self) -> str:
        return str(settings.SOCIAL_AUTH_GOOGLE_TOKEN_URL)

    def user_data(self, access_token: str, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        response = self.get_json(
            settings.SOCIAL_AUTH_GOOGLE_USERINFO_URL,
            headers={"Authorization": f"Bearer {access_token}"},
        )
        self.validate_email_verified(response)
        return dict(response)


class OrganizationOIDCBackend(OpenIdConnectAuth[HttpResponse]):
    """Generic OpenID Connect; the issuer and client come from the organization
    whose SSO login started this flow (its slug is kept in the session)."""

    name = "oidc"
    title = "Single sign-on"
    JWT_ALGORITHMS = ["RS256"]
    _sso: OrganizationSSO | None = None

    def organization_sso(self) -> OrganizationSSO:
        if self._sso is None:
            slug = self.strategy.session_get(SSO_ORGANIZATION_SESSION_KEY)
            self._sso = (
                OrganizationSSO.objects.select_related("organization")
                .filter(organization__slug=slug or "", enabled=True)
                .first()
            )
            if self._sso is None:
                raise AuthSessionError(self, "organization", code="session_context_missing", stage="callback")
        return self._sso

    def oidc_endpoint(self) -> str:
        return self.organization_sso().issuer.rstrip("/")

    def get_key_and_secret(self) -> tuple[str, str]:
        sso = self.organization_sso()
        return sso.client_id, sso.client_secret

    def get_user_id(self, details: dict[str, Any], response: dict[str, Any]) -> str:
        """The subject, qualified by the organization: every organization's provider
        shares the backend name "oidc", and a `sub` is only unique within one
        issuer, so another organization's provider must never match this link."""
        subject = response.get("sub") or (self.id_token or {}).get("sub")
        if not subject:
            return ""  # social-auth refuses the login: the provider named no subject
        return organization_uid(self.organization_sso().organization_id, str(subject))

    def request(self, url: str, **kwargs: Any) -> Any:
        """Every server-side fetch this backend makes (discovery, token, keys, user
        info) goes only where an organization may send the server."""
        problem = outbound_url_problem(url)
        if problem:
            raise AuthPolicyError(self, code="issuer_not_allowed", stage="callback")
        return super().request(url, **kwargs)

    def get_legacy_user_identifiers(
        self, details: dict[str, Any], response: dict[str, Any]
    ) -> list[tuple[str, str]]:
        # No lookups by an unqualified subject: it could be another organization's.
        return []


def organization_uid(organization_id: int, subject: str) -> str:
    return f"{organization_id}:{subject}"


def _with_slash(url: str) -> str:
    return url if url.endswith("/") else url + "/"


def platform_providers() -> list[tuple[str, str]]:
    """(backend name, title) of the platform-wide providers that have credentials."""
    providers = []
    if settings.SOCIAL_AUTH_GITHUB_KEY and settings.SOCIAL_AUTH_GITHUB_SECRET:
        providers.append((GithubBackend.name, GithubBackend.title))
    if settings.SOCIAL_AUTH_GOOGLE_OAUTH2_KEY and settings.SOCIAL_AUTH_GOOGLE_OAUTH2_SECRET:
        providers.append((GoogleBackend.name, GoogleBackend.title))
    return providers


PROVIDER_TITLES = {
    GithubBackend.name: GithubBackend.title,
    GoogleBackend.name: GoogleBackend.title,
    OrganizationOIDCBackend.name: OrganizationOIDCBackend.title,
}
