"""Forms of the members, invitations, API keys and audit pages. They only check
shapes; the rules (who may grant what, last owner, …) live in the services."""

from datetime import date, datetime, time, timedelta
from typing import Any

from django import forms
from django.contrib.auth import password_validation
from django.core.exceptions import ValidationError
from django.utils import timezone

from apps.accounts.models import User
from apps.tenancy.models import Membership
from apps.tenancy.roles import SCOPES

ROLE_ERRORS = {"invalid_choice": "Unknown role %(value)s.", "required": "Choose a role."}


class InviteForm(forms.Form):
    email = forms.EmailField(
        max_length=254, label="Email", widget=forms.EmailInput(attrs={"autocomplete": "off"})
    )
    role = forms.ChoiceField(
        choices=Membership.Role.choices, initial=Membership.Role.MEMBER, error_messages=ROLE_ERRORS
    )

    def __init__(self, *args: Any, may_grant_owner: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not may_grant_owner:
            role = self.fields["role"]
            assert isinstance(role, forms.ChoiceField)
            role.choices = [(value, label) for value, label in Membership.Role.choices if value != "owner"]


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Membership.Role.choices, error_messages=ROLE_ERRORS)


class TransferForm(forms.Form):
    member_id = forms.IntegerField(label="New owner", error_messages={"required": "Choose a member."})


class ApiKeyForm(forms.Form):
    name = forms.CharField(max_length=100, label="Name", help_text="What will use the key, e.g. “CI deploy”.")
    scopes = forms.MultipleChoiceField(
        choices=[(scope, scope) for scope in SCOPES],
        widget=forms.CheckboxSelectMultiple,
        error_messages={
            "required": "Give the key at least one scope.",
            "invalid_choice": "Unknown scope %(value)s.",
        },
    )
    expires_on = forms.DateField(
        required=False,
        label="Expires on (optional)",
        help_text="The key stops working at the end of this day (UTC). Leave empty for no expiry.",
        widget=forms.DateInput(attrs={"type": "date"}),
    )

    def clean_expires_on(self) -> date | None:
        expires_on: date | None = self.cleaned_data.get("expires_on")
        if expires_on is not None and expires_on < timezone.now().date():
            raise ValidationError("The expiry must be today or later.")
        return expires_on

    def expires_at(self) -> datetime | None:
        expires_on: date | None = self.cleaned_data.get("expires_on")
        if expires_on is None:
            return None
        return datetime.combine(
            expires_on + timedelta(days=1), time.min, tzinfo=timezone.get_current_timezone()
        )


class InvitationSignupForm(forms.Form):
    """An account for the invited address: the email is the invitation's, not typed."""

    name = forms.CharField(max_length=150, required=False, label="Your name")
    password = forms.CharField(
        strip=False,
        label="Choose a password",
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def __init__(self, *args: Any, email: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.email = email

    def clean_password(self) -> str:
        password: str = self.cleaned_data["password"]
        password_validation.validate_password(password, User(email=self.email))
        return password

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if User.objects.filter(email__iexact=self.email).exists():
            raise ValidationError("An account with this email exists. Log in to accept instead.")
        return cleaned


class AuditFilterForm(forms.Form):
    action = forms.CharField(required=False, max_length=64, label="Action starts with")
    actor = forms.CharField(required=False, max_length=254, label="Actor email contains")
    since = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        since, until = cleaned.get("since"), cleaned.get("until")
        if since and until and since > until:
            self.add_error("until", "The end of the range is before its start.")
        return cleaned

    def filter_data(self) -> dict[str, str]:
        """The audit FilterSet's parameters; the end date is inclusive here, exclusive there."""
        data: dict[str, str] = {}
        if self.cleaned_data.get("action"):
            data["action"] = self.cleaned_data["action"]
        if self.cleaned_data.get("actor"):
            data["actor"] = self.cleaned_data["actor"]
        if self.cleaned_data.get("since"):
            data["since"] = datetime.combine(self.cleaned_data["since"], time.min).isoformat()
        if self.cleaned_data.get("until"):
            end = self.cleaned_data["until"] + timedelta(days=1)
            data["until"] = datetime.combine(end, time.min).isoformat()
        return data
