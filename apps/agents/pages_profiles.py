"""Agent profiles on the organization's host: the list (everyone with agents.view) and,
for owners and admins (agents.manage), a form to add one, change one or delete it. A
profile sets how its runs work: the model, the tools allowed, the budgets and
confirmation mode (risky commands wait for a member's approval). Runs copy it when they
start, so a change never alters a run in flight.

Thin: the form parses shapes (lines into lists); the rules are the service's, and its
refusals are shown on the field they name."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.agents import selectors, services
from apps.agents.models import AgentProfile
from apps.core.errors import ServiceError
from apps.tenancy.audit import Actor
from apps.tenancy.decorators import forbidden_page, page_allows, page_organization, require_action

BASE = "/agents/profiles/"


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.replace(",", "\n").splitlines() if line.strip()]


class ProfileForm(forms.Form):
    name = forms.CharField(max_length=100, widget=forms.TextInput(attrs={"autocomplete": "off"}))
    model = forms.CharField(
        max_length=200,
        initial="auto",
        help_text='A model of the catalog (Models page), or "auto" for the router to choose each step.',
    )
    role = forms.CharField(
        required=False,
        max_length=2000,
        help_text="Who the agent is and how it works, added to its prompt.",
        widget=forms.Textarea(attrs={"rows": 3}),
    )
    tools = forms.CharField(
        required=False,
        help_text="Tool names the agent may use, one a line (or comma-separated). Empty: every tool.",
        widget=forms.Textarea(attrs={"rows": 2, "spellcheck": "false"}),
    )
    max_steps = forms.IntegerField(min_value=1, initial=50, label="Steps at most")
    max_cost = forms.DecimalField(
        min_value=Decimal(0), decimal_places=6, initial=Decimal(1), label="Cost at most (US$)"
    )
    max_seconds = forms.IntegerField(min_value=1, initial=1800, label="Running time at most (seconds)")
    confirmation = forms.BooleanField(
        required=False,
        label="Confirmation mode",
        help_text="Risky commands (rm -rf, pushing, the network…) wait for a member to approve or deny them.",
    )
    risk_patterns = forms.CharField(
        required=False,
        label="More risky commands",
        help_text="Regular expressions, one a line, beside the built-in ones.",
        widget=forms.Textarea(attrs={"rows": 2, "spellcheck": "false"}),
    )

    def fields_for_service(self) -> dict[str, Any]:
        values = dict(self.cleaned_data)
        values["tools"] = _lines(values["tools"])
        values["risk_patterns"] = [
            line.strip() for line in values["risk_patterns"].splitlines() if line.strip()
        ]
        return values

    @classmethod
    def of(cls, profile: AgentProfile) -> ProfileForm:
        return cls(
            initial={
                "name": profile.name,
                "model": profile.model,
                "role": profile.role,
                "tools": "\n".join(profile.tools),
                "max_steps": profile.max_steps,
                "max_cost": profile.max_cost,
                "max_seconds": profile.max_seconds,
                "confirmation": profile.confirmation,
                "risk_patterns": "\n".join(profile.risk_patterns),
            }
        )


def _profile_or_404(profile_id: int) -> AgentProfile:
    try:
        return selectors.profile_get(profile_id=profile_id)
    except ServiceError:
        raise Http404("No such agent profile.") from None


def _list(request: HttpRequest, form: ProfileForm | None = None, *, status: int = 200) -> HttpResponse:
    context = {
        "profiles": selectors.profiles_list(),
        "may_manage": page_allows(request, "agents.manage"),
        "form": form or ProfileForm(),
    }
    return render(request, "agents/profiles.html", context, status=status)


def _refused(form: ProfileForm, exc: ServiceError) -> None:
    form.add_error(exc.field if exc.field in form.fields else None, exc.message)


@require_GET
@require_action("agents.view")
def profiles_page(request: HttpRequest) -> HttpResponse:
    return _list(request)


@require_POST
@require_action("agents.manage")
def profile_create_page(request: HttpRequest) -> HttpResponse:
    form = ProfileForm(request.POST)
    if not form.is_valid():
        return _list(request, form, status=400)
    try:
        profile = services.profile_create(
            actor=Actor.from_request(request),
            organization=page_organization(request),
            **form.fields_for_service(),
        )
    except ServiceError as exc:
        _refused(form, exc)
        return _list(request, form, status=exc.status)
    messages.success(request, f"Profile {profile.name} was added.")
    return HttpResponseRedirect(BASE)


@require_http_methods(["GET", "POST"])
@require_action("agents.view")
def profile_page(request: HttpRequest, profile_id: int) -> HttpResponse:
    profile = _profile_or_404(profile_id)
    may_manage = page_allows(request, "agents.manage")
    if request.method == "GET":
        context = {"profile": profile, "form": ProfileForm.of(profile), "may_manage": may_manage}
        return render(request, "agents/profile.html", context)
    if not may_manage:
        return forbidden_page(request, "agents.manage")
    form = ProfileForm(request.POST)
    status = 400
    if form.is_valid():
        try:
            profile = services.profile_update(
                actor=Actor.from_request(request),
                organization=page_organization(request),
                profile=profile,
                **form.fields_for_service(),
            )
        except ServiceError as exc:
            _refused(form, exc)
            status = exc.status
        else:
            messages.success(request, f"Profile {profile.name} was saved.")
            return HttpResponseRedirect(f"{BASE}{profile.pk}/")
    return render(
        request, "agents/profile.html", {"profile": profile, "form": form, "may_manage": True}, status=status
    )


@require_POST
@require_action("agents.manage")
def profile_delete_page(request: HttpRequest, profile_id: int) -> HttpResponse:
    profile = _profile_or_404(profile_id)
    services.profile_delete(
        actor=Actor.from_request(request), organization=page_organization(request), profile=profile
    )
    messages.success(request, f"Profile {profile.name} was deleted; its runs keep their settings.")
    return HttpResponseRedirect(BASE)
