"""An organization's host: its single sign-on settings (owners manage, admins view)."""

from django.urls import URLPattern, URLResolver, path

from apps.accounts.sso_views import sso_settings

urlpatterns: list[URLPattern | URLResolver] = [
    path("settings/sso/", sso_settings, name="sso-settings"),
]
