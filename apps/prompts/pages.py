"""Prompt template pages on the organization's host: the list (with the platform's
defaults), a new template, a template with its version history and a preview,
editing (a new version), an old version, a diff between two versions, roll back
and delete. Thin: each view names its action (@require_action) and calls one
service; a service's refusal is shown on the page with its HTTP status."""

from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.core.errors import ServiceError
from apps.prompts import file_defaults, selectors, services
from apps.prompts import variables as declared_variables
from apps.prompts.forms import PreviewForm, TemplateForm, VersionForm
from apps.prompts.models import PromptTemplate
from apps.tenancy.audit import Actor
from apps.tenancy.decorators import require_action
from apps.tenancy.models import Membership, Organization
from apps.tenancy.roles import role_allows


def _organization(request: HttpRequest) -> Organization:
    organization: Organization = request.tenant  # type: ignore[attr-defined]
    return organization


def _may_manage(request: HttpRequest) -> bool:
    membership: Membership = request.membership  # type: ignore[attr-defined]
    return role_allows(membership.role, "prompts.manage")


def _template_or_404(prompt_id: int) -> PromptTemplate:
    try:
        return selectors.template_get(template_id=prompt_id)
    except ServiceError:
        raise Http404("No such prompt template.") from None


def _form_error(form: Any, exc: ServiceError) -> None:
    form.add_error(exc.field if exc.field in form.fields else None, exc.message)


@require_GET
@require_action("prompts.view")
def prompts_page(request: HttpRequest) -> HttpResponse:
    templates = list(selectors.templates_list())
    own = {template.name for template in templates}
    context = {
        "templates": templates,
        "defaults": [default for default in file_defaults.defaults() if default.name not in own],
        "may_manage": _may_manage(request),
    }
    return render(request, "prompts/list.html", context)


@require_http_methods(["GET", "POST"])
@require_action("prompts.manage")
def prompt_create_page(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        initial: dict[str, Any] = {}
        default = file_defaults.default_get(request.GET.get("default", ""))
        if default is not None:  # customizing a shipped default: start from its text
            initial = {
                "name": default.name,
                "description": default.description,
                "body": default.body,
                "variables": declared_variables.to_toml(default.variables),
                "message": "Customized from the platform's default",
            }
        return render(request, "prompts/new.html", {"form": TemplateForm(initial=initial)})
    form = TemplateForm(request.POST)
    if not form.is_valid():
        return render(request, "prompts/new.html", {"form": form}, status=400)
    try:
        template = services.template_create(
            actor=Actor.from_request(request), organization=_organization(request), **form.cleaned_data
        )
    except ServiceError as exc:
        _form_error(form, exc)
        return render(request, "prompts/new.html", {"form": form}, status=exc.status)
    messages.success(request, f"The prompt template {template.name} was created (version 1).")
    return HttpResponseRedirect(f"/prompts/{template.pk}/")


def _detail(
    request: HttpRequest,
    template: PromptTemplate,
    *,
    preview_form: PreviewForm | None = None,
    preview: str | None = None,
    preview_error: str | None = None,
    status: int = 200,
) -> HttpResponse:
    context = {
        "template": template,
        "current": template.current_version,
        "variables_toml": declared_variables.to_toml(template.variables),
        "versions": list(selectors.versions_list(template=template)),
        "may_manage": _may_manage(request),
        "preview_form": preview_form or PreviewForm(),
        "preview": preview,
        "preview_error": preview_error,
    }
    return render(request, "prompts/detail.html", context, status=status)


@require_GET
@require_action("prompts.view")
def prompt_page(request: HttpRequest, prompt_id: int) -> HttpResponse:
    return _detail(request, _template_or_404(prompt_id))


@require_POST
@require_action("prompts.view")
def prompt_preview_page(request: HttpRequest, prompt_id: int) -> HttpResponse:
    template = _template_or_404(prompt_id)
    form = PreviewForm(request.POST)
    if not form.is_valid():
        return _detail(request, template, preview_form=form, status=400)
    try:
        rendered = services.template_render(template.name, None, form.cleaned_data["values"])
    except ServiceError as exc:
        return _detail(request, template, preview_form=form, preview_error=exc.message, status=exc.status)
    return _detail(request, template, preview_form=form, preview=rendered.text)


@require_http_methods(["GET", "POST"])
@require_action("prompts.manage")
def prompt_edit_page(request: HttpRequest, prompt_id: int) -> HttpResponse:
    template = _template_or_404(prompt_id)
    current = template.current_version
    if request.method == "GET":
        form = VersionForm(
            initial={
                "body": current.body if current else "",
                "variables": declared_variables.to_toml(template.variables),
                "base_version": current.number if current else 1,
            }
        )
        return render(request, "prompts/edit.html", {"template": template, "form": form})
    form = VersionForm(request.POST)
    if not form.is_valid():
        return render(request, "prompts/edit.html", {"template": template, "form": form}, status=400)
    try:
        version = services.version_create(
            actor=Actor.from_request(request),
            organization=_organization(request),
            template=template,
            body=form.cleaned_data["body"],
            variables=form.cleaned_data["variables"],
            message=form.cleaned_data["message"],
            base_version=form.cleaned_data["base_version"],
        )
    except ServiceError as exc:
        _form_error(form, exc)
        return render(request, "prompts/edit.html", {"template": template, "form": form}, status=exc.status)
    messages.success(request, f"Version {version.number} of {template.name} was saved and is current.")
    return HttpResponseRedirect(f"/prompts/{template.pk}/")


@require_GET
@require_action("prompts.view")
def prompt_version_page(request: HttpRequest, prompt_id: int, prompt_version: int) -> HttpResponse:
    template = _template_or_404(prompt_id)
    try:
        version = selectors.version_get(template=template, number=prompt_version)
    except ServiceError:
        raise Http404("No such version.") from None
    context = {
        "template": template,
        "version": version,
        "variables_toml": declared_variables.to_toml(list(version.variables)),
        "is_current": template.current_version_id == version.pk,
        "may_manage": _may_manage(request),
    }
    return render(request, "prompts/version.html", context)


def _diff_lines(diff: str) -> list[tuple[str, str]]:
    kinds = {"+": "added", "-": "removed", "@": "hunk", " ": "context", "\\": "note"}
    lines = []
    for line in diff.splitlines():
        kind = "file" if line.startswith(("+++", "---")) else kinds.get(line[:1], "context")
        lines.append((kind, line))
    return lines


@require_GET
@require_action("prompts.view")
def prompt_diff_page(request: HttpRequest, prompt_id: int) -> HttpResponse:
    template = _template_or_404(prompt_id)
    current = template.current_version.number if template.current_version else 1
    try:
        to_number = int(request.GET.get("to_version") or current)
        from_number = int(request.GET.get("from_version") or max(1, to_number - 1))
    except ValueError:
        raise Http404("No such version.") from None
    try:
        diff = selectors.versions_diff(template=template, from_number=from_number, to_number=to_number)
    except ServiceError as exc:
        raise Http404(exc.message) from None
    context = {
        "template": template,
        "diff": diff,
        "lines": _diff_lines(diff["diff"]),
        "numbers": [version.number for version in selectors.versions_list(template=template)],
    }
    return render(request, "prompts/diff.html", context)


@require_POST
@require_action("prompts.manage")
def prompt_rollback_page(request: HttpRequest, prompt_id: int) -> HttpResponse:
    template = _template_or_404(prompt_id)
    try:
        number = int(request.POST.get("version", ""))
        version = services.template_rollback(
            actor=Actor.from_request(request),
            organization=_organization(request),
            template=template,
            number=number,
        )
    except ValueError:
        messages.error(request, "Choose a version to roll back to.")
        return HttpResponseRedirect(f"/prompts/{template.pk}/")
    except ServiceError as exc:
        if exc.status == 404:
            raise Http404(exc.message) from None
        messages.error(request, exc.message)
        return HttpResponseRedirect(f"/prompts/{template.pk}/")
    messages.success(
        request, f"Rolled back: version {version.number} restores version {number} and is current."
    )
    return HttpResponseRedirect(f"/prompts/{template.pk}/")


@require_POST
@require_action("prompts.manage")
def prompt_delete_page(request: HttpRequest, prompt_id: int) -> HttpResponse:
    template = _template_or_404(prompt_id)
    name = template.name
    services.template_delete(
        actor=Actor.from_request(request), organization=_organization(request), template=template
    )
    shipped = " The platform's default of that name applies again." if file_defaults.default_get(name) else ""
    messages.success(request, f"The prompt template {name} and its history were deleted.{shipped}")
    return HttpResponseRedirect("/prompts/")
