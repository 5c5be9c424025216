"""REST endpoints for prompt templates (/api/v1/prompts): list and create, read,
describe and delete, versions (list, create, read), diff, roll back, render a
preview, render by name (what agents use) and the platform's file defaults.
Thin: each view names its action (apps/tenancy/roles.py) and calls one service."""

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import generics, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.errors import Invalid
from apps.core.openapi import ApiError
from apps.prompts import file_defaults, selectors, services
from apps.prompts import variables as declared_variables
from apps.prompts.models import PromptTemplate, PromptVersion
from apps.prompts.rendering import RenderedPrompt, check_body, render_body
from apps.tenancy.api import StrictSerializer
from apps.tenancy.audit import Actor
from apps.tenancy.models import Organization


def _tenant(request: Request) -> Organization:
    organization: Organization = request._request.tenant  # type: ignore[attr-defined]
    return organization


def _actor(request: Request) -> Actor:
    return Actor.from_request(request._request)


def _template(prompt_id: int) -> PromptTemplate:
    return selectors.template_get(template_id=prompt_id)


BAD_TEMPLATE = OpenApiResponse(
    ApiError,
    description="The body does not parse (`prompt_syntax_error`), uses a variable it does not declare"
    " (`prompt_variable_undeclared`), or the declarations are not valid (`invalid_variables`).",
)
RENDER_ERRORS = OpenApiResponse(
    ApiError,
    description="A variable is missing (`prompt_variable_missing`), not declared"
    " (`prompt_variable_undeclared`) or of the wrong type (`prompt_variable_type`); the template"
    " reached something undefined (`prompt_undefined`) or unsafe (`prompt_unsafe`), or a limit"
    " (`prompt_render_limit`). The message names the variable or line.",
)

VARIABLES_HELP = (
    'Declared variables: [{"name": "task", "type": "string|integer|number|boolean|list|object",'
    ' "required": true, "default": ..., "description": "..."}]. An optional variable without a'
    " default gets its type's empty value."
)


class VersionOut(serializers.ModelSerializer[PromptVersion]):
    version = serializers.IntegerField(source="number", read_only=True)
    created_by = serializers.IntegerField(source="created_by_id", read_only=True, allow_null=True)
    variables = serializers.JSONField(read_only=True)

    class Meta:
        model = PromptVersion
        fields = ["version", "body", "variables", "message", "restored_from", "created_by", "created_at"]


class TemplateOut(serializers.ModelSerializer[PromptTemplate]):
    current_version = serializers.SerializerMethodField()
    body = serializers.SerializerMethodField(help_text="The current version's body.")
    variables = serializers.SerializerMethodField(help_text="The current version's declared variables.")
    created_by = serializers.IntegerField(source="created_by_id", read_only=True, allow_null=True)

    class Meta:
        model = PromptTemplate
        fields = [
            "id",
            "name",
            "description",
            "current_version",
            "body",
            "variables",
            "created_by",
            "created_at",
            "updated_at",
        ]

    def get_current_version(self, template: PromptTemplate) -> int | None:
        return template.current_version.number if template.current_version else None

    def get_body(self, template: PromptTemplate) -> str:
        return template.current_version.body if template.current_version else ""

    def get_variables(self, template: PromptTemplate) -> list[dict[str, Any]]:
        return template.variables


class TemplateIn(StrictSerializer):
    name = serializers.CharField(max_length=100)
    description = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")
    body = serializers.CharField(trim_whitespace=False)
    variables = serializers.JSONField(required=False, default=None, help_text=VARIABLES_HELP)
    message = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")


class TemplatePatch(StrictSerializer):
    description = serializers.CharField(max_length=2000, allow_blank=True)


class VersionIn(StrictSerializer):
    body = serializers.CharField(trim_whitespace=False)
    variables = serializers.JSONField(
        required=False, default=None, help_text=VARIABLES_HELP + " Left out: the current ones are kept."
    )
    message = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")
    base_version = serializers.IntegerField(
        required=False,
        default=None,
        min_value=1,
        help_text="The version you edited; 409 (`version_conflict`) if another was saved since.",
    )


class RollbackIn(StrictSerializer):
    version = serializers.IntegerField(min_value=1, help_text="The version to restore.")
    message = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")


class RenderIn(StrictSerializer):
    variables = serializers.DictField(required=False, default=dict)
    version = serializers.IntegerField(
        required=False,
        default=None,
        min_value=1,
        help_text="A version to render; the current one if left out.",
    )
    body = serializers.CharField(
        required=False,
        default=None,
        trim_whitespace=False,
        help_text="A draft to preview instead of a saved version (with `declarations`, or the current ones).",
    )
    declarations = serializers.JSONField(required=False, default=None, help_text=VARIABLES_HELP)


class RenderByNameIn(StrictSerializer):
    name = serializers.CharField(max_length=100)
    variables = serializers.DictField(required=False, default=dict)
    version = serializers.IntegerField(required=False, default=None, min_value=1)


RenderOut = inline_serializer(
    name="PromptRendered",
    fields={
        "text": serializers.CharField(),
        "name": serializers.CharField(),
        "version": serializers.IntegerField(
            allow_null=True, help_text="null: a draft, or the platform default."
        ),
        "source": serializers.ChoiceField(choices=["organization", "default", "draft"]),
    },
)


def _rendered(rendered: RenderedPrompt) -> dict[str, Any]:
    return {
        "text": rendered.text,
        "name": rendered.name,
        "version": rendered.version,
        "source": rendered.source,
    }


class DiffOut(serializers.Serializer[Any]):
    template = serializers.CharField()
    from_version = serializers.IntegerField()
    to_version = serializers.IntegerField()
    diff = serializers.CharField(help_text="Unified diff of the bodies; empty when they are equal.")
    identical = serializers.BooleanField()
    variables = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        help_text="Names of the declared variables added, removed and changed.",
    )


class DefaultOut(serializers.Serializer[Any]):
    name = serializers.CharField()
    description = serializers.CharField()
    body = serializers.CharField()
    variables = serializers.JSONField()
    overridden = serializers.BooleanField(help_text="The organization has its own template of this name.")


class PromptList(generics.ListAPIView[PromptTemplate]):
    actions = {"GET": "prompts.view", "POST": "prompts.manage"}
    serializer_class = TemplateOut

    def get_queryset(self) -> QuerySet[PromptTemplate]:
        return selectors.templates_list().order_by("-created_at", "-id")

    @extend_schema(
        request=TemplateIn,
        responses={201: TemplateOut, 400: BAD_TEMPLATE},
        operation_id="prompt_create",
    )
    def post(self, request: Request) -> Response:
        data = TemplateIn(data=request.data)
        data.is_valid(raise_exception=True)
        template = services.template_create(
            actor=_actor(request), organization=_tenant(request), **data.validated_data
        )
        return Response(TemplateOut(selectors.template_get(template_id=template.pk)).data, status=201)


class PromptDetail(APIView):
    actions = {"GET": "prompts.view", "PATCH": "prompts.manage", "DELETE": "prompts.manage"}

    @extend_schema(responses=TemplateOut, operation_id="prompt_read")
    def get(self, request: Request, prompt_id: int) -> Response:
        return Response(TemplateOut(_template(prompt_id)).data)

    @extend_schema(request=TemplatePatch, responses=TemplateOut, operation_id="prompt_update")
    def patch(self, request: Request, prompt_id: int) -> Response:
        template = _template(prompt_id)
        data = TemplatePatch(data=request.data)
        data.is_valid(raise_exception=True)
        template = services.template_update(
            actor=_actor(request), organization=_tenant(request), template=template, **data.validated_data
        )
        return Response(TemplateOut(template).data)

    @extend_schema(responses={204: None}, operation_id="prompt_delete")
    def delete(self, request: Request, prompt_id: int) -> Response:
        services.template_delete(
            actor=_actor(request), organization=_tenant(request), template=_template(prompt_id)
        )
        return Response(status=204)


class PromptVersions(generics.ListAPIView[PromptVersion]):
    actions = {"GET": "prompts.view", "POST": "prompts.manage"}
    serializer_class = VersionOut

    def get_queryset(self) -> QuerySet[PromptVersion]:
        if getattr(self, "swagger_fake_view", False):  # the schema generator, with no URL
            return PromptVersion.objects.none()
        return selectors.versions_list(template=_template(self.kwargs["prompt_id"]))

    @extend_schema(
        request=VersionIn,
        responses={
            201: VersionOut,
            400: BAD_TEMPLATE,
            409: OpenApiResponse(ApiError, description="Another version was saved since `base_version`."),
        },
        operation_id="prompt_version_create",
    )
    def post(self, request: Request, prompt_id: int) -> Response:
        template = _template(prompt_id)
        data = VersionIn(data=request.data)
        data.is_valid(raise_exception=True)
        version = services.version_create(
            actor=_actor(request), organization=_tenant(request), template=template, **data.validated_data
        )
        return Response(VersionOut(version).data, status=201)


class PromptVersionDetail(APIView):
    actions = {"GET": "prompts.view"}

    @extend_schema(responses=VersionOut, operation_id="prompt_version_read")
    def get(self, request: Request, prompt_id: int, prompt_version: int) -> Response:
        version = selectors.version_get(template=_template(prompt_id), number=prompt_version)
        return Response(VersionOut(version).data)


class DiffQuery(StrictSerializer):
    from_version = serializers.IntegerField(min_value=1, required=False)
    to_version = serializers.IntegerField(min_value=1, required=False)
    lines = serializers.IntegerField(min_value=0, max_value=1000, default=3)


def diff_numbers(template: PromptTemplate, query: dict[str, Any]) -> tuple[int, int]:
    """Defaults: the current version against the one before it."""
    current = template.current_version.number if template.current_version else 1
    to_number = query.get("to_version") or current
    from_number = query.get("from_version") or max(1, to_number - 1)
    return from_number, to_number


class PromptDiff(APIView):
    actions = {"GET": "prompts.view"}

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "from_version", OpenApiTypes.INT, description="Default: the one before `to_version`."
            ),
            OpenApiParameter("to_version", OpenApiTypes.INT, description="Default: the current version."),
            OpenApiParameter("lines", OpenApiTypes.INT, description="Lines of context (default 3)."),
        ],
        responses=DiffOut,
        operation_id="prompt_diff",
    )
    def get(self, request: Request, prompt_id: int) -> Response:
        template = _template(prompt_id)
        query = DiffQuery(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        from_number, to_number = diff_numbers(template, query.validated_data)
        diff = selectors.versions_diff(
            template=template,
            from_number=from_number,
            to_number=to_number,
            context=query.validated_data["lines"],
        )
        body = {**diff, "from_version": diff.pop("from"), "to_version": diff.pop("to")}
        return Response(DiffOut(body).data)


class PromptRollback(APIView):
    actions = {"POST": "prompts.manage"}

    @extend_schema(
        request=RollbackIn,
        responses={
            201: OpenApiResponse(
                VersionOut, description="The new current version, equal to the one restored."
            ),
            409: OpenApiResponse(
                ApiError, description="The current version is already equal to it (`no_change`)."
            ),
        },
        operation_id="prompt_rollback",
    )
    def post(self, request: Request, prompt_id: int) -> Response:
        template = _template(prompt_id)
        data = RollbackIn(data=request.data)
        data.is_valid(raise_exception=True)
        version = services.template_rollback(
            actor=_actor(request),
            organization=_tenant(request),
            template=template,
            number=data.validated_data["version"],
            message=data.validated_data["message"],
        )
        return Response(VersionOut(version).data, status=201)


class PromptRender(APIView):
    """A preview: renders a saved version or a draft body; nothing is stored."""

    actions = {"POST": "prompts.view"}

    @extend_schema(
        request=RenderIn, responses={200: RenderOut, 400: RENDER_ERRORS}, operation_id="prompt_render"
    )
    def post(self, request: Request, prompt_id: int) -> Response:
        template = _template(prompt_id)
        data = RenderIn(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data["variables"]
        body = data.validated_data["body"]
        if body is not None:
            if data.validated_data["version"] is not None:
                raise Invalid("Give a draft body or a version to render, not both.", field="version")
            raw = data.validated_data["declarations"]
            declarations = declared_variables.normalize(raw) if raw is not None else template.variables
            check_body(body, declarations, template=f"{template.name} (draft)")
            text = render_body(body, declarations, values, template=f"{template.name} (draft)")
            return Response({"text": text, "name": template.name, "version": None, "source": "draft"})
        if data.validated_data["declarations"] is not None:
            raise Invalid("Give declarations only with a draft body.", field="declarations")
        rendered = services.template_render(template.name, data.validated_data["version"], values)
        return Response(_rendered(rendered))


class PromptRenderByName(APIView):
    """What a consumer (an agent) gets: the organization's template of that name, or the
    platform's default when it has none."""

    actions = {"POST": "prompts.view"}

    @extend_schema(
        request=RenderByNameIn,
        responses={200: RenderOut, 400: RENDER_ERRORS},
        operation_id="prompt_render_by_name",
    )
    def post(self, request: Request) -> Response:
        data = RenderByNameIn(data=request.data)
        data.is_valid(raise_exception=True)
        rendered = services.template_render(
            data.validated_data["name"], data.validated_data["version"], data.validated_data["variables"]
        )
        return Response(_rendered(rendered))


class PromptDefaults(APIView):
    actions = {"GET": "prompts.view"}

    @extend_schema(responses=DefaultOut(many=True), operation_id="prompt_defaults")
    def get(self, request: Request) -> Response:
        own = set(selectors.templates_list().values_list("name", flat=True))
        body = [
            {
                "name": default.name,
                "description": default.description,
                "body": default.body,
                "variables": default.variables,
                "overridden": default.name in own,
            }
            for default in file_defaults.defaults()
        ]
        return Response(DefaultOut(body, many=True).data)
