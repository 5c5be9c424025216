"""Users in the back office: our email-login User, with its memberships inline."""

from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import AdminUserCreationForm, UserChangeForm
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import HttpRequest, HttpResponse

from apps.accounts.models import User, normalize_email
from apps.tenancy.admin import AuditedModelAdmin, TabularInline
from apps.tenancy.models import Membership

if TYPE_CHECKING:
    BaseUserAdmin = DjangoUserAdmin
    BaseUserChangeForm = UserChangeForm
else:
    # Generic for the type checker only (see apps/tenancy/admin.py).
    class BaseUserAdmin(DjangoUserAdmin):
        __class_getitem__ = classmethod(lambda cls, _item: cls)

    class BaseUserChangeForm(UserChangeForm):
        __class_getitem__ = classmethod(lambda cls, _item: cls)


class UserCreationAdminForm(AdminUserCreationForm):
    class Meta:
        model = User
        fields = ("email",)
        field_classes = {"email": forms.EmailField}

    def clean_email(self) -> str:
        email = normalize_email(self.cleaned_data["email"])
        if User.objects.filter(email__iexact=email).exists():
            raise ValidationError("A user with this email already exists.")
        return email

    def clean_username(self) -> str:  # there is no username; the email is checked above
        return ""


class UserChangeAdminForm(BaseUserChangeForm[User]):
    class Meta:
        model = User
        fields = "__all__"

    def clean_email(self) -> str:
        email = normalize_email(self.cleaned_data["email"])
        if User.objects.filter(email__iexact=email).exclude(pk=self.instance.pk).exists():
            raise ValidationError("A user with this email already exists.")
        return email


class MembershipInline(TabularInline[Membership, User]):
    model = Membership
    fields = ("organization", "role", "created_at")
    readonly_fields = ("created_at",)
    autocomplete_fields = ("organization",)
    extra = 0


@admin.register(User)
class UserAdmin(AuditedModelAdmin[User], BaseUserAdmin[Any]):
    form = UserChangeAdminForm
    add_form = UserCreationAdminForm
    list_display = (
        "email",
        "name",
        "is_staff",
        "is_active",
        "organization_count",
        "date_joined",
        "last_login",
    )
    list_filter = ("is_staff", "is_superuser", "is_active", "date_joined")
    search_fields = ("email", "name")
    ordering = ("email",)
    readonly_fields = ("date_joined", "last_login", "email_verified_at")
    inlines = (MembershipInline,)
    fieldsets = (
        (None, {"fields": ("email", "name", "password")}),
        ("Back office", {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")}),
        ("Dates", {"fields": ("date_joined", "last_login", "email_verified_at")}),
    )
    add_fieldsets = (
        (
            None,
            {"classes": ("wide",), "fields": ("email", "name", "usable_password", "password1", "password2")},
        ),
    )
    audit_fields = ("email", "name", "is_active", "is_staff", "is_superuser")

    def get_inlines(self, request: HttpRequest, obj: User | None) -> Any:
        return self.inlines if obj is not None else ()  # memberships come after the user exists

    @admin.display(description="Organizations")
    def organization_count(self, obj: User) -> int:
        return obj.memberships.count()

    def get_queryset(self, request: HttpRequest) -> Any:
        return super().get_queryset(request).prefetch_related("memberships")

    def user_change_password(self, request: HttpRequest, id: str, form_url: str = "") -> HttpResponse:  # noqa: A002
        # Django's view saves the password and logs it in two steps; one transaction keeps them together.
        with transaction.atomic():
            return super().user_change_password(request, id, form_url)
