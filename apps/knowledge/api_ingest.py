"""REST endpoints that add knowledge (/api/v1/knowledge/sources): index a workspace's
repository (JSON, queued: 202), upload a document (multipart/form-data: stored at once,
201, or queued when large, 202), and index a repository again
(/api/v1/knowledge/sources/<id>/reindex, 202). Builders only (knowledge.manage).
Thin: each view calls one service in apps/knowledge/ingest.py or documents.py."""

from django.core.files.uploadedfile import UploadedFile
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.billing.features import feature_required
from apps.core.errors import Invalid, NotFound
from apps.core.openapi import ApiError
from apps.knowledge import api, documents, ingest, selectors
from apps.knowledge.models import KnowledgeSource
from apps.tenancy.api import StrictSerializer
from apps.workspaces.models import Workspace

MAX_ID = 2**63 - 1


class RepositoryIn(StrictSerializer):
    kind = serializers.ChoiceField(
        choices=["repository"], help_text="repository (JSON); a document is uploaded as multipart/form-data."
    )
    workspace_id = serializers.IntegerField(
        min_value=1, max_value=MAX_ID, help_text="A running workspace of this organization."
    )
    path = serializers.CharField(
        max_length=500,
        required=False,
        allow_blank=True,
        default="",
        help_text="The repository's folder in the workspace; empty: its top folder (/workspace).",
    )
    name = serializers.CharField(
        max_length=200,
        required=False,
        allow_blank=True,
        default="",
        help_text="Default: the workspace's name.",
    )


class DocumentIn(StrictSerializer):
    kind = serializers.ChoiceField(choices=["document"], required=False, default="document")
    file = serializers.FileField(
        allow_empty_file=True,
        help_text=f"{documents.SUPPORTED}; at most KNOWLEDGE_MAX_UPLOAD_BYTES (10 MB by default)."
        " Its name is the document's: uploading the same name again replaces it.",
    )


CREATE_ERRORS = {
    400: OpenApiResponse(
        ApiError,
        description="A field is not valid: `unsupported_type`, `too_large` (the message names the limit),"
        " `empty`, `undecodable` (not UTF-8, not a PDF) on `file`; a bad `path` or `kind`.",
    ),
    404: OpenApiResponse(ApiError, description="No such workspace in this organization."),
    409: OpenApiResponse(
        ApiError,
        description="The workspace is not running (`workspace_not_running`), or its repository is"
        " already a source (`source_exists`: index it again instead).",
    ),
}


class SourceCollection(api.SourceList):
    """GET lists the sources (apps/knowledge/api.py); POST adds one."""

    actions = {"GET": "knowledge.view", "POST": "knowledge.manage"}
    parser_classes = [JSONParser, MultiPartParser]

    @extend_schema(
        request={"application/json": RepositoryIn, "multipart/form-data": DocumentIn},
        responses={
            201: OpenApiResponse(api.SourceOut, description="A document, stored and searchable now."),
            202: OpenApiResponse(
                api.SourceOut,
                description="A repository (or a large document), queued: its status goes pending ->"
                " indexing -> ready or failed, with progress_done of progress_total.",
            ),
            **CREATE_ERRORS,
        },
        operation_id="knowledge_source_create",
        description="Index a workspace's git repository (JSON: kind=repository, workspace_id, path), or"
        " upload a document (multipart/form-data: file). A repository's committed HEAD is indexed;"
        " index it again after new commits (only what changed is read).",
        examples=[
            OpenApiExample(
                "A repository",
                value={"kind": "repository", "workspace_id": 3, "path": ""},
                request_only=True,
                media_type="application/json",
            )
        ],
    )
    def post(self, request: Request) -> Response:
        organization, actor = api._tenant(request), api._actor(request)
        if request.content_type.startswith("multipart/"):
            document = DocumentIn(data=request.data)
            document.is_valid(raise_exception=True)
            upload: UploadedFile = document.validated_data["file"]
            documents.check_size(upload.size or 0, upload.name or "The file")
            outcome = documents.document_upload(
                organization=organization,
                actor=actor,
                name=upload.name or "",
                data=upload.read(),
                media_type=upload.content_type or "",
            )
            return Response(api.SourceOut(outcome.source).data, status=202 if outcome.queued else 201)
        if isinstance(request.data, dict) and request.data.get("kind") == "document":
            raise Invalid(
                "Upload a document as multipart/form-data with its file in the `file` field.", field="kind"
            )
        data = RepositoryIn(data=request.data)
        data.is_valid(raise_exception=True)
        workspace = Workspace.objects.filter(pk=data.validated_data["workspace_id"]).first()
        if workspace is None:
            raise NotFound("No such workspace in this organization.")
        source = ingest.repository_source_create(
            organization=organization,
            actor=actor,
            workspace=workspace,
            path=data.validated_data["path"],
            name=data.validated_data["name"],
        )
        return Response(api.SourceOut(source).data, status=202)


@feature_required("knowledge")
class SourceReindex(APIView):
    actions = {"POST": "knowledge.manage"}

    @extend_schema(
        request=None,
        responses={
            202: OpenApiResponse(api.SourceOut, description="Queued: what changed since its last commit."),
            409: OpenApiResponse(
                ApiError,
                description="Not a repository (`not_reindexable`: upload a document again instead), or its"
                " workspace is not running (`workspace_not_running`) or gone (`workspace_missing`).",
            ),
        },
        operation_id="knowledge_source_reindex",
        description="Bring a repository source up to date with its HEAD, in the background.",
    )
    def post(self, request: Request, source_id: int) -> Response:
        source: KnowledgeSource = selectors.source_get(source_id=source_id)
        source = ingest.source_reindex(
            organization=api._tenant(request), actor=api._actor(request), source=source
        )
        return Response(api.SourceOut(source).data, status=202)
