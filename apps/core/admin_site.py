"""The back office's admin site: Django's, with the public login's lockout on its login too."""

from typing import Any, cast

from django.contrib.admin import AdminSite
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import REDIRECT_FIELD_NAME
from django.contrib.auth.views import LoginView
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse

from apps.accounts.lockout import LoginThrottleMixin


class ThrottledAdminLoginView(LoginThrottleMixin, LoginView):
    form_class = AdminAuthenticationForm
    template_name = "admin/login.html"


class AgentyardAdminSite(AdminSite):
    site_header = "Agentyard back office"
    site_title = "Agentyard back office"
    index_title = "Platform staff"

    def login(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        """AdminSite.login, through the throttled view, so guessing staff passwords here
        locks out exactly as it does on the public login page."""
        if request.method == "GET" and self.has_permission(request):
            return HttpResponseRedirect(reverse("admin:index", current_app=self.name))
        context = {
            **self.each_context(request),
            "title": "Log in",
            "subtitle": None,
            "app_path": request.get_full_path(),
            "username": request.user.get_username(),
        }
        if REDIRECT_FIELD_NAME not in request.GET and REDIRECT_FIELD_NAME not in request.POST:
            context[REDIRECT_FIELD_NAME] = reverse("admin:index", current_app=self.name)
        context.update(extra_context or {})
        request.current_app = self.name
        response = ThrottledAdminLoginView.as_view(extra_context=context)(request)
        return cast(HttpResponse, response)
