"""The organization's agent tools page (under Settings): its HTTP tools and MCP servers,
a form to add one, each one's page to change, test (an MCP server: the tools runs will
see) or delete it, and the usage table of every tool runs have called.

Thin: each view names its action (@require_action) and calls one service; a service's
refusal is shown on the page with its HTTP status. Header values go in, never out."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_POST

from apps.agents import tool_selectors, tool_services
from apps.agents.models import OrganizationTool
from apps.core.errors import ServiceError
from apps.tenancy.audit import Actor
from apps.tenancy.decorators import page_allows, page_organization, require_action

BASE = "/settings/agent-tools/"

PARAMETERS_PLACEHOLDER = (
    '{"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}'
)


def _tool_or_404(tool_id: int) -> OrganizationTool:
    try:
        return tool_selectors.tool_get(tool_id=tool_id)
    except ServiceError:
        raise Http404("No such agent tool.") from None


def _parse_headers(text: str) -> dict[str, str]:
    """One "Name: value" a line."""
    headers: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise forms.ValidationError(f'Line {number}: write "Name: value".')
        headers[name.strip()] = value.strip()
    return headers


class ToolForm(forms.Form):
    """Add or change a tool. Headers left empty on a change keep the stored ones."""

    name = forms.CharField(
        max_length=64,
        help_text="Letters, digits, _ and -. An MCP server's tools are named <name>__<its tool>.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    kind = forms.ChoiceField(choices=OrganizationTool.Kind.choices)
    url = forms.CharField(
        max_length=2000,
        label="URL",
        help_text="HTTP tools get each call's arguments POSTed here as JSON; an MCP server's streamable"
        " HTTP endpoint (often ending in /mcp).",
        widget=forms.URLInput(attrs={"spellcheck": "false"}),
    )
    description = forms.CharField(
        max_length=2000,
        required=False,
        help_text="What the model reads to decide when to call it (HTTP tools).",
        widget=forms.Textarea(attrs={"rows": 2}),
    )
    parameters = forms.CharField(
        required=False,
        label="Parameters (JSON Schema)",
        help_text="HTTP tools: the arguments' JSON Schema, of type object. Empty: no arguments."
        " MCP servers: leave empty.",
        widget=forms.Textarea(
            attrs={"rows": 4, "spellcheck": "false", "placeholder": PARAMETERS_PLACEHOLDER}
        ),
    )
    headers = forms.CharField(
        required=False,
        strip=False,
        help_text='One "Name: value" a line, e.g. "Authorization: Bearer …". Stored encrypted and never'
        " shown again.",
        widget=forms.Textarea(
            attrs={"rows": 2, "spellcheck": "false", "autocomplete": "off", "class": "code"}
        ),
    )
    clear_headers = forms.BooleanField(required=False, label="Remove the stored headers")
    timeout_seconds = forms.IntegerField(min_value=1, max_value=300, initial=30, label="Timeout (seconds)")
    enabled = forms.BooleanField(required=False, initial=True, help_text="Offered to new steps of runs.")

    def clean_parameters(self) -> dict[str, Any] | None:
        text = self.cleaned_data["parameters"].strip()
        if not text:
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"This is not JSON: {exc.msg} (line {exc.lineno}).") from None
        if not isinstance(value, dict):
            raise forms.ValidationError("The parameters are a JSON object (a schema of type object).")
        return value

    def clean_headers(self) -> dict[str, str] | None:
        text = self.cleaned_data["headers"]
        return _parse_headers(text) if text.strip() else None


def _tools_page(request: HttpRequest, *, form: ToolForm | None = None, status: int = 200) -> HttpResponse:
    context = {
        "tools": list(tool_selectors.tools_list()),
        "usage": tool_selectors.tool_stats_list(),
        "may_manage": page_allows(request, "agents.manage"),
        "form": form or ToolForm(),
    }
    response = render(request, "agents/tools.html", context, status=status)
    response["Cache-Control"] = "no-store"  # its form takes header values
    return response


def _form_error(form: ToolForm, exc: ServiceError) -> None:
    form.add_error(exc.field if exc.field in form.fields else None, exc.message)


@require_GET
@require_action("agents.view")
def tools_page(request: HttpRequest) -> HttpResponse:
    return _tools_page(request)


@require_POST
@require_action("agents.manage")
def tool_create_page(request: HttpRequest) -> HttpResponse:
    form = ToolForm(request.POST)
    if not form.is_valid():
        return _tools_page(request, form=form, status=400)
    data = form.cleaned_data
    try:
        tool = tool_services.tool_create(
            actor=Actor.from_request(request),
            organization=page_organization(request),
            name=data["name"],
            kind=data["kind"],
            url=data["url"],
            description=data["description"],
            parameters=data["parameters"],
            headers=data["headers"],
            timeout_seconds=data["timeout_seconds"],
            enabled=data["enabled"],
        )
    except ServiceError as exc:
        _form_error(form, exc)
        return _tools_page(request, form=form, status=exc.status)
    messages.success(request, f"The tool {tool.name} was added.")
    return HttpResponseRedirect(f"{BASE}{tool.pk}/")


def _tool_page(
    request: HttpRequest,
    tool: OrganizationTool,
    *,
    form: ToolForm | None = None,
    test: tool_services.ConnectionTest | None = None,
    status: int = 200,
) -> HttpResponse:
    if form is None:
        form = ToolForm(
            initial={
                "name": tool.name,
                "kind": tool.kind,
                "url": tool.url,
                "description": tool.description,
                "parameters": json.dumps(tool.parameters, indent=2) if tool.parameters else "",
                "timeout_seconds": tool.timeout_seconds,
                "enabled": tool.enabled,
            }
        )
    form.fields["kind"].disabled = True  # a tool's kind never changes
    form.fields[
        "headers"
    ].help_text = 'One "Name: value" a line: replaces the stored headers. Left empty: they are kept.'
    context = {
        "tool": tool,
        "header_names": tool_services.tool_header_names(tool),
        "form": form,
        "test": test,
        "may_manage": page_allows(request, "agents.manage"),
    }
    response = render(request, "agents/tool.html", context, status=status)
    response["Cache-Control"] = "no-store"
    return response


@require_GET
@require_action("agents.view")
def tool_page(request: HttpRequest, tool_id: int) -> HttpResponse:
    return _tool_page(request, _tool_or_404(tool_id))


@require_POST
@require_action("agents.manage")
def tool_update_page(request: HttpRequest, tool_id: int) -> HttpResponse:
    tool = _tool_or_404(tool_id)
    form = ToolForm(request.POST, initial={"kind": tool.kind})
    form.fields["kind"].disabled = True
    if not form.is_valid():
        return _tool_page(request, tool, form=form, status=400)
    data = form.cleaned_data
    changes: dict[str, Any] = {
        "name": data["name"],
        "url": data["url"],
        "description": data["description"],
        "parameters": data["parameters"] or {},
        "timeout_seconds": data["timeout_seconds"],
        "enabled": data["enabled"],
    }
    if data["clear_headers"]:
        changes["headers"] = {}
    elif data["headers"] is not None:
        changes["headers"] = data["headers"]
    try:
        tool = tool_services.tool_update(
            actor=Actor.from_request(request), organization=page_organization(request), tool=tool, **changes
        )
    except ServiceError as exc:
        _form_error(form, exc)
        return _tool_page(request, tool, form=form, status=exc.status)
    messages.success(request, f"The tool {tool.name} was saved.")
    return HttpResponseRedirect(f"{BASE}{tool.pk}/")


@require_POST
@require_action("agents.manage")
def tool_test_page(request: HttpRequest, tool_id: int) -> HttpResponse:
    tool = _tool_or_404(tool_id)
    try:
        test = tool_services.tool_connection_test(tool=tool)
    except ServiceError as exc:
        messages.error(request, exc.message)
        return _tool_page(request, tool, status=exc.status)
    return _tool_page(request, tool, test=test)


@require_POST
@require_action("agents.manage")
def tool_delete_page(request: HttpRequest, tool_id: int) -> HttpResponse:
    tool = _tool_or_404(tool_id)
    try:
        tool_services.tool_delete(
            actor=Actor.from_request(request), organization=page_organization(request), tool=tool
        )
    except ServiceError as exc:
        messages.error(request, exc.message)
        return _tool_page(request, tool, status=exc.status)
    messages.success(request, f"The tool {tool.name} was deleted.")
    return HttpResponseRedirect(BASE)
