from typing import Any

from django import forms
from django.contrib.auth.forms import AuthenticationForm
from django.urls import reverse
from django.utils.html import format_html

from apps.accounts.sso import sso_required_for_email


class SSOAwareLoginForm(AuthenticationForm):
    """The password login, refusing people whose organization requires its SSO."""

    def clean(self) -> dict[str, Any]:
        email = self.cleaned_data.get("username") or ""
        sso = sso_required_for_email(email=email) if email else None
        if sso is not None:
            organization = sso.organization
            url = reverse("sso-organization-login", args=[organization.slug])
            raise forms.ValidationError(
                format_html(
                    '{} requires single sign-on for addresses at {}: <a href="{}">log in with {} SSO</a>.',
                    organization.name,
                    sso.verified_domain,
                    url,
                    organization.name,
                ),
                code="sso_required",
            )
        return super().clean()


class SSOSettingsForm(forms.Form):
    issuer = forms.URLField(
        label="Issuer URL",
        max_length=500,
        assume_scheme="https",
        help_text="Your provider's issuer; /.well-known/openid-configuration must answer under it.",
    )
    client_id = forms.CharField(label="Client ID", max_length=255)
    client_secret = forms.CharField(
        label="Client secret",
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Stored encrypted. Leave empty to keep the current one.",
    )
    verified_domain = forms.CharField(
        label="Verified domain",
        max_length=253,
        required=False,
        help_text="People whose verified email is at this domain join as members when they log in by SSO.",
    )
    sso_required = forms.BooleanField(
        label="Require SSO for addresses at the verified domain", required=False
    )
    enabled = forms.BooleanField(label="Enabled", required=False, initial=True)
