"""REST endpoints for knowledge (/api/v1/knowledge/): search, sources (list, read,
delete) and the retention policy. Thin: each view names its action
(apps/tenancy/roles.py) and calls one service or selector. The index unreachable is a
503 (`knowledge_index_unavailable`) whose message says why."""

from typing import Any

from django.db.models import QuerySet
from django_filters import rest_framework as filters
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.billing.features import feature_required
from apps.core.openapi import ApiError
from apps.knowledge import selectors, services
from apps.knowledge.models import KnowledgePolicy, KnowledgeSource
from apps.tenancy.api import StrictSerializer
from apps.tenancy.audit import Actor
from apps.tenancy.models import Organization


def _tenant(request: Request) -> Organization:
    organization: Organization = request._request.tenant  # type: ignore[attr-defined]
    return organization


def _actor(request: Request) -> Actor:
    return Actor.from_request(request._request)


UNAVAILABLE = OpenApiResponse(
    ApiError,
    description="The knowledge index (Chroma) is not reachable (`knowledge_index_unavailable`);"
    " the message says why. Nothing was changed.",
)
KIND_HELP = "repository, document, experience or note."


# Search -------------------------------------------------------------------------------------------


class SearchQuery(StrictSerializer):
    q = serializers.CharField(
        max_length=services.MAX_QUERY_CHARS, allow_blank=True, help_text="What to look for; not empty."
    )
    k = serializers.IntegerField(min_value=1, max_value=services.MAX_K, default=10)
    kind = serializers.ChoiceField(choices=KnowledgeSource.Kind.choices, required=False)
    source_id = serializers.IntegerField(min_value=1, max_value=2**63 - 1, required=False)


class HitOut(serializers.Serializer[Any]):
    chunk_id = serializers.IntegerField()
    source_id = serializers.IntegerField()
    source_name = serializers.CharField()
    kind = serializers.CharField(help_text=KIND_HELP)
    path = serializers.CharField()
    title = serializers.CharField()
    start_line = serializers.IntegerField(allow_null=True)
    end_line = serializers.IntegerField(allow_null=True)
    location = serializers.CharField(help_text="path:start-end, as an agent cites it.")
    commit = serializers.CharField()
    run_id = serializers.CharField(help_text="The run an experience comes from; empty otherwise.")
    version = serializers.IntegerField()
    text = serializers.CharField()
    similarity = serializers.FloatField(help_text="Cosine similarity to the query, -1 to 1.")
    score = serializers.FloatField(help_text="similarity x recency x usage: what results are ordered by.")
    created_at = serializers.DateTimeField()


class SearchOut(serializers.Serializer[Any]):
    query = serializers.CharField()
    results = HitOut(many=True)


@feature_required("knowledge")
class KnowledgeSearch(APIView):
    actions = {"GET": "knowledge.view"}

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "q", OpenApiTypes.STR, required=True, description="What to look for; not empty."
            ),
            OpenApiParameter(
                "k", OpenApiTypes.INT, description=f"How many results, 1 to {services.MAX_K} (10)."
            ),
            OpenApiParameter(
                "kind",
                OpenApiTypes.STR,
                enum=KnowledgeSource.Kind.values,
                description="Only this kind of source.",
            ),
            OpenApiParameter("source_id", OpenApiTypes.INT, description="Only this source."),
        ],
        responses={
            200: SearchOut,
            400: OpenApiResponse(ApiError, description="An empty query (`empty_query`) or a bad parameter."),
            503: UNAVAILABLE,
        },
        operation_id="knowledge_search",
    )
    def get(self, request: Request) -> Response:
        query = SearchQuery(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        data = query.validated_data
        hits = services.search(
            organization=_tenant(request),
            query=data["q"],
            k=data["k"],
            kinds=[data["kind"]] if data.get("kind") else None,
            source_ids=[data["source_id"]] if data.get("source_id") else None,
        )
        results = [{**hit.__dict__, "location": hit.location} for hit in hits]
        return Response(SearchOut({"query": data["q"].strip(), "results": results}).data)


# Sources ------------------------------------------------------------------------------------------


class SourceOut(serializers.ModelSerializer[KnowledgeSource]):
    workspace = serializers.IntegerField(source="workspace_id", read_only=True, allow_null=True)
    created_by = serializers.IntegerField(source="created_by_id", read_only=True, allow_null=True)

    class Meta:
        model = KnowledgeSource
        fields = [
            "id",
            "kind",
            "name",
            "workspace",
            "uri",
            "media_type",
            "run_id",
            "status",
            "progress_done",
            "progress_total",
            "error",
            "chunk_count",
            "last_commit",
            "indexed_at",
            "created_by",
            "created_at",
            "updated_at",
        ]


class SourceFilter(filters.FilterSet):
    kind = filters.ChoiceFilter(choices=KnowledgeSource.Kind.choices)
    status = filters.ChoiceFilter(choices=KnowledgeSource.Status.choices)

    class Meta:
        model = KnowledgeSource
        fields = ["kind", "status"]


@feature_required("knowledge")
class SourceList(generics.ListAPIView[KnowledgeSource]):
    actions = {"GET": "knowledge.view"}
    serializer_class = SourceOut
    filterset_class = SourceFilter

    def get_queryset(self) -> QuerySet[KnowledgeSource]:
        return selectors.sources_list()

    @extend_schema(operation_id="knowledge_sources_list")
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


@feature_required("knowledge")
class SourceDetail(APIView):
    actions = {"GET": "knowledge.view", "DELETE": "knowledge.manage"}

    @extend_schema(responses=SourceOut, operation_id="knowledge_source_read")
    def get(self, request: Request, source_id: int) -> Response:
        return Response(SourceOut(selectors.source_get(source_id=source_id)).data)

    @extend_schema(
        responses={204: None, 503: UNAVAILABLE},
        operation_id="knowledge_source_delete",
        description="The source and all its chunks (every version) gone from the index and the database.",
    )
    def delete(self, request: Request, source_id: int) -> Response:
        source = selectors.source_get(source_id=source_id)
        services.source_delete(organization=_tenant(request), source=source, actor=_actor(request))
        return Response(status=204)


# Retention policy ---------------------------------------------------------------------------------


class KindRules(StrictSerializer):
    max_items = serializers.IntegerField(
        min_value=0, max_value=10_000_000, required=False, help_text="Current chunks of this kind at most."
    )
    max_age_days = serializers.IntegerField(
        min_value=0,
        max_value=36_500,
        required=False,
        help_text="Removed after this many days unused; 0: never.",
    )


class PolicyIn(StrictSerializer):
    max_items = serializers.IntegerField(
        min_value=1, max_value=10_000_000, help_text="Current chunks at most, all kinds together."
    )
    max_age_days = serializers.IntegerField(
        min_value=0,
        max_value=36_500,
        help_text="Removed after this many days unused (not retrieved); 0: never.",
    )
    keep_versions = serializers.IntegerField(
        min_value=0, max_value=1000, help_text="Superseded versions kept per path, for the history."
    )
    per_kind = serializers.DictField(
        child=KindRules(),
        required=False,
        default=dict,
        help_text='Rules per kind of source, over the general ones: {"experience": {"max_age_days": 90}}.',
    )

    embedding_model = serializers.CharField(
        max_length=100,
        required=False,
        allow_blank=True,
        trim_whitespace=True,
        help_text="The model that embeds the organization's knowledge: empty for the local model"
        " (all-MiniLM-L6-v2, offline), or an embedding model of the LLM catalog the organization"
        " may use (e.g. text-embedding-3-small; billed and budgeted as gateway calls). Left out:"
        " unchanged. A change re-indexes everything in the background; searches use the previous"
        " model until that is done.",
    )

    def validate_per_kind(self, value: dict[str, Any]) -> dict[str, Any]:
        return services.clean_per_kind(value)


class PolicyOut(serializers.ModelSerializer[KnowledgePolicy]):
    per_kind = serializers.DictField(child=KindRules())
    embedding_model = serializers.CharField(help_text="The chosen embedding model; empty: the local one.")
    search_embedding_model = serializers.CharField(
        help_text="The model whose index searches read: the chosen one, or the previous one while"
        " re-indexing."
    )
    reindexing = serializers.BooleanField(
        help_text="True while the knowledge is embedded again with a newly chosen model."
    )
    updated_at = serializers.DateTimeField(allow_null=True)

    class Meta:
        model = KnowledgePolicy
        fields = [
            "max_items",
            "max_age_days",
            "keep_versions",
            "per_kind",
            "embedding_model",
            "search_embedding_model",
            "reindexing",
            "updated_at",
        ]


@feature_required("knowledge")
class PolicyView(APIView):
    actions = {"GET": "knowledge.view", "PUT": "knowledge.manage"}

    @extend_schema(responses=PolicyOut, operation_id="knowledge_policy_read")
    def get(self, request: Request) -> Response:
        return Response(PolicyOut(selectors.policy_get()).data)

    @extend_schema(
        request=PolicyIn,
        responses={
            200: PolicyOut,
            400: OpenApiResponse(
                ApiError,
                description="A bad value, on its field; an embedding model that is unknown, disabled"
                " for the organization or without credentials (`unknown_model`, `model_disabled`,"
                " `missing_credentials` on `embedding_model`).",
            ),
        },
        operation_id="knowledge_policy_update",
    )
    def put(self, request: Request) -> Response:
        data = PolicyIn(data=request.data)
        data.is_valid(raise_exception=True)
        policy = services.policy_update(
            organization=_tenant(request), actor=_actor(request), **data.validated_data
        )
        return Response(PolicyOut(policy).data)
