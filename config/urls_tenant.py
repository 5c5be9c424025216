"""An organization's own host (acme.<BASE_DOMAIN>). Every view here is members-only
unless marked @outsiders_allowed; tests/test_isolation.py checks each one."""

from django.urls import include, path

from apps.accounts.views import handoff, logout_view
from apps.tenancy.views import dashboard

urlpatterns = [
    path("", dashboard, name="dashboard"),
    path("logout/", logout_view, name="tenant-logout"),
    path("auth/handoff/", handoff, name="handoff"),
    path("api/v1/", include("config.urls_api")),
    path("v1/", include("apps.llm.urls_openai")),
    path("", include("apps.tenancy.urls_pages")),
    path("", include("apps.tenancy.urls_sso_pages")),
    path("", include("apps.workspaces.urls_pages")),
    path("", include("apps.prompts.urls_pages")),
    path("", include("apps.llm.urls_pages")),
    path("", include("apps.knowledge.urls_pages")),
    path("", include("apps.agents.urls_pages")),
    path("", include("apps.agents.urls_tools_pages")),
    path("", include("apps.billing.urls_pages")),
]
