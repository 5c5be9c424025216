"""Agent run pages on the organization's host: the runs list (state, steps, cost), the
new-run form (workspace, profile, task), and a run's page, where static/js/agent_run.js
draws the live timeline from the run's WebSocket (apps/agents/consumers.py) beside the
workspace's terminal, with the cost and token meter, approve/deny while the run waits,
pause/resume/cancel, and the final diff with a commit form.

Thin: each view names its action (@require_action) and calls one service; a service's
refusal is shown on the page with its HTTP status."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.agents import selectors, services
from apps.agents.api import queue_positions
from apps.agents.models import AgentRun
from apps.billing.features import feature_refusal
from apps.core.errors import ServiceError
from apps.tenancy.audit import Actor
from apps.tenancy.decorators import page_allows, page_organization, require_action
from apps.workspaces.models import Workspace

RUNS_PER_PAGE = 50


class RunForm(forms.Form):
    workspace = forms.TypedChoiceField(coerce=int, label="Workspace", help_text="It must be running.")
    profile = forms.TypedChoiceField(
        coerce=int, empty_value=None, required=False, label="Profile", help_text="How the agent works."
    )
    task = forms.CharField(
        label="Task",
        widget=forms.Textarea(attrs={"rows": 6, "placeholder": "Make the failing test in tests/ pass."}),
        help_text="What the agent should do, as you would tell a colleague.",
    )
    priority = forms.ChoiceField(
        choices=AgentRun.Priority.choices,
        initial=AgentRun.Priority.INTERACTIVE,
        label="Priority",
        help_text="Interactive runs start before batch ones when the agent pool is full.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        workspaces = Workspace.objects.exclude(state=Workspace.State.DELETED).order_by("name")
        workspace = self.fields["workspace"]
        assert isinstance(workspace, forms.ChoiceField)
        workspace.choices = [
            (item.pk, item.name if item.is_running else f"{item.name} ({item.get_state_display().lower()})")
            for item in workspaces
        ]
        running = next((item.pk for item in workspaces if item.is_running), None)
        if running is not None:
            workspace.initial = running
        profile = self.fields["profile"]
        assert isinstance(profile, forms.ChoiceField)
        profile.choices = [("", "Default"), *((item.pk, item.name) for item in selectors.profiles_list())]


def _may(request: HttpRequest) -> dict[str, bool]:
    keys = ("agents.run", "agents.manage", "workspaces.operate")
    return {key.replace(".", "_"): page_allows(request, key) for key in keys}


def _run_or_404(run_id: uuid.UUID) -> AgentRun:
    try:
        return selectors.run_get(run_id=run_id)
    except ServiceError:
        raise Http404("No such run.") from None


@require_GET
@require_action("agents.view")
def runs_page(request: HttpRequest) -> HttpResponse:
    state = request.GET.get("state", "")
    if state not in AgentRun.State.values:
        state = ""
    runs = selectors.runs_list(state=state or None)
    page = Paginator(runs, RUNS_PER_PAGE).get_page(request.GET.get("page"))
    context = {"page": page, "state": state, "states": AgentRun.State.choices, "may": _may(request)}
    return render(request, "agents/runs.html", context)


@require_http_methods(["GET", "POST"])
@require_action("agents.run")
def run_create_page(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        form = RunForm(
            initial={"workspace": request.GET.get("workspace")} if request.GET.get("workspace") else None
        )
        return render(request, "agents/new.html", {"form": form})
    form = RunForm(request.POST)
    if not form.is_valid():
        return render(request, "agents/new.html", {"form": form}, status=400)
    try:
        run = services.run_create(
            actor=Actor.from_request(request), organization=page_organization(request), **form.cleaned_data
        )
    except ServiceError as exc:
        form.add_error(exc.field if exc.field in form.fields else None, exc.message)
        return render(request, "agents/new.html", {"form": form}, status=exc.status)
    return HttpResponseRedirect(f"/agents/runs/{run.pk}/")


def _run_page(
    request: HttpRequest, run: AgentRun, *, status: int = 200, error: str | None = None
) -> HttpResponse:
    may = _may(request)
    workspace = run.workspace
    show_terminal = workspace is not None and workspace.is_running
    context = {
        "run": run,
        "workspace": workspace,
        "may": may,
        "error": error,
        "show_terminal": show_terminal,
        "can_drive": may["workspaces_operate"],
        "terminal_refusal": (
            feature_refusal(organization=page_organization(request), key="terminal")
            if show_terminal
            else None
        ),
        "result": run.result or {},
        "diff": str((run.result or {}).get("diff") or ""),
        "queue_position": queue_positions([run]).get(run.pk),
    }
    return render(request, "agents/run.html", context, status=status)


@require_GET
@require_action("agents.view")
def run_page(request: HttpRequest, run_id: uuid.UUID) -> HttpResponse:
    return _run_page(request, _run_or_404(run_id))


def _control(
    request: HttpRequest, run_id: uuid.UUID, apply: Callable[..., AgentRun], done: str, **extra: Any
) -> HttpResponse:
    run = _run_or_404(run_id)
    try:
        apply(actor=Actor.from_request(request), organization=page_organization(request), run=run, **extra)
    except ServiceError as exc:
        run.refresh_from_db()
        return _run_page(request, run, status=exc.status, error=exc.message)
    messages.success(request, done)
    return HttpResponseRedirect(f"/agents/runs/{run.pk}/")


@require_POST
@require_action("agents.run")
def run_cancel_page(request: HttpRequest, run_id: uuid.UUID) -> HttpResponse:
    return _control(request, run_id, services.run_cancel, "The run is being cancelled.")


@require_POST
@require_action("agents.run")
def run_pause_page(request: HttpRequest, run_id: uuid.UUID) -> HttpResponse:
    return _control(request, run_id, services.run_pause, "The run pauses after its current step.")


@require_POST
@require_action("agents.run")
def run_resume_page(request: HttpRequest, run_id: uuid.UUID) -> HttpResponse:
    return _control(request, run_id, services.run_resume, "The run is back in line.")


@require_POST
@require_action("agents.run")
def run_approve_page(request: HttpRequest, run_id: uuid.UUID) -> HttpResponse:
    note = request.POST.get("note", "")
    return _control(
        request, run_id, services.run_decide, "Approved; the run goes on.", approve=True, note=note
    )


@require_POST
@require_action("agents.run")
def run_deny_page(request: HttpRequest, run_id: uuid.UUID) -> HttpResponse:
    note = request.POST.get("note", "")
    return _control(
        request,
        run_id,
        services.run_decide,
        "Denied; the agent is told and goes on.",
        approve=False,
        note=note,
    )


@require_POST
@require_action("agents.run")
def run_commit_page(request: HttpRequest, run_id: uuid.UUID) -> HttpResponse:
    message = request.POST.get("message", "")
    return _control(request, run_id, services.run_commit, "The changes are committed.", message=message)
