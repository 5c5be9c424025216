"""Organization settings pages (members, invitations, API keys, audit log) and
the public invitation page. Thin, like the API: each view names its action
(@require_action) and calls one service in apps/tenancy/identity.py; a
service's refusal is shown on the page with the service's HTTP status."""

import dataclasses
from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth import login
from django.core.paginator import Paginator
from django.db import IntegrityError, transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.accounts.email_confirmation import email_confirmation_send
from apps.accounts.handoff import handoff_url
from apps.accounts.models import User, normalize_email
from apps.billing.features import feature_required
from apps.core.errors import ServiceError
from apps.tenancy import identity
from apps.tenancy.api import AuditEventFilter, audit_csv_rows, audit_events_for
from apps.tenancy.audit import Actor
from apps.tenancy.decorators import require_action
from apps.tenancy.forms_identity import (
    ApiKeyForm,
    AuditFilterForm,
    InvitationSignupForm,
    InviteForm,
    RoleForm,
    TransferForm,
)
from apps.tenancy.hosts import organization_url, public_url
from apps.tenancy.models import ApiKey, Invitation, Membership, Organization
from apps.tenancy.roles import role_allows
from apps.tenancy.selectors import member_of_organization

Role = Membership.Role
AUDIT_PAGE_SIZE = 50


def _organization(request: HttpRequest) -> Organization:
    organization: Organization = request.tenant  # type: ignore[attr-defined]
    return organization


def _membership(request: HttpRequest) -> Membership:
    membership: Membership = request.membership  # type: ignore[attr-defined]
    return membership


def _may(request: HttpRequest, *action_keys: str) -> dict[str, bool]:
    role = _membership(request).role
    return {key.replace(".", "_"): role_allows(role, key) for key in action_keys}


# Members and invitations ------------------------------------------------------


def _members_page(
    request: HttpRequest,
    *,
    status: int = 200,
    invite_form: InviteForm | None = None,
    error: str | None = None,
    invitation_link: str | None = None,
) -> HttpResponse:
    organization = _organization(request)
    me = _membership(request)
    is_owner = me.role == Role.OWNER
    members = (
        Membership.objects.filter(organization=organization)
        .select_related("user")
        .order_by("created_at", "pk")
    )
    invitations = (
        Invitation.objects.filter(
            organization=organization, accepted_at__isnull=True, revoked_at__isnull=True
        )
        .select_related("invited_by")
        .order_by("-created_at")
    )
    # Only owners may grant or take away the owner role; admins are not offered it.
    role_choices = [(value, label) for value, label in Role.choices if is_owner or value != Role.OWNER]
    context: dict[str, Any] = {
        "members": members,
        "invitations": invitations,
        "me": me,
        "is_owner": is_owner,
        "role_choices": role_choices,
        "invite_form": invite_form or InviteForm(may_grant_owner=is_owner),
        "error": error,
        "invitation_link": invitation_link,
        "may": _may(
            request,
            "members.invite",
            "members.change_role",
            "members.remove",
            "members.transfer_ownership",
        ),
    }
    response = render(request, "tenancy/settings/members.html", context, status=status)
    if invitation_link:
        response["Cache-Control"] = "no-store"
    return response


def _member_or_404(request: HttpRequest, member_id: int) -> Membership:
    membership = member_of_organization(organization=_organization(request), member_id=member_id)
    if membership is None:
        raise Http404("No such member.")
    return membership


def _first_error(form: Any, field: str) -> str:
    return " ".join(str(error) for error in form.errors[field])


def _back_to_members() -> HttpResponseRedirect:
    return HttpResponseRedirect("/settings/members/")


@require_GET
@require_action("members.view")
def members_page(request: HttpRequest) -> HttpResponse:
    return _members_page(request)


@require_POST
@require_action("members.invite")
def invitation_create_page(request: HttpRequest) -> HttpResponse:
    is_owner = _membership(request).role == Role.OWNER
    form = InviteForm(request.POST, may_grant_owner=is_owner)
    if not form.is_valid():
        return _members_page(request, status=400, invite_form=form)
    try:
        invitation, link = identity.invitation_create(
            actor=Actor.from_request(request),
            organization=_organization(request),
            email=form.cleaned_data["email"],
            role=form.cleaned_data["role"],
            accept_url_base=public_url(request, "").rstrip("/"),
        )
    except ServiceError as exc:
        form.add_error(exc.field if exc.field in form.fields else None, exc.message)
        return _members_page(request, status=exc.status, invite_form=form)
    messages.success(
        request, f"Invitation sent to {invitation.email} as {invitation.get_role_display().lower()}."
    )
    # The link is shown this once, on this response, for the inviter to pass on
    # if the email goes astray; only its hash is stored.
    return _members_page(request, invitation_link=link)


@require_POST
@require_action("members.invite")
def invitation_revoke_page(request: HttpRequest, invitation_id: int) -> HttpResponse:
    invitation = Invitation.objects.filter(organization=_organization(request), pk=invitation_id).first()
    if invitation is None:
        raise Http404("No such invitation.")
    try:
        identity.invitation_revoke(actor=Actor.from_request(request), invitation=invitation)
    except ServiceError as exc:
        return _members_page(request, status=exc.status, error=exc.message)
    messages.success(request, f"The invitation for {invitation.email} was revoked.")
    return _back_to_members()


@require_POST
@require_action("members.change_role")
def member_role_page(request: HttpRequest, member_id: int) -> HttpResponse:
    membership = _member_or_404(request, member_id)
    form = RoleForm(request.POST)
    if not form.is_valid():
        return _members_page(request, status=400, error=_first_error(form, "role"))
    try:
        updated = identity.member_change_role(
            actor=Actor.from_request(request), membership=membership, role=form.cleaned_data["role"]
        )
    except ServiceError as exc:
        return _members_page(request, status=exc.status, error=exc.message)
    messages.success(request, f"{updated.user.email} is now {updated.get_role_display().lower()}.")
    return _back_to_members()


@require_POST
@require_action("members.remove")
def member_remove_page(request: HttpRequest, member_id: int) -> HttpResponse:
    membership = _member_or_404(request, member_id)
    try:
        identity.member_remove(actor=Actor.from_request(request), membership=membership)
    except ServiceError as exc:
        return _members_page(request, status=exc.status, error=exc.message)
    if membership.user_id == request.user.pk:
        return HttpResponseRedirect(public_url(request, "/orgs/"))
    messages.success(request, f"{membership.user.email} was removed from {_organization(request).name}.")
    return _back_to_members()


@require_POST
@require_action("members.view")
def member_leave_page(request: HttpRequest) -> HttpResponse:
    """Anyone may leave, except the last owner."""
    try:
        identity.member_remove(actor=Actor.from_request(request), membership=_membership(request))
    except ServiceError as exc:
        return _members_page(request, status=exc.status, error=exc.message)
    return HttpResponseRedirect(public_url(request, "/orgs/"))


@require_POST
@require_action("members.transfer_ownership")
def ownership_transfer_page(request: HttpRequest) -> HttpResponse:
    form = TransferForm(request.POST)
    if not form.is_valid():
        return _members_page(request, status=400, error=_first_error(form, "member_id"))
    target = _member_or_404(request, form.cleaned_data["member_id"])
    try:
        identity.ownership_transfer(
            actor=Actor.from_request(request), organization=_organization(request), to=target
        )
    except ServiceError as exc:
        return _members_page(request, status=exc.status, error=exc.message)
    messages.success(request, f"{target.user.email} is now the owner; you are an admin.")
    return _back_to_members()


# API keys --------------------------------------------------------------------


def _api_keys_page(
    request: HttpRequest,
    *,
    status: int = 200,
    form: ApiKeyForm | None = None,
    created: ApiKey | None = None,
    secret: str | None = None,
) -> HttpResponse:
    keys = ApiKey.objects.filter(organization=_organization(request)).select_related("created_by")
    context = {
        "keys": keys.order_by("-created_at", "-pk"),
        "form": form or ApiKeyForm(),
        "created": created,
        "secret": secret,
        "may": _may(request, "api_keys.manage"),
    }
    response = render(request, "tenancy/settings/api_keys.html", context, status=status)
    # Never cache a page: one of them carries a secret that is shown only once.
    response["Cache-Control"] = "no-store"
    return response


@require_GET
@require_action("api_keys.view")
def api_keys_page(request: HttpRequest) -> HttpResponse:
    return _api_keys_page(request)


@require_POST
@require_action("api_keys.manage")
def api_key_create_page(request: HttpRequest) -> HttpResponse:
    form = ApiKeyForm(request.POST)
    if not form.is_valid():
        return _api_keys_page(request, status=400, form=form)
    try:
        api_key, secret = identity.api_key_create(
            actor=Actor.from_request(request),
            organization=_organization(request),
            name=form.cleaned_data["name"],
            scopes=form.cleaned_data["scopes"],
            expires_at=form.expires_at(),
        )
    except ServiceError as exc:
        field = {"expires_at": "expires_on"}.get(exc.field or "", exc.field)
        form.add_error(field if field in form.fields else None, exc.message)
        return _api_keys_page(request, status=exc.status, form=form)
    return _api_keys_page(request, created=api_key, secret=secret)


@require_POST
@require_action("api_keys.manage")
def api_key_revoke_page(request: HttpRequest, key_id: int) -> HttpResponse:
    api_key = ApiKey.objects.filter(organization=_organization(request), pk=key_id).first()
    if api_key is None:
        raise Http404("No such API key.")
    if api_key.revoked_at is not None:
        messages.info(request, f"The key {api_key.name} was already revoked.")
        return HttpResponseRedirect("/settings/api-keys/")
    try:
        identity.api_key_revoke(actor=Actor.from_request(request), api_key=api_key)
    except ServiceError as exc:
        messages.error(request, exc.message)
        return _api_keys_page(request, status=exc.status)
    messages.success(request, f"The key {api_key.name} ({api_key.prefix}…) was revoked; it no longer works.")
    return HttpResponseRedirect("/settings/api-keys/")


# Audit log -------------------------------------------------------------------


def _audit_events(request: HttpRequest, form: AuditFilterForm) -> Any:
    events = audit_events_for(_organization(request))
    return AuditEventFilter(form.filter_data(), queryset=events).qs


@require_GET
@require_action("audit.view")
def audit_page(request: HttpRequest) -> HttpResponse:
    form = AuditFilterForm(request.GET)
    if not form.is_valid():
        invalid = {"form": form, "page": None}
        return render(request, "tenancy/settings/audit.html", invalid, status=400)
    events = _audit_events(request, form)
    page = Paginator(events, AUDIT_PAGE_SIZE).get_page(request.GET.get("page"))
    export_query = urlencode({key: value for key, value in request.GET.items() if key != "page" and value})
    context: dict[str, Any] = {"form": form, "page": page, "export_query": export_query}
    return render(request, "tenancy/settings/audit.html", context)


@require_GET
@require_action("audit.view")
@feature_required("audit_export")
def audit_export(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    form = AuditFilterForm(request.GET)
    if not form.is_valid():
        return render(request, "tenancy/settings/audit.html", {"form": form, "page": None}, status=400)
    events: Any = _audit_events(request, form)
    response = StreamingHttpResponse(audit_csv_rows(events), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{_organization(request).slug}-audit.csv"'
    return response


# The invitation, on the public site --------------------------------------------


def _invitation_problem(request: HttpRequest, title: str, message: str, status: int) -> HttpResponse:
    context = {"title": title, "message": message}
    return render(request, "tenancy/invitations/problem.html", context, status=status)


def _refusal(request: HttpRequest, invitation: Invitation | None) -> HttpResponse | None:
    """The page for an invitation that cannot be accepted by this visitor, if so."""
    if invitation is None:
        return _invitation_problem(
            request,
            "Invitation not found",
            "This invitation link is not valid. Check that you copied all of it.",
            404,
        )
    who = invitation.invited_by.display_name if invitation.invited_by else "Its owners"
    ask = f"Ask {who} to invite you again."
    if invitation.status == "revoked":
        return _invitation_problem(request, "Invitation revoked", f"This invitation was revoked. {ask}", 410)
    if invitation.status == "expired":
        return _invitation_problem(request, "Invitation expired", f"This invitation has expired. {ask}", 410)
    user = request.user
    still_member = (
        user.is_authenticated
        and invitation.accepted_by_id == user.pk
        and Membership.objects.filter(user=user, organization=invitation.organization).exists()
    )
    if invitation.status == "accepted" and not still_member:
        return _invitation_problem(
            request, "Invitation already used", f"This invitation was already used. {ask}", 410
        )
    if user.is_authenticated and normalize_email(user.email) != invitation.email:
        context = {"invitation": invitation}
        return render(request, "tenancy/invitations/wrong_account.html", context, status=403)
    return None


def _invitation_show(
    request: HttpRequest, token: str, invitation: Invitation, *, form: InvitationSignupForm | None = None
) -> HttpResponse:
    here = public_url(request, f"/invitations/{token}/")
    context = {
        "invitation": invitation,
        "token": token,
        "account_exists": User.objects.filter(email=invitation.email).exists(),
        "signup_form": form or InvitationSignupForm(email=invitation.email),
        "login_url": public_url(request, "/login/?" + urlencode({"next": here})),
    }
    return render(request, "tenancy/invitations/show.html", context, status=400 if form else 200)


@never_cache
@require_http_methods(["GET", "POST"])
def invitation_page(request: HttpRequest, token: str) -> HttpResponse:
    """GET: what the invitation is for. POST: accept it as the logged-in person."""
    invitation = identity.invitation_for_token(token)
    refusal = _refusal(request, invitation)
    if refusal is not None:
        return refusal
    assert invitation is not None
    if request.method == "GET" or not request.user.is_authenticated:
        return _invitation_show(request, token, invitation)
    try:
        membership = identity.invitation_accept(actor=Actor.from_request(request), token=token)
    except ServiceError as exc:
        return _invitation_problem(request, "This invitation cannot be accepted", exc.message, exc.status)
    return _go_to(request, membership.organization)


@never_cache
@require_POST
def invitation_signup_page(request: HttpRequest, token: str) -> HttpResponse:
    """Create an account for the invited address, accept, and log in."""
    invitation = identity.invitation_for_token(token)
    refusal = _refusal(request, invitation)
    if refusal is not None:
        return refusal
    assert invitation is not None
    if request.user.is_authenticated:
        return HttpResponseRedirect(f"/invitations/{token}/")
    form = InvitationSignupForm(request.POST, email=invitation.email)
    if not form.is_valid():
        return _invitation_show(request, token, invitation, form=form)
    try:
        with transaction.atomic():
            user = User.objects.create_user(
                invitation.email, form.cleaned_data["password"], name=form.cleaned_data["name"].strip()
            )
            actor = dataclasses.replace(Actor.from_request(request), user=user)
            membership = identity.invitation_accept(actor=actor, token=token)
            # The inviter saw the invitation link too, so opening it proves nothing
            # about the mailbox: the address is confirmed like any other.
            email_confirmation_send(user=user, url_base=public_url(request, ""))
    except IntegrityError:
        form.add_error(None, "An account with this email exists. Log in to accept instead.")
        return _invitation_show(request, token, invitation, form=form)
    except ServiceError as exc:
        return _invitation_problem(request, "This invitation cannot be accepted", exc.message, exc.status)
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    return _go_to(request, membership.organization)


def _go_to(request: HttpRequest, organization: Organization) -> HttpResponse:
    return HttpResponseRedirect(handoff_url(request, organization_url(request, organization)))
