"""REST endpoints for the organization, members, invitations, API keys and audit log.

Thin: each view names its action (apps/tenancy/roles.py), validates with a
serializer, and calls one service in apps/tenancy/identity.py."""

import csv
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, StreamingHttpResponse
from django.utils.http import http_date, parse_http_date_safe, quote_etag
from django_filters import rest_framework as filters
from django_filters.fields import IsoDateTimeField
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.billing.features import feature_required
from apps.core.errors import NotFound, Stale
from apps.tenancy import identity
from apps.tenancy.audit import Actor
from apps.tenancy.hosts import public_url
from apps.tenancy.models import ApiKey, AuditEvent, Invitation, Membership, Organization
from apps.tenancy.roles import SCOPES
from apps.tenancy.selectors import member_of_organization


def _tenant(request: Request | HttpRequest) -> Organization:
    raw = request._request if isinstance(request, Request) else request
    organization: Organization = raw.tenant  # type: ignore[attr-defined]
    return organization


def _for_schema(view: Any) -> bool:
    """drf-spectacular calls get_queryset() with no tenant to learn the model."""
    return bool(getattr(view, "swagger_fake_view", False))


def _actor(request: Request) -> Actor:
    return Actor.from_request(request._request)


class StrictSerializer(serializers.Serializer[Any]):
    """Rejects fields it does not know, instead of silently ignoring a typo."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - {name for name, field in self.fields.items() if not field.read_only})
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)


def _etag(updated_at: datetime) -> str:
    return quote_etag(str(int(updated_at.timestamp() * 1_000_000)))


def _precondition(request: Request, current: datetime) -> datetime | None:
    """If-Match (an ETag we sent) or If-Unmodified-Since: the version the client edited."""
    if_match = request.headers.get("If-Match")
    if if_match and if_match.strip() != "*":
        if if_match.strip() != _etag(current):
            raise Stale("The resource changed since you read it; read it again and retry.")
        return current
    since = request.headers.get("If-Unmodified-Since")
    if since:
        parsed = parse_http_date_safe(since)
        if parsed is None:
            raise serializers.ValidationError({"If-Unmodified-Since": ["Not an HTTP date."]})
        if int(current.timestamp()) > parsed:
            raise Stale("The resource changed since you read it; read it again and retry.")
        return current
    return None


def _versioned(response: Response, updated_at: datetime) -> Response:
    response["ETag"] = _etag(updated_at)
    response["Last-Modified"] = http_date(updated_at.timestamp())
    return response


# Organization ---------------------------------------------------------------


class OrganizationOut(serializers.Serializer[Organization]):
    # Declared, not a ModelSerializer: this is the API's hottest read, and a
    # ModelSerializer introspects the model again on every instantiation.
    name = serializers.CharField(read_only=True)
    slug = serializers.SlugField(read_only=True)
    status = serializers.ChoiceField(choices=Organization.Status.choices, read_only=True)
    created_at = serializers.DateTimeField(read_only=True)
    updated_at = serializers.DateTimeField(read_only=True)


_timestamp = serializers.DateTimeField()


def organization_json(organization: Organization) -> dict[str, Any]:
    """OrganizationOut's output, built directly: a serializer deep-copies its fields
    on every instantiation, a sixth of this read's time (tests/api compare the two)."""
    return {
        "name": organization.name,
        "slug": organization.slug,
        "status": organization.status,
        "created_at": _timestamp.to_representation(organization.created_at),
        "updated_at": _timestamp.to_representation(organization.updated_at),
    }


class OrganizationIn(StrictSerializer):
    name = serializers.CharField(max_length=100)


class OrganizationView(APIView):
    actions = {"GET": "organization.view", "PATCH": "organization.update"}

    @extend_schema(responses=OrganizationOut, operation_id="organization_read")
    def get(self, request: Request) -> Response:
        organization = _tenant(request)
        return _versioned(Response(organization_json(organization)), organization.updated_at)

    @extend_schema(
        request=OrganizationIn,
        responses=OrganizationOut,
        operation_id="organization_update",
        parameters=[OpenApiParameter("If-Match", OpenApiTypes.STR, OpenApiParameter.HEADER)],
    )
    def patch(self, request: Request) -> Response:
        organization = Organization.objects.get(pk=_tenant(request).pk)
        expected = _precondition(request, organization.updated_at)
        # PATCH changes only the fields sent, as the schema's PatchedOrganizationInRequest says.
        data = OrganizationIn(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        if "name" not in data.validated_data:
            return _versioned(Response(OrganizationOut(organization).data), organization.updated_at)
        updated = identity.organization_update(
            actor=_actor(request),
            organization=organization,
            name=data.validated_data["name"],
            if_unmodified_since=expected,
        )
        return _versioned(Response(OrganizationOut(updated).data), updated.updated_at)


# Members --------------------------------------------------------------------


class MemberOut(serializers.ModelSerializer[Membership]):
    email = serializers.EmailField(source="user.email", read_only=True)
    name = serializers.CharField(source="user.name", read_only=True)

    class Meta:
        model = Membership
        fields = ["id", "email", "name", "role", "created_at", "updated_at"]


class MemberIn(StrictSerializer):
    role = serializers.ChoiceField(choices=Membership.Role.choices)


class MemberFilter(filters.FilterSet):
    role = filters.ChoiceFilter(choices=Membership.Role.choices)
    email = filters.CharFilter(field_name="user__email", lookup_expr="icontains")

    class Meta:
        model = Membership
        fields = ["role", "email"]


class MemberList(generics.ListAPIView[Membership]):
    actions = {"GET": "members.view"}
    serializer_class = MemberOut
    filterset_class = MemberFilter

    def get_queryset(self) -> QuerySet[Membership]:
        if _for_schema(self):
            return Membership.objects.none()
        return Membership.objects.filter(organization=_tenant(self.request)).select_related("user")


class MemberDetail(APIView):
    actions = {"GET": "members.view", "PATCH": "members.change_role", "DELETE": "members.remove"}

    def action_for(self, request: Request) -> str | None:
        # Anyone may leave: deleting your own membership needs no management right.
        if request.method == "DELETE" and request.user.is_authenticated:
            own = Membership.objects.filter(pk=self.kwargs["member_id"], user=request.user).exists()
            if own:
                return "members.view"
        return self.actions.get(str(request.method))

    def _get(self, request: Request, member_id: int) -> Membership:
        membership = member_of_organization(organization=_tenant(request), member_id=member_id)
        if membership is None:
            raise NotFound("No such member.")
        return membership

    @extend_schema(responses=MemberOut, operation_id="member_read")
    def get(self, request: Request, member_id: int) -> Response:
        membership = self._get(request, member_id)
        return _versioned(Response(MemberOut(membership).data), membership.updated_at)

    @extend_schema(request=MemberIn, responses=MemberOut, operation_id="member_update")
    def patch(self, request: Request, member_id: int) -> Response:
        membership = self._get(request, member_id)
        expected = _precondition(request, membership.updated_at)
        data = MemberIn(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        if "role" not in data.validated_data:
            return _versioned(Response(MemberOut(membership).data), membership.updated_at)
        updated = identity.member_change_role(
            actor=_actor(request),
            membership=membership,
            role=data.validated_data["role"],
            if_unmodified_since=expected,
        )
        return _versioned(Response(MemberOut(updated).data), updated.updated_at)

    @extend_schema(responses={204: None}, operation_id="member_remove")
    def delete(self, request: Request, member_id: int) -> Response:
        identity.member_remove(actor=_actor(request), membership=self._get(request, member_id))
        return Response(status=204)


class TransferIn(StrictSerializer):
    member_id = serializers.IntegerField()


class OwnershipTransferView(APIView):
    actions = {"POST": "members.transfer_ownership"}

    @extend_schema(
        request=TransferIn,
        responses={200: OpenApiResponse(MemberOut, description="The new owner")},
        operation_id="organization_transfer_ownership",
    )
    def post(self, request: Request) -> Response:
        data = TransferIn(data=request.data)
        data.is_valid(raise_exception=True)
        organization = _tenant(request)
        target = Membership.objects.filter(
            organization=organization, pk=data.validated_data["member_id"]
        ).first()
        if target is None:
            raise serializers.ValidationError({"member_id": ["No such member."]})
        membership = identity.ownership_transfer(actor=_actor(request), organization=organization, to=target)
        return Response(MemberOut(membership).data)


# Invitations ----------------------------------------------------------------


class InvitationOut(serializers.ModelSerializer[Invitation]):
    status = serializers.CharField(read_only=True)
    invited_by = serializers.EmailField(source="invited_by.email", read_only=True, allow_null=True)

    class Meta:
        model = Invitation
        fields = ["id", "email", "role", "status", "invited_by", "created_at", "expires_at", "accepted_at"]


class InvitationCreated(InvitationOut):
    link = serializers.CharField(read_only=True, help_text="The acceptance link, also emailed.")

    class Meta(InvitationOut.Meta):
        fields = [*InvitationOut.Meta.fields, "link"]


class InvitationIn(StrictSerializer):
    email = serializers.EmailField(max_length=254)
    role = serializers.ChoiceField(choices=Membership.Role.choices, default=Membership.Role.MEMBER)


class InvitationList(generics.ListAPIView[Invitation]):
    actions = {"GET": "members.view", "POST": "members.invite"}
    serializer_class = InvitationOut

    def get_queryset(self) -> QuerySet[Invitation]:
        if _for_schema(self):
            return Invitation.objects.none()
        return Invitation.objects.filter(organization=_tenant(self.request)).select_related("invited_by")

    @extend_schema(request=InvitationIn, responses={201: InvitationCreated}, operation_id="invitation_create")
    def post(self, request: Request) -> Response:
        data = InvitationIn(data=request.data)
        data.is_valid(raise_exception=True)
        invitation, link = identity.invitation_create(
            actor=_actor(request),
            organization=_tenant(request),
            email=data.validated_data["email"],
            role=data.validated_data["role"],
            accept_url_base=public_url(request._request, "").rstrip("/"),
        )
        invitation.link = link  # type: ignore[attr-defined]
        return Response(InvitationCreated(invitation).data, status=201)


class InvitationDetail(APIView):
    actions = {"DELETE": "members.invite"}

    @extend_schema(responses={200: InvitationOut}, operation_id="invitation_revoke")
    def delete(self, request: Request, invitation_id: int) -> Response:
        invitation = Invitation.objects.filter(organization=_tenant(request), pk=invitation_id).first()
        if invitation is None:
            raise NotFound("No such invitation.")
        return Response(
            InvitationOut(identity.invitation_revoke(actor=_actor(request), invitation=invitation)).data
        )


# API keys -------------------------------------------------------------------


class ApiKeyOut(serializers.ModelSerializer[ApiKey]):
    status = serializers.CharField(read_only=True)
    created_by = serializers.EmailField(source="created_by.email", read_only=True, allow_null=True)

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "name",
            "prefix",
            "scopes",
            "status",
            "created_by",
            "created_at",
            "expires_at",
            "revoked_at",
            "last_used_at",
            "last_used_ip",
        ]


class ApiKeyCreated(ApiKeyOut):
    key = serializers.CharField(read_only=True, help_text="The secret. Shown this once; store it now.")

    class Meta(ApiKeyOut.Meta):
        fields = [*ApiKeyOut.Meta.fields, "key"]


class ApiKeyIn(StrictSerializer):
    name = serializers.CharField(max_length=100)
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=SCOPES), allow_empty=False)
    expires_at = serializers.DateTimeField(required=False, allow_null=True)


class ApiKeyList(generics.ListAPIView[ApiKey]):
    actions = {"GET": "api_keys.view", "POST": "api_keys.manage"}
    serializer_class = ApiKeyOut

    def get_queryset(self) -> QuerySet[ApiKey]:
        if _for_schema(self):
            return ApiKey.objects.none()
        return ApiKey.objects.filter(organization=_tenant(self.request)).select_related("created_by")

    @extend_schema(request=ApiKeyIn, responses={201: ApiKeyCreated}, operation_id="api_key_create")
    def post(self, request: Request) -> Response:
        data = ApiKeyIn(data=request.data)
        data.is_valid(raise_exception=True)
        api_key, raw = identity.api_key_create(
            actor=_actor(request),
            organization=_tenant(request),
            name=data.validated_data["name"],
            scopes=data.validated_data["scopes"],
            expires_at=data.validated_data.get("expires_at"),
        )
        api_key.key = raw  # type: ignore[attr-defined]
        return Response(ApiKeyCreated(api_key).data, status=201)


class ApiKeyDetail(APIView):
    actions = {"GET": "api_keys.view", "DELETE": "api_keys.manage"}

    def _get(self, request: Request, key_id: int) -> ApiKey:
        api_key = (
            ApiKey.objects.filter(organization=_tenant(request), pk=key_id)
            .select_related("created_by")
            .first()
        )
        if api_key is None:
            raise NotFound("No such API key.")
        return api_key

    @extend_schema(responses=ApiKeyOut, operation_id="api_key_read")
    def get(self, request: Request, key_id: int) -> Response:
        return Response(ApiKeyOut(self._get(request, key_id)).data)

    @extend_schema(responses={200: ApiKeyOut}, operation_id="api_key_revoke")
    def delete(self, request: Request, key_id: int) -> Response:
        revoked = identity.api_key_revoke(actor=_actor(request), api_key=self._get(request, key_id))
        return Response(ApiKeyOut(revoked).data)


# Audit log ------------------------------------------------------------------


class AuditEventOut(serializers.ModelSerializer[AuditEvent]):
    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "created_at",
            "actor_email",
            "action",
            "target_type",
            "target_id",
            "target_repr",
            "changes",
            "ip",
            "user_agent",
            "request_id",
        ]


class UtcIsoDateTimeField(IsoDateTimeField):
    """An ISO 8601 date-time, handed to the database in UTC. PostgreSQL refuses offsets
    beyond ±15:59 that ISO allows (a 500 before), and some dates leave the calendar in UTC."""

    def to_python(self, value: Any) -> datetime | None:
        parsed: datetime | None = super().to_python(value)
        if parsed is None:
            return None
        try:
            return parsed.astimezone(UTC)
        except OverflowError:
            raise DjangoValidationError("This date is out of range.", code="invalid") from None


class UtcIsoDateTimeFilter(filters.IsoDateTimeFilter):
    field_class = UtcIsoDateTimeField


class AuditEventFilter(filters.FilterSet):
    action = filters.CharFilter(field_name="action", lookup_expr="startswith")
    actor = filters.CharFilter(field_name="actor_email", lookup_expr="icontains")
    target_type = filters.CharFilter(field_name="target_type")
    since = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    until = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = AuditEvent
        fields = ["action", "actor", "target_type", "since", "until"]


def audit_events_for(organization: Organization) -> QuerySet[AuditEvent]:
    return AuditEvent.objects.filter(organization=organization)


class AuditEventList(generics.ListAPIView[AuditEvent]):
    actions = {"GET": "audit.view"}
    serializer_class = AuditEventOut
    filterset_class = AuditEventFilter

    def get_queryset(self) -> QuerySet[AuditEvent]:
        if _for_schema(self):
            return AuditEvent.objects.none()
        return audit_events_for(_tenant(self.request))


def _csv_safe(value: object) -> str:
    """A cell a spreadsheet will not run: text starting = + - @ (or a tab/CR) gets a quote."""
    text = str(value)
    return "'" + text if text[:1] in {"=", "+", "-", "@", "\t", "\r"} else text


class _Echo:
    def write(self, value: str) -> str:
        return value


def audit_csv_rows(events: QuerySet[AuditEvent]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(
        [
            "time",
            "actor",
            "action",
            "target_type",
            "target_id",
            "target",
            "changes",
            "ip",
            "user_agent",
            "request_id",
        ]
    )
    for event in events.iterator(chunk_size=500):
        yield writer.writerow(
            [
                _csv_safe(value)
                for value in (
                    event.created_at.isoformat(),
                    event.actor_email,
                    event.action,
                    event.target_type,
                    event.target_id,
                    event.target_repr,
                    event.changes,
                    event.ip or "",
                    event.user_agent,
                    event.request_id,
                )
            ]
        )


class AuditEventExport(generics.GenericAPIView[AuditEvent]):
    actions = {"GET": "audit.view"}
    filterset_class = AuditEventFilter
    pagination_class = None
    serializer_class = AuditEventOut

    def get_queryset(self) -> QuerySet[AuditEvent]:
        if _for_schema(self):
            return AuditEvent.objects.none()
        return audit_events_for(_tenant(self.request))

    @extend_schema(
        responses={(200, "text/csv"): OpenApiResponse(response=OpenApiTypes.STR, description="CSV")},
        operation_id="audit_events_export",
    )
    @feature_required("audit_export")
    def get(self, request: Request) -> StreamingHttpResponse:
        events = self.filter_queryset(self.get_queryset())
        response = StreamingHttpResponse(audit_csv_rows(events), content_type="text/csv")
        response["Content-Disposition"] = f'attachment; filename="{_tenant(request).slug}-audit.csv"'
        return response
