"""The bare domain: landing, sign-up, log-in, organization picker, health and metrics."""

from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from apps.accounts.views import LoginView, logout_view
from apps.billing.webhooks import stripe_webhook
from apps.core.api import unauthenticated_api
from apps.core.views import healthz, landing
from apps.tenancy.views import org_open, org_picker, signup

urlpatterns = [
    path("", landing, name="landing"),
    path("signup/", signup, name="signup"),
    path("login/", LoginView.as_view(), name="login"),
    path("logout/", logout_view, name="logout"),
    path("orgs/", org_picker, name="org-picker"),
    path("orgs/<slug:slug>/", org_open, name="org-open"),
    path("", include("apps.accounts.urls_account")),
    path("", include("apps.accounts.urls_sso")),
    path("", include("apps.tenancy.urls_public_pages")),
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    # Stripe's webhooks (signed; apps/billing/webhooks.py): one address for every organization.
    path("billing/stripe/webhook/", stripe_webhook, name="stripe-webhook"),
    path("api/schema/", SpectacularAPIView.as_view(urlconf="config.urls_tenant"), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    re_path(r"^api/v1/", unauthenticated_api),
    path("v1/", include("apps.llm.urls_openai")),
    path("", include("django_prometheus.urls")),
]
