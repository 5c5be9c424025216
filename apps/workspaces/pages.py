"""Workspace pages on the organization's host: the list, the create form, a
workspace's page (state, actions, file tree, terminal), the file editor, and the
organization's secrets (names and times only; values go in, never out).
Thin: each view names its action (@require_action) and calls one service; a
service's refusal is shown on the page with its HTTP status."""

from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.billing.features import feature_refusal
from apps.core.errors import ServiceError
from apps.tenancy.audit import Actor
from apps.tenancy.decorators import require_action
from apps.tenancy.models import Membership, Organization
from apps.tenancy.roles import role_allows
from apps.workspaces import selectors, services
from apps.workspaces.crypto import decrypt_env
from apps.workspaces.forms import FileForm, SecretForm, WorkspaceForm
from apps.workspaces.models import Secret, Workspace
from apps.workspaces.validation import templates


def _organization(request: HttpRequest) -> Organization:
    organization: Organization = request.tenant  # type: ignore[attr-defined]
    return organization


def _membership(request: HttpRequest) -> Membership:
    membership: Membership = request.membership  # type: ignore[attr-defined]
    return membership


def _may(request: HttpRequest) -> dict[str, bool]:
    role = _membership(request).role
    keys = ("workspaces.create", "workspaces.operate", "workspaces.destroy", "secrets.view", "secrets.manage")
    return {key.replace(".", "_"): role_allows(role, key) for key in keys}


def _workspace_or_404(workspace_id: int) -> Workspace:
    try:
        return selectors.workspace_get(workspace_id=workspace_id)
    except ServiceError:
        raise Http404("No such workspace.") from None


@require_GET
@require_action("workspaces.view")
def workspaces_page(request: HttpRequest) -> HttpResponse:
    context = {"workspaces": selectors.workspaces_list(), "may": _may(request), "templates": templates()}
    return render(request, "workspaces/list.html", context)


@require_http_methods(["GET", "POST"])
@require_action("workspaces.create")
def workspace_create_page(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return render(request, "workspaces/new.html", {"form": WorkspaceForm()})
    form = WorkspaceForm(request.POST)
    if not form.is_valid():
        return render(request, "workspaces/new.html", {"form": form}, status=400)
    try:
        workspace = services.workspace_create(
            actor=Actor.from_request(request), organization=_organization(request), **form.cleaned_data
        )
    except ServiceError as exc:
        form.add_error(exc.field if exc.field in form.fields else None, exc.message)
        return render(request, "workspaces/new.html", {"form": form}, status=exc.status)
    messages.success(request, f"Workspace {workspace.name} is {workspace.get_state_display().lower()}.")
    return HttpResponseRedirect(f"/workspaces/{workspace.pk}/")


def _detail(
    request: HttpRequest, workspace: Workspace, *, status: int = 200, error: str | None = None
) -> HttpResponse:
    may = _may(request)
    try:
        env_names = sorted(decrypt_env(workspace.env_encrypted))
    except ServiceError:
        env_names = []
    context: dict[str, Any] = {
        "workspace": workspace,
        "may": may,
        "error": error,
        "env_names": env_names,
        "can_drive": may["workspaces_operate"],
        "terminal_refusal": (
            feature_refusal(organization=_organization(request), key="terminal")
            if workspace.is_running
            else None
        ),
        "show_files": workspace.state
        in {Workspace.State.RUNNING, Workspace.State.STOPPED, Workspace.State.ARCHIVED},
    }
    return render(request, "workspaces/detail.html", context, status=status)


@require_GET
@require_action("workspaces.view")
def workspace_page(request: HttpRequest, workspace_id: int) -> HttpResponse:
    return _detail(request, _workspace_or_404(workspace_id))


def _transition(request: HttpRequest, workspace_id: int, service: Any, done: str) -> HttpResponse:
    workspace = _workspace_or_404(workspace_id)
    try:
        workspace = service(
            actor=Actor.from_request(request), organization=_organization(request), workspace=workspace
        )
    except ServiceError as exc:
        workspace.refresh_from_db()
        return _detail(request, workspace, status=exc.status, error=exc.message)
    messages.success(request, f"Workspace {workspace.name} {done}.")
    if workspace.state == Workspace.State.DELETED:
        return HttpResponseRedirect("/workspaces/")
    return HttpResponseRedirect(f"/workspaces/{workspace.pk}/")


@require_POST
@require_action("workspaces.operate")
def workspace_start_page(request: HttpRequest, workspace_id: int) -> HttpResponse:
    return _transition(request, workspace_id, services.workspace_start, "is running")


@require_POST
@require_action("workspaces.operate")
def workspace_stop_page(request: HttpRequest, workspace_id: int) -> HttpResponse:
    return _transition(request, workspace_id, services.workspace_stop, "is stopped")


@require_POST
@require_action("workspaces.destroy")
def workspace_archive_page(request: HttpRequest, workspace_id: int) -> HttpResponse:
    return _transition(request, workspace_id, services.workspace_archive, "is archived")


@require_POST
@require_action("workspaces.destroy")
def workspace_destroy_page(request: HttpRequest, workspace_id: int) -> HttpResponse:
    return _transition(request, workspace_id, services.workspace_destroy, "was destroyed")


def _file_url(workspace: Workspace, path: str) -> str:
    return f"/workspaces/{workspace.pk}/file/?{urlencode({'path': path})}"


@require_GET
@require_action("workspaces.view")
def workspace_tree_page(request: HttpRequest, workspace_id: int) -> HttpResponse:
    """One directory's entries, for the file tree (htmx loads each as it opens)."""
    workspace = _workspace_or_404(workspace_id)
    path = request.GET.get("path", "")
    context: dict[str, Any] = {"workspace": workspace, "path": path}
    try:
        content = selectors.workspace_path_read(workspace=workspace, path=path)
    except ServiceError as exc:
        context["error"] = exc.message
        return render(request, "workspaces/_tree.html", context, status=exc.status)
    if content.entries is None:
        context["error"] = "Not a directory."
        return render(request, "workspaces/_tree.html", context, status=400)
    context["entries"] = [
        {"entry": entry, "file_url": _file_url(workspace, entry.path)} for entry in content.entries
    ]
    return render(request, "workspaces/_tree.html", context)


@require_http_methods(["GET", "POST"])
@require_action("workspaces.view")
def workspace_file_page(request: HttpRequest, workspace_id: int) -> HttpResponse:
    """View a file; members who may operate a writable workspace edit and save it here."""
    workspace = _workspace_or_404(workspace_id)
    path = request.GET.get("path", "")
    may = _may(request)
    editable = may["workspaces_operate"] and workspace.state in {
        Workspace.State.RUNNING,
        Workspace.State.STOPPED,
    }
    context: dict[str, Any] = {"workspace": workspace, "path": path, "may": may, "editable": editable}
    if request.method == "POST":
        if not may["workspaces_operate"]:
            from apps.tenancy.decorators import forbidden_page

            return forbidden_page(request, "workspaces.operate")
        form = FileForm(request.POST)
        if not form.is_valid():  # pragma: no cover (one optional text field)
            return render(request, "workspaces/file.html", {**context, "form": form}, status=400)
        text = form.cleaned_data["content"].replace("\r\n", "\n")
        try:
            services.workspace_file_write(
                actor=Actor.from_request(request), workspace=workspace, path=path, data=text.encode()
            )
        except ServiceError as exc:
            return render(
                request,
                "workspaces/file.html",
                {**context, "form": form, "error": exc.message},
                status=exc.status,
            )
        messages.success(request, f"Saved {path}.")
        return HttpResponseRedirect(_file_url(workspace, path))
    try:
        content = selectors.workspace_path_read(workspace=workspace, path=path)
    except ServiceError as exc:
        return render(request, "workspaces/file.html", {**context, "error": exc.message}, status=exc.status)
    if content.data is None:
        return render(
            request, "workspaces/file.html", {**context, "error": f"{path or '/'} is not a file."}, status=400
        )
    try:
        text = content.data.decode("utf-8")
    except UnicodeDecodeError:
        context.update(binary=True, editable=False)
        text = ""
    if content.truncated:
        context["editable"] = False
    context.update(content=content, form=FileForm(initial={"content": text}), text=text)
    return render(request, "workspaces/file.html", context)


# Secrets ----------------------------------------------------------------------------------------


def _secrets_page(request: HttpRequest, *, status: int = 200, form: SecretForm | None = None) -> HttpResponse:
    context = {"secrets": selectors.secrets_list(), "form": form or SecretForm(), "may": _may(request)}
    response = render(request, "workspaces/secrets.html", context, status=status)
    response["Cache-Control"] = "no-store"  # its form takes a secret's value
    return response


@require_GET
@require_action("secrets.view")
def secrets_page(request: HttpRequest) -> HttpResponse:
    return _secrets_page(request)


@require_POST
@require_action("secrets.manage")
def secret_set_page(request: HttpRequest) -> HttpResponse:
    form = SecretForm(request.POST)
    if not form.is_valid():
        return _secrets_page(request, status=400, form=form)
    name = form.cleaned_data["name"]
    existed = Secret.objects.filter(name=name).exists()
    try:
        services.secret_set(
            actor=Actor.from_request(request),
            organization=_organization(request),
            name=name,
            value=form.cleaned_data["value"],
        )
    except ServiceError as exc:
        form.add_error(exc.field if exc.field in form.fields else None, exc.message)
        return _secrets_page(request, status=exc.status, form=form)
    messages.success(request, f"The secret {name} was {'replaced' if existed else 'saved'}.")
    return HttpResponseRedirect("/settings/secrets/")


@require_POST
@require_action("secrets.manage")
def secret_delete_page(request: HttpRequest, secret_id: int) -> HttpResponse:
    secret = Secret.objects.filter(pk=secret_id).first()
    if secret is None:
        raise Http404("No such secret.")
    try:
        services.secret_delete(
            actor=Actor.from_request(request), organization=_organization(request), name=secret.name
        )
    except ServiceError as exc:
        messages.error(request, exc.message)
        return _secrets_page(request, status=exc.status)
    messages.success(request, f"The secret {secret.name} was deleted.")
    return HttpResponseRedirect("/settings/secrets/")
