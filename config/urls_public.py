"""The bare domain: landing, sign-up, log-in, organization picker, health and metrics."""

from django.urls import include, path

from apps.accounts.views import LoginView, logout_view
from apps.core.views import healthz, landing
from apps.tenancy.views import org_open, org_picker, signup

urlpatterns = [
    path("", landing, name="landing"),
    path("signup/", signup, name="signup"),
    path("login/", LoginView.as_view(), name="login"),
    path("logout/", logout_view, name="logout"),
    path("orgs/", org_picker, name="org-picker"),
    path("orgs/<slug:slug>/", org_open, name="org-open"),
    path("healthz", healthz, name="healthz"),
    path("", include("django_prometheus.urls")),
]
