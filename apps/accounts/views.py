from django.contrib.auth import logout
from django.contrib.auth.views import LoginView as DjangoLoginView
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from apps.tenancy.hosts import is_safe_redirect, organization_url, public_url
from apps.tenancy.middleware import outsiders_allowed
from apps.tenancy.selectors import organizations_of_user


class LoginView(DjangoLoginView):
    template_name = "accounts/login.html"
    redirect_authenticated_user = True

    def get_redirect_url(self) -> str:
        # Django only allows the current host; any organization subdomain is ours too.
        url = self.request.POST.get("next", self.request.GET.get("next", ""))
        return url if is_safe_redirect(url) else ""

    def get_default_redirect_url(self) -> str:
        organizations = list(organizations_of_user(user=self.request.user))  # type: ignore[arg-type]
        if len(organizations) == 1:
            return organization_url(self.request, organizations[0])
        return "/orgs/"


@outsiders_allowed
@require_POST
def logout_view(request: HttpRequest) -> HttpResponse:
    """POST only (a link must not log anyone out); works on any host, as the session is shared."""
    logout(request)
    return HttpResponseRedirect(public_url(request, "/login/?logged_out=1"))


def root_redirect(request: HttpRequest) -> HttpResponse:
    return redirect("landing")
