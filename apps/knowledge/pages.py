"""The knowledge page on the organization's host: its sources (kind, status with progress
while indexing, chunk counts, last commit, error), a search box whose results show a
snippet, the score and where each comes from (source, path:lines, commit or run), and,
for those who may manage knowledge, adding a workspace's repository, uploading a
document, indexing a repository again and deleting a source (after a confirmation).

Thin: each view names its action (@require_action) and calls one service; a service's
refusal is shown on the page, on the field it names, with its HTTP status. While a
source is pending or indexing, the sources table refreshes itself (htmx polls
/knowledge/sources/, a fragment)."""

from typing import Any

from django.contrib import messages
from django.db.models import Count, Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_POST

from apps.billing.features import feature_required
from apps.core.errors import ServiceError
from apps.knowledge import documents, ingest, services
from apps.knowledge.forms import DocumentForm, RepositoryForm, SearchForm
from apps.knowledge.models import KnowledgeSource
from apps.tenancy.audit import Actor
from apps.tenancy.decorators import require_action
from apps.tenancy.models import Membership, Organization
from apps.tenancy.roles import role_allows
from apps.workspaces.models import Workspace

SNIPPET_CHARS = 600
IN_PROGRESS = (KnowledgeSource.Status.PENDING, KnowledgeSource.Status.INDEXING)


def _organization(request: HttpRequest) -> Organization:
    organization: Organization = request.tenant  # type: ignore[attr-defined]
    return organization


def _may_manage(request: HttpRequest) -> bool:
    membership: Membership = request.membership  # type: ignore[attr-defined]
    return role_allows(membership.role, "knowledge.manage")


def _sources() -> QuerySet[KnowledgeSource]:
    return (
        KnowledgeSource.objects.select_related("workspace")
        .annotate(versions=Count("chunks", filter=Q(chunks__superseded_at__isnull=False)))
        .order_by("-created_at", "-id")
    )


def _source_or_404(source_id: int) -> KnowledgeSource:
    source = KnowledgeSource.objects.filter(pk=source_id).first()
    if source is None:
        raise Http404("No such knowledge source.")
    return source


def _sources_context(request: HttpRequest) -> dict[str, Any]:
    sources = list(_sources())
    return {
        "sources": sources,
        "in_progress": any(source.status in IN_PROGRESS for source in sources),
        "may_manage": _may_manage(request),
    }


def _page(
    request: HttpRequest,
    *,
    status: int = 200,
    search_form: SearchForm | None = None,
    repository_form: RepositoryForm | None = None,
    document_form: DocumentForm | None = None,
    hits: list[services.Hit] | None = None,
    search_error: str = "",
) -> HttpResponse:
    context = {
        **_sources_context(request),
        "search_form": search_form or SearchForm(),
        "repository_form": repository_form or RepositoryForm(),
        "document_form": document_form or DocumentForm(),
        "hits": hits,
        "search_error": search_error,
        "snippet_chars": SNIPPET_CHARS,
        "running_workspaces": Workspace.objects.filter(state=Workspace.State.RUNNING).exists(),
    }
    return render(request, "knowledge/page.html", context, status=status)


@require_GET
@require_action("knowledge.view")
@feature_required("knowledge")
def knowledge_page(request: HttpRequest) -> HttpResponse:
    if "q" not in request.GET:
        return _page(request)
    form = SearchForm(request.GET)
    if not form.is_valid():
        return _page(request, search_form=form, status=400)
    query = form.cleaned_data["q"]
    kind = form.cleaned_data["kind"]
    try:
        hits = services.search(
            organization=_organization(request),
            query=query,
            k=form.cleaned_data["k"] or 10,
            kinds=[kind] if kind else None,
        )
    except ServiceError as exc:
        if exc.field in form.fields:
            form.add_error(exc.field, exc.message)
            return _page(request, search_form=form, status=exc.status)
        return _page(request, search_form=form, search_error=exc.message, status=exc.status)
    return _page(request, search_form=form, hits=hits)


@require_GET
@require_action("knowledge.view")
@feature_required("knowledge")
def sources_fragment(request: HttpRequest) -> HttpResponse:
    """The sources table alone, which the page polls while something is being indexed."""
    return render(request, "knowledge/_sources.html", _sources_context(request))


@require_POST
@require_action("knowledge.manage")
@feature_required("knowledge")
def repository_add_page(request: HttpRequest) -> HttpResponse:
    form = RepositoryForm(request.POST)
    if not form.is_valid():
        return _page(request, repository_form=form, status=400)
    workspace = Workspace.objects.filter(pk=form.cleaned_data["workspace"]).first()
    if workspace is None:
        form.add_error("workspace", "No such workspace.")
        return _page(request, repository_form=form, status=404)
    try:
        source = ingest.repository_source_create(
            organization=_organization(request),
            actor=Actor.from_request(request),
            workspace=workspace,
            path=form.cleaned_data["path"],
            name=form.cleaned_data["name"],
        )
    except ServiceError as exc:
        form.add_error(_field(exc, form, {"workspace_id": "workspace"}), exc.message)
        return _page(request, repository_form=form, status=exc.status)
    messages.success(request, f"{source.name} is queued for indexing; its progress shows below.")
    return HttpResponseRedirect("/knowledge/")


def _field(exc: ServiceError, form: Any, aliases: dict[str, str]) -> str | None:
    name = aliases.get(exc.field or "", exc.field)
    return name if name in form.fields else None


@require_POST
@require_action("knowledge.manage")
@feature_required("knowledge")
def document_upload_page(request: HttpRequest) -> HttpResponse:
    form = DocumentForm(request.POST, request.FILES)
    if not form.is_valid():
        return _page(request, document_form=form, status=400)
    upload = form.cleaned_data["file"]
    try:
        documents.check_size(upload.size or 0, upload.name or "The file")
        outcome = documents.document_upload(
            organization=_organization(request),
            actor=Actor.from_request(request),
            name=upload.name or "",
            data=upload.read(),
            media_type=upload.content_type or "",
        )
    except ServiceError as exc:
        form.add_error("file", exc.message)
        return _page(request, document_form=form, status=exc.status)
    source = outcome.source
    if outcome.queued:
        messages.success(request, f"{source.name} is large; it is being indexed, its progress shows below.")
    elif outcome.result is not None and not outcome.result.changed:
        messages.info(request, f"{source.name} is unchanged; nothing to do.")
    elif outcome.created:
        messages.success(request, f"{source.name} was added: {source.chunk_count} chunks.")
    else:
        messages.success(request, f"A new version of {source.name} replaced the old one.")
    return HttpResponseRedirect("/knowledge/")


@require_POST
@require_action("knowledge.manage")
@feature_required("knowledge")
def source_reindex_page(request: HttpRequest, source_id: int) -> HttpResponse:
    source = _source_or_404(source_id)
    try:
        ingest.source_reindex(
            organization=_organization(request), actor=Actor.from_request(request), source=source
        )
    except ServiceError as exc:
        messages.error(request, exc.message)
        return HttpResponseRedirect("/knowledge/")
    messages.success(request, f"{source.name} is queued for indexing; only what changed is read again.")
    return HttpResponseRedirect("/knowledge/")


@require_POST
@require_action("knowledge.manage")
@feature_required("knowledge")
def source_delete_page(request: HttpRequest, source_id: int) -> HttpResponse:
    source = _source_or_404(source_id)
    try:
        services.source_delete(
            organization=_organization(request), source=source, actor=Actor.from_request(request)
        )
    except ServiceError as exc:
        messages.error(request, f"{source.name} was not deleted: {exc.message}")
        return HttpResponseRedirect("/knowledge/")
    messages.success(request, f"{source.name} and its chunks were deleted.")
    return HttpResponseRedirect("/knowledge/")
