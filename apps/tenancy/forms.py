from typing import Any

from django import forms
from django.contrib.auth import password_validation
from django.core.exceptions import ValidationError

from apps.accounts.models import User
from apps.tenancy.models import Organization
from apps.tenancy.validators import validate_organization_slug


class SignupForm(forms.Form):
    email = forms.EmailField(max_length=254, widget=forms.EmailInput(attrs={"autocomplete": "email"}))
    password = forms.CharField(
        strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "new-password"})
    )
    organization_name = forms.CharField(max_length=100, label="Organization name")
    slug = forms.CharField(
        max_length=40,
        label="Address",
        help_text="Your organization's subdomain: lower-case letters, digits and hyphens.",
    )

    def clean_email(self) -> str:
        email: str = self.cleaned_data["email"].strip().lower()
        if User.objects.filter(email__iexact=email).exists():
            raise ValidationError("An account with this email exists. Log in instead.")
        return email

    def clean_slug(self) -> str:
        slug: str = self.cleaned_data["slug"].strip()
        validate_organization_slug(slug)
        if Organization.objects.filter(slug=slug).exists():
            raise ValidationError("That address is taken. Choose another.")
        return slug

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        password = cleaned.get("password")
        if password:
            try:
                password_validation.validate_password(password, User(email=cleaned.get("email", "")))
            except ValidationError as exc:
                self.add_error("password", exc)
        return cleaned
