"""Pages of single sign-on: starting and completing a login by a provider (public
host), an organization's SSO settings (its host) and connected logins.

Every failure of a provider login becomes a page that says what went wrong, with
a 4xx: social-auth's exceptions are caught here, and the pipeline runs in one
transaction so nothing it wrote stays behind."""

from collections.abc import Callable
from http import HTTPStatus

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST
from social_core.exceptions import (
    AuthCanceled,
    AuthInputError,
    AuthProviderError,
    AuthSessionError,
    SocialAuthBaseException,
)
from social_django import views as social_views

from apps.accounts import sso
from apps.accounts.handoff import handoff_url
from apps.accounts.models import User
from apps.accounts.sso_backends import (
    PROVIDER_TITLES,
    SSO_ORGANIZATION_SESSION_KEY,
    OrganizationOIDCBackend,
    platform_providers,
)
from apps.accounts.sso_forms import SSOSettingsForm
from apps.billing.features import feature_required
from apps.core.errors import ServiceError
from apps.tenancy.audit import Actor
from apps.tenancy.hosts import is_safe_redirect, organization_url, public_url
from apps.tenancy.models import Membership, Organization, OrganizationSSO
from apps.tenancy.roles import ACTIONS, role_allows
from apps.tenancy.selectors import organizations_of_user

# --- logging in by a provider (public host) ---------------------------------


@require_http_methods(["GET", "POST"])
def organization_login(request: HttpRequest, slug: str) -> HttpResponse:
    """`/sso/<slug>/login/`: a button that starts the organization's SSO (a POST, with CSRF)."""
    config = (
        OrganizationSSO.objects.select_related("organization")
        .filter(organization__slug=slug, enabled=True)
        .first()
    )
    if config is None:
        raise Http404("This organization has no single sign-on.")
    if request.method == "GET":
        return render(request, "sso/organization_login.html", {"sso_org": config.organization})
    request.session[SSO_ORGANIZATION_SESSION_KEY] = slug
    return _guarded(request, lambda: social_views.auth(request, OrganizationOIDCBackend.name))


@require_POST
def begin(request: HttpRequest, backend: str) -> HttpResponse:
    """Start a GitHub or Google login (or connect one to the logged-in account)."""
    if backend not in dict(platform_providers()):
        raise Http404("No such login provider.")
    request.session.pop(SSO_ORGANIZATION_SESSION_KEY, None)
    return _guarded(request, lambda: social_views.auth(request, backend))


@never_cache
@csrf_exempt  # the provider's redirect; the state parameter is what binds it to this browser
@require_http_methods(["GET", "POST"])
def complete(request: HttpRequest, backend: str) -> HttpResponse:
    # Read before login(), which may start a fresh session.
    slug = (
        request.session.get(SSO_ORGANIZATION_SESSION_KEY) if backend == OrganizationOIDCBackend.name else None
    )
    next_url = str(request.session.get("next", "") or "")
    was_logged_in = request.user.is_authenticated

    def run() -> HttpResponse:
        with transaction.atomic():
            response: HttpResponse = social_views.complete(request, backend)
            return response

    response = _guarded(request, run)
    if response.status_code >= HTTPStatus.BAD_REQUEST or not request.user.is_authenticated:
        return response
    request.session.pop(SSO_ORGANIZATION_SESSION_KEY, None)
    if was_logged_in and not slug:
        messages.success(request, f"{PROVIDER_TITLES.get(backend, backend)} is connected to your account.")
        return HttpResponseRedirect(reverse("connected-logins"))
    return HttpResponseRedirect(_after_login_url(request, slug, next_url))


def _after_login_url(request: HttpRequest, slug: str | None, next_url: str) -> str:
    user = request.user
    assert isinstance(user, User)
    if slug:
        organization = Organization.objects.filter(slug=slug).first()
        if organization and Membership.objects.filter(user=user, organization=organization).exists():
            return handoff_url(request, organization_url(request, organization))
    if next_url and is_safe_redirect(next_url):
        return handoff_url(request, next_url)
    organizations = list(organizations_of_user(user=user))
    if len(organizations) == 1:
        return handoff_url(request, organization_url(request, organizations[0]))
    return reverse("org-picker")


def _guarded(request: HttpRequest, run: Callable[[], HttpResponse]) -> HttpResponse:
    try:
        return run()
    except SocialAuthBaseException as error:
        return login_error_page(request, error)


# What went wrong, in words, by social-auth's error code (and claim).
_MESSAGES: dict[str, tuple[str, str]] = {
    "session_context_missing": (
        "This login does not match the one your browser started",
        "The provider sent you back with a state we did not issue to this browser (an old tab, "
        "a link from someone else, or an expired session). Start the login again.",
    ),
    "state_mismatch": (
        "This login does not match the one your browser started",
        "The state the provider sent back does not match or has expired. Start the login again.",
    ),
    "missing_parameter": (
        "The provider's answer was incomplete",
        "A required parameter (such as the state or code) was missing. Start the login again.",
    ),
    "authorization_code_rejected": (
        "The sign-in code has expired",
        "The provider refused the sign-in code: it expired or was already used. Start the login again.",
    ),
    "credential_rejected": (
        "The provider refused the sign-in",
        "The provider did not accept our sign-in request (an expired code, or a wrong client "
        "secret in the SSO settings). Start the login again, or ask an owner to check the settings.",
    ),
    "invalid_signature": (
        "The identity token's signature is not valid",
        "The token the provider returned is not signed by any of its published keys, so we cannot "
        "trust it. Nobody was logged in.",
    ),
    "nonce_mismatch": (
        "The identity token was not issued for this login",
        "Its nonce does not match the login your browser started. Start the login again.",
    ),
    "response_expired": (
        "The identity token has expired",
        "The provider returned a token that is no longer valid. Check the clocks, then try again.",
    ),
    "invalid_claim": (
        "The identity token is not valid here",
        "A claim in the token (its issuer, audience or subject) does not match this organization's "
        "settings. Nobody was logged in.",
    ),
    "email_not_verified": (
        "Your email address is not verified",
        "The provider has not verified your email address, so we cannot tell it is yours. Verify "
        "it with the provider, then log in again.",
    ),
    "authorization_declined": (
        "You cancelled the login",
        "The provider says the login was cancelled or declined. Nothing changed.",
    ),
}


def login_error_page(request: HttpRequest, error: SocialAuthBaseException) -> HttpResponse:
    title, message = _MESSAGES.get(error.code, ("The login did not work", str(error)))
    if error.claim == "email_verified":
        title, message = _MESSAGES["email_not_verified"]
    user_message = getattr(error, "user_message", None)
    if user_message:
        message = user_message
    if isinstance(error, AuthInputError | AuthProviderError) and error.code not in _MESSAGES:
        status = HTTPStatus.BAD_REQUEST
        if isinstance(error, AuthProviderError):
            title = "The login provider could not be reached"
            message = "It did not answer, or answered with an error. Try again in a moment."
    elif isinstance(error, AuthSessionError | AuthCanceled) or error.code in _MESSAGES or user_message:
        status = HTTPStatus.FORBIDDEN
    else:
        status = HTTPStatus.BAD_REQUEST
    context = {
        "title": title,
        "message": message,
        "code": error.code,
        "login_url": public_url(request, "/login/"),
    }
    response = render(request, "sso/error.html", context, status=status)
    response["Cache-Control"] = "no-store"
    return response


# --- connected logins (public host) -------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def connected_logins(request: HttpRequest) -> HttpResponse:
    user = request.user
    assert isinstance(user, User)
    status = HTTPStatus.OK
    if request.method == "POST":
        try:
            social_id = int(request.POST.get("social_id", ""))
            sso.social_login_disconnect(actor=Actor.from_request(request), user=user, social_id=social_id)
        except ValueError:
            messages.error(request, "Choose a login to disconnect.")
            status = HTTPStatus.BAD_REQUEST
        except ServiceError as error:
            messages.error(request, error.message)
            status = HTTPStatus(error.status)
        else:
            messages.success(request, "The login was disconnected.")
            return HttpResponseRedirect(reverse("connected-logins"))
    return render(request, "sso/connected_logins.html", connected_logins_context(user), status=status)


def connected_logins_context(user: User) -> dict[str, object]:
    """What templates/sso/_connected_logins.html needs (for account settings pages too)."""
    logins = sso.social_logins_of(user=user)
    connected = {login.provider for login in logins}
    return {
        "social_logins": [
            {
                "id": login.pk,
                "provider": PROVIDER_TITLES.get(login.provider, login.provider),
                "uid": login.uid,
            }
            for login in logins
        ],
        "connectable_providers": [
            (name, title) for name, title in platform_providers() if name not in connected
        ],
        "has_password": user.has_usable_password(),
    }


# --- an organization's SSO settings (its host) -------------------------------


def _forbidden(request: HttpRequest, action_key: str) -> HttpResponse:
    action = ACTIONS[action_key]
    membership = getattr(request, "membership", None)
    context = {
        "missing_action": action,
        "role_label": membership.get_role_display().lower() if membership else None,
        "allowed_roles": sorted(role.label.lower() for role in action.roles),
    }
    return render(request, "403.html", context, status=HTTPStatus.FORBIDDEN)


@require_http_methods(["GET", "POST"])
@feature_required("sso")
def sso_settings(request: HttpRequest) -> HttpResponse:
    membership: Membership | None = getattr(request, "membership", None)
    organization: Organization = request.tenant  # type: ignore[attr-defined]
    if membership is None or not role_allows(membership.role, "sso.view"):
        return _forbidden(request, "sso.view")
    can_manage = role_allows(membership.role, "sso.manage")
    config = sso.sso_for_organization(organization=organization)
    status = HTTPStatus.OK
    if request.method == "POST":
        if not can_manage:
            return _forbidden(request, "sso.manage")
        form = SSOSettingsForm(request.POST)
        if form.is_valid():
            try:
                sso.sso_settings_save(
                    actor=Actor.from_request(request), organization=organization, **form.cleaned_data
                )
            except ServiceError as error:
                form.add_error(error.field if error.field in form.fields else None, error.message)
            else:
                messages.success(request, "Single sign-on settings saved.")
                return HttpResponseRedirect(reverse("sso-settings"))
        status = HTTPStatus.BAD_REQUEST
    else:
        initial = {field: getattr(config, field) for field in sso.SSO_FIELDS} if config else {"enabled": True}
        form = SSOSettingsForm(initial=initial)
    callback = reverse("social:complete", urlconf="config.urls_public", args=[OrganizationOIDCBackend.name])
    login_path = reverse("sso-organization-login", urlconf="config.urls_public", args=[organization.slug])
    context = {
        "form": form,
        "sso": config,
        "can_manage": can_manage,
        "callback_url": public_url(request, callback),
        "sso_login_url": public_url(request, login_path),
    }
    return render(request, "sso/settings.html", context, status=status)
