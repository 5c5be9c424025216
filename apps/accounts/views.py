from urllib.parse import urlencode

from django.contrib.auth import login, logout
from django.contrib.auth.views import LoginView as DjangoLoginView
from django.core import signing
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_http_methods

from apps.accounts.handoff import handoff_redeem, handoff_url
from apps.accounts.lockout import LoginThrottleMixin
from apps.accounts.sso_forms import SSOAwareLoginForm
from apps.tenancy.audit import Actor, audit_record
from apps.tenancy.hosts import is_safe_redirect, organization_url, public_url
from apps.tenancy.middleware import outsiders_allowed
from apps.tenancy.selectors import organizations_of_user


class LoginView(LoginThrottleMixin, DjangoLoginView):
    template_name = "accounts/login.html"
    form_class = SSOAwareLoginForm
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

    def get_success_url(self) -> str:
        return handoff_url(self.request, super().get_success_url())


@outsiders_allowed
@require_GET
def handoff(request: HttpRequest) -> HttpResponse:
    """Log in on this organization's host with a token from the public site."""
    redeemed = handoff_redeem(token=request.GET.get("token", ""), host=request.get_host())
    if redeemed is None:
        return render(
            request,
            "accounts/handoff_failed.html",
            {"login_url": public_url(request, "/login/")},
            status=400,
        )
    user, next_path = redeemed
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    return HttpResponseRedirect(next_path)


LOGOUT_SALT = "agentyard.accounts.logout"


@outsiders_allowed
@require_http_methods(["GET", "POST"])
def logout_view(request: HttpRequest) -> HttpResponse:
    """Log out everywhere.

    A POST (with the CSRF token) ends this host's session. On an organization's
    host it then redirects to the public site's logout with a signed token
    valid for a minute, which ends the public session too; that GET is the only
    one accepted, so a plain link or image cannot log anyone out."""
    if request.method == "GET":
        if not _logout_token_valid(request, request.GET.get("token", "")):
            return HttpResponseNotAllowed(["POST"])
        logout(request)
        return HttpResponseRedirect(public_url(request, "/login/?logged_out=1"))
    user_id = request.user.pk
    if request.user.is_authenticated:
        # One event per logout: the POST that starts it, not the public hop after it.
        audit_record(
            actor=Actor.from_request(request), organization=None, action="auth.logout", target=request.user
        )
    logout(request)
    if getattr(request, "tenant", None) is not None and user_id is not None:
        token = signing.dumps({"u": user_id}, salt=LOGOUT_SALT)
        return HttpResponseRedirect(public_url(request, "/logout/?" + urlencode({"token": token})))
    return HttpResponseRedirect(public_url(request, "/login/?logged_out=1"))


def _logout_token_valid(request: HttpRequest, token: str) -> bool:
    if not token or getattr(request, "tenant", None) is not None:
        return False
    try:
        payload = signing.loads(token, salt=LOGOUT_SALT, max_age=60)
    except signing.BadSignature:
        return False
    return not request.user.is_authenticated or payload.get("u") == request.user.pk
