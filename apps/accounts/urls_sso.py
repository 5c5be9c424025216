"""Public host: logging in by GitHub, Google or an organization's SSO, and connected logins.

The provider callback is /sso/auth/complete/<backend>/ (for an organization's
OpenID Connect provider: /sso/auth/complete/oidc/)."""

from django.urls import URLPattern, URLResolver, include, path

from apps.accounts import sso_views

# social_django's views reverse "social:complete" for the redirect URI.
social_patterns = (
    [
        path("login/<str:backend>/", sso_views.begin, name="begin"),
        path("complete/<str:backend>/", sso_views.complete, name="complete"),
    ],
    "social",
)

urlpatterns: list[URLPattern | URLResolver] = [
    path("sso/auth/", include(social_patterns)),
    path("sso/<slug:slug>/login/", sso_views.organization_login, name="sso-organization-login"),
    path("account/logins/", sso_views.connected_logins, name="connected-logins"),
]
