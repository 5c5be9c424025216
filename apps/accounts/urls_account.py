from django.urls import URLPattern, URLResolver, path

from apps.accounts.account_views import account_settings, email_confirm_page, email_confirm_resend

urlpatterns: list[URLPattern | URLResolver] = [
    path("account/", account_settings, name="account-settings"),
    # Before <token>/, which would take "resend" for a token.
    path("account/confirm/resend/", email_confirm_resend, name="account-email-confirm-resend"),
    path("account/confirm/<str:token>/", email_confirm_page, name="account-email-confirm"),
]
