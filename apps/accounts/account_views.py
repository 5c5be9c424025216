"""/account/ on the public site: a person's own name, email, password and connected logins."""

from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth import update_session_auth_hash
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import PasswordChangeForm, SetPasswordForm
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.template import TemplateDoesNotExist
from django.template.loader import select_template
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from apps.accounts import email_confirmation
from apps.accounts.account_services import account_password_change, account_update, email_taken
from apps.accounts.models import User, normalize_email
from apps.core.errors import ServiceError
from apps.tenancy.audit import Actor
from apps.tenancy.hosts import public_url

CONNECTED_LOGINS_TEMPLATE = "sso/_connected_logins.html"


class ProfileForm(forms.Form):
    name = forms.CharField(
        max_length=150, required=False, widget=forms.TextInput(attrs={"autocomplete": "name"})
    )
    email = forms.EmailField(max_length=254, widget=forms.EmailInput(attrs={"autocomplete": "email"}))
    current_password = forms.CharField(
        label="Current password",
        required=False,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
        help_text="Needed only to change your email.",
    )

    def __init__(self, *args: Any, user: User, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user = user

    def clean_email(self) -> str:
        email = normalize_email(self.cleaned_data["email"])
        if email != self.user.email and email_taken(email=email, by_other_than=self.user):
            raise forms.ValidationError("Another account uses this email.")
        return email

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        email = cleaned.get("email")
        if email and email != self.user.email:
            password = cleaned.get("current_password") or ""
            if not self.user.has_usable_password():
                self.add_error("current_password", "Set a password below before changing your email.")
            elif not self.user.check_password(password):
                self.add_error("current_password", "Your current password is not right.")
        return cleaned


def _password_form(user: User, data: Any = None) -> "SetPasswordForm[User]":
    """People who only ever logged in by a provider set a password without an old one."""
    if user.has_usable_password():
        return PasswordChangeForm(user, data)
    return SetPasswordForm(user, data)


def _connected_logins(user: User) -> dict[str, Any]:
    """The connected-logins section, when the single sign-on work that provides it is installed."""
    try:
        select_template([CONNECTED_LOGINS_TEMPLATE])
        from apps.accounts.sso_views import connected_logins_context
    except (TemplateDoesNotExist, ImportError):
        return {"connected_logins_template": None}
    return {"connected_logins_template": CONNECTED_LOGINS_TEMPLATE, **connected_logins_context(user)}


@login_required
@require_http_methods(["GET", "POST"])
def account_settings(request: HttpRequest) -> HttpResponse:
    user = request.user
    assert isinstance(user, User)
    profile_form = ProfileForm(initial={"name": user.name, "email": user.email}, user=user)
    password_form = _password_form(user)
    status = 200
    if request.method == "POST":
        which = request.POST.get("form")
        actor = Actor.from_request(request)
        if which == "profile":
            profile_form = ProfileForm(request.POST, user=user)
            if profile_form.is_valid():
                try:
                    account_update(
                        actor=actor,
                        user=user,
                        name=profile_form.cleaned_data["name"],
                        email=profile_form.cleaned_data["email"],
                        confirm_url_base=public_url(request, ""),
                    )
                except ServiceError as error:
                    profile_form.add_error(
                        error.field if error.field in profile_form.fields else None, error.message
                    )
                else:
                    messages.success(request, "Your account was updated.")
                    return HttpResponseRedirect(reverse("account-settings"))
        elif which == "password":
            password_form = _password_form(user, request.POST)
            if password_form.is_valid():
                account_password_change(actor=actor, form=password_form)
                update_session_auth_hash(request, password_form.user)  # stay logged in here
                messages.success(request, "Your password was changed.")
                return HttpResponseRedirect(reverse("account-settings"))
        else:
            messages.error(request, "Choose which part of your account to change.")
        status = 400
    context = {
        "profile_form": profile_form,
        "password_form": password_form,
        "has_password": user.has_usable_password(),
        **_connected_logins(user),
    }
    return render(request, "accounts/account.html", context, status=status)


def _confirmation_problem(request: HttpRequest, error: ServiceError) -> HttpResponse:
    context = {"title": "This link cannot confirm your address", "message": error.message}
    return render(request, "accounts/confirm_email_problem.html", context, status=error.status)


@never_cache
@require_http_methods(["GET", "POST"])
def email_confirm_page(request: HttpRequest, token: str) -> HttpResponse:
    """GET: a button (mail scanners that open links confirm nothing). POST: confirm."""
    try:
        if request.method == "GET":
            user = email_confirmation.user_for_confirmation_token(token)
        else:
            user = email_confirmation.email_confirm(actor=Actor.from_request(request), token=token)
    except ServiceError as error:
        return _confirmation_problem(request, error)
    context = {"email": user.email, "confirmed": request.method == "POST"}
    return render(request, "accounts/confirm_email.html", context)


@login_required
@require_POST
def email_confirm_resend(request: HttpRequest) -> HttpResponse:
    user = request.user
    assert isinstance(user, User)
    if user.email_verified_at is not None:
        messages.info(request, f"{user.email} is already confirmed.")
    elif email_confirmation.email_confirmation_resend(user=user, url_base=public_url(request, "")):
        messages.success(request, f"We sent a new confirmation link to {user.email}.")
    else:
        seconds = email_confirmation.RESEND_INTERVAL
        messages.error(
            request,
            f"We sent a link to {user.email} less than {seconds} seconds ago; we send at most one a "
            "minute. Check your inbox and spam folder, or try again shortly.",
        )
    return HttpResponseRedirect(reverse("account-settings"))
