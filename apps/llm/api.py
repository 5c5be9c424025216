"""Managing the LLM gateway for an organization, under /api/v1/llm/: which models it
may call (turn catalog models on and off), its own provider credentials (set and
delete; the key is never shown back, only its last characters), and its usage by
day, model and person. Thin: each view names its action and calls
apps/llm/services.py or apps/llm/selectors.py, which filter by the organization.

The routes carry no URL parameters (the model or provider is in the body or the
query): catalog names are the same in every organization, so a path naming one
would not say whose it is."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.errors import Invalid
from apps.llm import selectors, services
from apps.tenancy.api import StrictSerializer
from apps.tenancy.audit import Actor
from apps.tenancy.models import Organization


def _tenant(request: Request) -> Organization:
    organization: Organization = request._request.tenant  # type: ignore[attr-defined]
    return organization


def _actor(request: Request) -> Actor:
    return Actor.from_request(request._request)


# Models -------------------------------------------------------------------------------------------


class CapabilitiesOut(serializers.Serializer[Any]):
    tools = serializers.BooleanField(help_text="Native tool calls (others get them emulated).")
    vision = serializers.BooleanField()
    json = serializers.BooleanField()
    embeddings = serializers.BooleanField(help_text="An embedding model (POST /v1/embeddings).")


class PricesOut(serializers.Serializer[Any]):
    input_per_million = serializers.FloatField(help_text="US dollars per million input tokens.")
    output_per_million = serializers.FloatField()
    cached_input_per_million = serializers.FloatField()


class ModelOut(serializers.Serializer[Any]):
    name = serializers.CharField(help_text="The name to call it by (`model` in /v1/chat/completions).")
    provider = serializers.CharField()
    description = serializers.CharField(allow_blank=True)
    context_window = serializers.IntegerField()
    max_output_tokens = serializers.IntegerField()
    capabilities = CapabilitiesOut()
    prices = PricesOut()
    tier = serializers.CharField()
    fallbacks = serializers.ListField(child=serializers.CharField())
    enabled = serializers.BooleanField(help_text="Whether this organization may call it.")
    key_source = serializers.ChoiceField(
        choices=["organization", "platform", "none", "missing"],
        help_text="Whose key a call uses: the organization's own, the platform's default, none needed"
        " (the local model), or missing (calls answer 403 `missing_credentials`).",
    )


class ModelsPatchIn(StrictSerializer):
    models = serializers.DictField(
        child=serializers.BooleanField(),
        allow_empty=False,
        help_text='Model name -> enabled, e.g. {"gpt-4o": false, "claude-3-5-haiku": true}.',
    )


class ModelList(APIView):
    actions = {"GET": "llm.view", "PATCH": "llm.manage"}

    @extend_schema(responses=ModelOut(many=True), operation_id="llm_models_list")
    def get(self, request: Request) -> Response:
        return Response(
            ModelOut(selectors.organization_models(organization=_tenant(request)), many=True).data
        )

    @extend_schema(
        request=ModelsPatchIn,
        responses={200: OpenApiResponse(ModelOut(many=True), description="Every model, after the change.")},
        operation_id="llm_models_switch",
    )
    def patch(self, request: Request) -> Response:
        data = ModelsPatchIn(data=request.data)
        data.is_valid(raise_exception=True)
        organization = _tenant(request)
        known = selectors.catalog_models(fresh=True)
        unknown = sorted(name for name in data.validated_data["models"] if name not in known)
        if unknown:
            raise Invalid(f"Not in the catalog: {', '.join(unknown)}.", field="models")
        for name, enabled in data.validated_data["models"].items():
            services.model_access_set(
                organization=organization, model_name=name, enabled=enabled, actor=_actor(request)
            )
        return Response(ModelOut(selectors.organization_models(organization=organization), many=True).data)


# Credentials --------------------------------------------------------------------------------------


class CredentialOut(serializers.Serializer[Any]):
    provider = serializers.CharField()
    key_source = serializers.ChoiceField(
        choices=["organization", "platform", "none", "missing"],
        help_text="What calls use now: the organization's own key, the platform default, none needed,"
        " or nothing (missing).",
    )
    api_key_hint = serializers.CharField(
        allow_blank=True, help_text="The last characters of the organization's own key; never the key."
    )
    base_url = serializers.CharField(allow_blank=True, help_text="The organization's own base URL, if any.")
    options = serializers.DictField(
        help_text="openai_compatible only: the server preset and overrides set with the key."
    )
    updated_at = serializers.DateTimeField(allow_null=True)


class CredentialIn(StrictSerializer):
    provider = serializers.CharField(max_length=50)
    api_key = serializers.CharField(
        max_length=1000, allow_blank=True, default="", trim_whitespace=True, write_only=True
    )
    base_url = serializers.CharField(max_length=500, allow_blank=True, default="")
    options = serializers.DictField(
        required=False,
        default=dict,
        help_text="openai_compatible only: how the server differs from OpenAI's API."
        ' `server`: "vllm", "tgi", "llamacpp", "ollama", "tabbyapi" or "generic" (a preset of the'
        ' rest); `tools`: "native" or "emulated"; `json`: "json_schema", "json_object", "tgi" or'
        ' "prompt"; `stream_usage` and `embeddings`: true or false.',
    )


class CredentialDeleteQuery(StrictSerializer):
    provider = serializers.CharField(max_length=50)


class CredentialList(APIView):
    actions = {"GET": "llm.usage", "POST": "llm.manage", "DELETE": "llm.manage"}

    @extend_schema(responses=CredentialOut(many=True), operation_id="llm_credentials_list")
    def get(self, request: Request) -> Response:
        return Response(
            CredentialOut(selectors.organization_credentials(organization=_tenant(request)), many=True).data
        )

    @extend_schema(
        request=CredentialIn,
        responses={
            200: OpenApiResponse(
                CredentialOut(many=True),
                description="Set (replacing an earlier key); every provider's state after the change.",
            )
        },
        operation_id="llm_credential_set",
    )
    def post(self, request: Request) -> Response:
        data = CredentialIn(data=request.data)
        data.is_valid(raise_exception=True)
        organization = _tenant(request)
        services.credential_set(organization=organization, actor=_actor(request), **data.validated_data)
        return Response(
            CredentialOut(selectors.organization_credentials(organization=organization), many=True).data
        )

    @extend_schema(
        parameters=[OpenApiParameter("provider", OpenApiTypes.STR, required=True)],
        responses={
            200: OpenApiResponse(
                CredentialOut(many=True),
                description="Deleted: calls fall back to the platform's default key, if any.",
            )
        },
        operation_id="llm_credential_delete",
    )
    def delete(self, request: Request) -> Response:
        query = CredentialDeleteQuery(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        organization = _tenant(request)
        services.credential_delete(
            organization=organization, provider=query.validated_data["provider"], actor=_actor(request)
        )
        return Response(
            CredentialOut(selectors.organization_credentials(organization=organization), many=True).data
        )


# Usage --------------------------------------------------------------------------------------------


class UsageQuery(StrictSerializer):
    days = serializers.IntegerField(min_value=1, max_value=400, default=30)


class UsageTotals(serializers.Serializer[Any]):
    requests = serializers.IntegerField()
    cache_hits = serializers.IntegerField()
    failures = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cached_tokens = serializers.IntegerField()
    cost_usd = serializers.DecimalField(max_digits=20, decimal_places=8, help_text="US dollars.")


class UsageByDay(UsageTotals):
    day = serializers.DateField()


class UsageByModel(UsageTotals):
    model = serializers.CharField()


class UsageByUser(UsageTotals):
    user_id = serializers.IntegerField(allow_null=True, help_text="null: calls made with an API key.")
    email = serializers.CharField(allow_blank=True)
    api_key_id = serializers.IntegerField(allow_null=True)


class UsageRow(UsageTotals):
    day = serializers.DateField()
    model = serializers.CharField()
    user_id = serializers.IntegerField(allow_null=True)
    api_key_id = serializers.IntegerField(allow_null=True)


class UsageOut(serializers.Serializer[Any]):
    days = serializers.IntegerField()
    total = UsageTotals()
    by_day = UsageByDay(many=True)
    by_model = UsageByModel(many=True)
    by_user = UsageByUser(many=True)
    rows = UsageRow(many=True, help_text="Per day, model, person and API key.")


class UsageView(APIView):
    actions = {"GET": "llm.usage"}

    @extend_schema(
        parameters=[UsageQuery],
        responses=UsageOut,
        operation_id="llm_usage",
        description="Calls, tokens and cost over the last `days` days (UTC), by day, model and person"
        " (or API key). Failed calls are counted, never billed.",
    )
    def get(self, request: Request) -> Response:
        query = UsageQuery(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        summary = selectors.usage_summary(organization=_tenant(request), days=query.validated_data["days"])
        return Response(UsageOut(summary).data)
