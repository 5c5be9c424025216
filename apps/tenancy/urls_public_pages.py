"""Public-site pages of the tenancy app: accepting an invitation (the link in the email)."""

from django.urls import URLPattern, URLResolver, path

from apps.tenancy import pages

urlpatterns: list[URLPattern | URLResolver] = [
    path("invitations/<str:token>/", pages.invitation_page, name="invitation"),
    path("invitations/<str:token>/signup/", pages.invitation_signup_page, name="invitation-signup"),
]
