from django.urls import URLPattern, URLResolver, path

from apps.accounts.account_views import account_settings

urlpatterns: list[URLPattern | URLResolver] = [
    path("account/", account_settings, name="account-settings"),
]
