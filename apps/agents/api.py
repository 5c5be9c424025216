"""REST endpoints for agents (/api/v1/agents/): profiles, runs, a run's events (by cursor)
and the member's controls over a run (cancel, pause, resume, approve, deny, commit).

Thin: each view names its action (apps/tenancy/roles.py) and calls one service or
selector of apps/agents; a control the run's state does not allow is the service's 409
with a message that says why. The live stream is the WebSocket /ws/runs/<id>/
(apps/agents/consumers.py)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from django.db.models import QuerySet
from django_filters import rest_framework as filters
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import generics, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.agents import selectors, services
from apps.agents.events import event_payload
from apps.agents.models import AgentProfile, AgentRun, Event
from apps.core.openapi import ApiError
from apps.tenancy.api import StrictSerializer
from apps.tenancy.audit import Actor
from apps.tenancy.models import Organization

F = TypeVar("F", bound=Callable[..., Any])

EVENTS_LIMIT_DEFAULT = 200
EVENTS_LIMIT_MAX = 1000


def _tenant(request: Request) -> Organization:
    organization: Organization = request._request.tenant  # type: ignore[attr-defined]
    return organization


def _actor(request: Request) -> Actor:
    return Actor.from_request(request._request)


def run_get(run_id: uuid.UUID) -> AgentRun:
    return selectors.run_get(run_id=run_id)


def profile_get(profile_id: int) -> AgentProfile:
    return selectors.profile_get(profile_id=profile_id)


def queue_positions(runs: list[AgentRun]) -> dict[uuid.UUID, int]:
    """Where each queued run waits in the agent pool (1: next), in one pass over the queue."""
    queued = [run.pk for run in runs if run.state == AgentRun.State.QUEUED]
    if not queued:
        return {}
    from apps.scheduling.selectors import queue_positions as pool_positions

    return pool_positions(run_ids=queued)


CONFLICT = OpenApiResponse(
    ApiError,
    description="The run's state does not allow it (`conflict`); the message says which state it is in.",
)


# Profiles -----------------------------------------------------------------------------------------


class ProfileOut(serializers.ModelSerializer[AgentProfile]):
    max_cost = serializers.DecimalField(max_digits=12, decimal_places=6, coerce_to_string=True)
    created_by = serializers.IntegerField(source="created_by_id", read_only=True, allow_null=True)

    class Meta:
        model = AgentProfile
        fields = [
            "id",
            "name",
            "role",
            "model",
            "prompt_template",
            "prompt_version",
            "tools",
            "max_steps",
            "max_cost",
            "max_seconds",
            "confirmation",
            "risk_patterns",
            "created_by",
            "created_at",
            "updated_at",
        ]


class ProfileIn(StrictSerializer):
    name = serializers.CharField(max_length=100)
    role = serializers.CharField(
        max_length=2000, allow_blank=True, required=False, help_text="Who the agent is, added to its prompt."
    )
    model = serializers.CharField(
        max_length=200, required=False, help_text='A catalog model name, or "auto" for the router to choose.'
    )
    prompt_template = serializers.CharField(max_length=100, required=False)
    prompt_version = serializers.IntegerField(
        min_value=1, allow_null=True, required=False, help_text="A pinned version; null: the current one."
    )
    tools = serializers.ListField(
        child=serializers.CharField(max_length=200),
        required=False,
        help_text="Tool names the agent may use; empty: every built-in and organization tool.",
    )
    max_steps = serializers.IntegerField(min_value=1, max_value=services.MAX_STEPS_LIMIT, required=False)
    max_cost = serializers.DecimalField(
        max_digits=12, decimal_places=6, min_value=0, required=False, help_text="In US dollars."
    )
    max_seconds = serializers.IntegerField(
        min_value=1,
        max_value=services.MAX_SECONDS_LIMIT,
        required=False,
        help_text="Wall time while running.",
    )
    confirmation = serializers.BooleanField(
        required=False, help_text="Risky actions wait for a member's approve or deny."
    )
    risk_patterns = serializers.ListField(
        child=serializers.CharField(max_length=500),
        required=False,
        help_text="Extra regular expressions of risky commands, beside the built-in ones.",
    )


class ProfileList(generics.ListAPIView[AgentProfile]):
    actions = {"GET": "agents.view", "POST": "agents.manage"}
    serializer_class = ProfileOut
    pagination_class = None

    def get_queryset(self) -> QuerySet[AgentProfile]:
        return selectors.profiles_list()

    @extend_schema(operation_id="agents_profiles_list")
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(
        request=ProfileIn,
        responses={
            201: ProfileOut,
            400: OpenApiResponse(ApiError, description="A bad value, on its field."),
            409: OpenApiResponse(ApiError, description="The name is in use (`name_taken`)."),
        },
        operation_id="agents_profile_create",
    )
    def post(self, request: Request) -> Response:
        data = ProfileIn(data=request.data)
        data.is_valid(raise_exception=True)
        profile = services.profile_create(
            actor=_actor(request), organization=_tenant(request), **data.validated_data
        )
        return Response(ProfileOut(profile).data, status=201)


class ProfileDetail(APIView):
    actions = {"GET": "agents.view", "PATCH": "agents.manage", "DELETE": "agents.manage"}

    @extend_schema(responses=ProfileOut, operation_id="agents_profile_read")
    def get(self, request: Request, profile_id: int) -> Response:
        return Response(ProfileOut(profile_get(profile_id)).data)

    @extend_schema(
        request=ProfileIn(partial=True),
        responses={200: ProfileOut, 400: OpenApiResponse(ApiError, description="A bad value, on its field.")},
        operation_id="agents_profile_update",
        description="Changes the fields sent; runs already started keep the settings they began with.",
    )
    def patch(self, request: Request, profile_id: int) -> Response:
        profile = profile_get(profile_id)
        data = ProfileIn(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        profile = services.profile_update(
            actor=_actor(request), organization=_tenant(request), profile=profile, **data.validated_data
        )
        return Response(ProfileOut(profile).data)

    @extend_schema(
        responses={204: None},
        operation_id="agents_profile_delete",
        description="Runs that used it keep their settings; they show no profile afterwards.",
    )
    def delete(self, request: Request, profile_id: int) -> Response:
        services.profile_delete(
            actor=_actor(request), organization=_tenant(request), profile=profile_get(profile_id)
        )
        return Response(status=204)


# Runs ---------------------------------------------------------------------------------------------


class RunOut(serializers.ModelSerializer[AgentRun]):
    workspace = serializers.IntegerField(source="workspace_id", read_only=True, allow_null=True)
    profile = serializers.IntegerField(source="profile_id", read_only=True, allow_null=True)
    created_by = serializers.IntegerField(source="created_by_id", read_only=True, allow_null=True)
    cost = serializers.DecimalField(
        max_digits=14, decimal_places=8, coerce_to_string=True, help_text="US dollars so far."
    )
    queue_position = serializers.SerializerMethodField(
        help_text="While queued: the run's place in the agent pool's queue (1: next); null otherwise."
    )
    result = serializers.JSONField(
        help_text='When finished: {"answer": str, "diff": str, "commit": str | null}.', read_only=True
    )

    class Meta:
        model = AgentRun
        fields = [
            "id",
            "task",
            "workspace",
            "profile",
            "state",
            "state_reason",
            "control",
            "priority",
            "queue_position",
            "result",
            "settings",
            "steps",
            "input_tokens",
            "output_tokens",
            "cached_tokens",
            "cost",
            "active_seconds",
            "last_seq",
            "created_by",
            "created_at",
            "started_at",
            "finished_at",
        ]

    @extend_schema_field(OpenApiTypes.INT)
    def get_queue_position(self, run: AgentRun) -> int | None:
        positions = self.context.get("queue_positions")
        if positions is None:
            positions = queue_positions([run])
        return positions.get(run.pk)


class RunIn(StrictSerializer):
    workspace = serializers.IntegerField(min_value=1, max_value=2**63 - 1, help_text="The workspace's id.")
    task = serializers.CharField(trim_whitespace=True, help_text="What the agent should do.")
    profile = serializers.IntegerField(
        min_value=1,
        max_value=2**63 - 1,
        required=False,
        allow_null=True,
        help_text="An agent profile's id; left out: the organization's default.",
    )
    priority = serializers.ChoiceField(
        choices=AgentRun.Priority.choices,
        default=AgentRun.Priority.INTERACTIVE,
        help_text="interactive runs start before batch ones when the pool is full.",
    )


class RunFilter(filters.FilterSet):
    state = filters.ChoiceFilter(choices=AgentRun.State.choices)
    workspace = filters.NumberFilter(field_name="workspace_id")
    profile = filters.NumberFilter(field_name="profile_id")

    class Meta:
        model = AgentRun
        fields = ["state", "workspace", "profile"]


class RunList(generics.ListAPIView[AgentRun]):
    actions = {"GET": "agents.view", "POST": "agents.run"}
    serializer_class = RunOut
    filterset_class = RunFilter

    def get_queryset(self) -> QuerySet[AgentRun]:
        return selectors.runs_list()

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        runs = list(page or [])
        context = {**self.get_serializer_context(), "queue_positions": queue_positions(runs)}
        return self.get_paginated_response(RunOut(runs, many=True, context=context).data)

    @extend_schema(operation_id="agents_runs_list")
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(
        request=RunIn,
        responses={
            201: RunOut,
            400: OpenApiResponse(
                ApiError,
                description="An unknown workspace or profile, a stopped workspace, an empty task or one"
                " over the size limit; `fields` names the field.",
            ),
        },
        operation_id="agents_run_create",
        description="Queues the run; it starts as soon as the agent pool has room (see queue_position).",
    )
    def post(self, request: Request) -> Response:
        data = RunIn(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        run = services.run_create(
            actor=_actor(request),
            organization=_tenant(request),
            workspace=values["workspace"],
            task=values["task"],
            profile=values.get("profile"),
            priority=values["priority"],
        )
        return Response(RunOut(run).data, status=201)


class RunDetail(APIView):
    actions = {"GET": "agents.view"}

    @extend_schema(responses=RunOut, operation_id="agents_run_read")
    def get(self, request: Request, run_id: uuid.UUID) -> Response:
        return Response(RunOut(run_get(run_id)).data)


# Events -------------------------------------------------------------------------------------------


class EventOut(serializers.Serializer[Event]):
    run = serializers.UUIDField()
    seq = serializers.IntegerField(help_text="1, 2, 3... per run, with no gap.")
    kind = serializers.CharField(help_text="message, action, observation, state or error.")
    step = serializers.IntegerField()
    payload = serializers.JSONField(
        help_text='message {"role", "text"}; action {"tool", "arguments", "call_id", "thought"};'
        ' observation {"tool", "call_id", "output", "error", "data"}; state {"state", "reason"};'
        ' error {"message", "code"}.'
    )
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cost = serializers.CharField()
    created_at = serializers.DateTimeField()


class EventPageOut(serializers.Serializer[Any]):
    events = EventOut(many=True)
    next_after = serializers.IntegerField(help_text="Pass as `after` for the next page.")
    has_more = serializers.BooleanField(help_text="More events are stored after this page.")
    run_state = serializers.CharField(help_text="The run's state when the page was read.")


class EventsQuery(serializers.Serializer[Any]):
    after = serializers.IntegerField(min_value=0, max_value=2**31 - 1, default=0)
    limit = serializers.IntegerField(min_value=1, max_value=EVENTS_LIMIT_MAX, default=EVENTS_LIMIT_DEFAULT)


class RunEvents(APIView):
    actions = {"GET": "agents.view"}

    @extend_schema(
        parameters=[
            OpenApiParameter("after", OpenApiTypes.INT, description="Only events with a larger seq (0)."),
            OpenApiParameter(
                "limit",
                OpenApiTypes.INT,
                description=f"At most this many, 1 to {EVENTS_LIMIT_MAX} ({EVENTS_LIMIT_DEFAULT}).",
            ),
        ],
        responses={200: EventPageOut},
        operation_id="agents_run_events",
        description="The run's events in seq order after a cursor. The live stream is the WebSocket"
        " /ws/runs/{run_id}/?after=<seq>, which continues from the same cursor.",
    )
    def get(self, request: Request, run_id: uuid.UUID) -> Response:
        run = run_get(run_id)
        query = EventsQuery(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        after, limit = query.validated_data["after"], query.validated_data["limit"]
        events = list(selectors.events_after(run=run, after=after, limit=limit + 1))
        page = events[:limit]
        return Response(
            {
                "events": [event_payload(event) for event in page],
                "next_after": page[-1].seq if page else after,
                "has_more": len(events) > limit,
                "run_state": run.state,
            }
        )


# Controls -----------------------------------------------------------------------------------------


class DecisionIn(StrictSerializer):
    note = serializers.CharField(
        max_length=2000, required=False, allow_blank=True, default="", help_text="Told to the agent."
    )


class CommitIn(StrictSerializer):
    message = serializers.CharField(max_length=5000, help_text="The commit message.")


class _RunControl(APIView):
    actions = {"POST": "agents.run"}

    def apply(self, request: Request, run: AgentRun) -> AgentRun:
        raise NotImplementedError

    def post(self, request: Request, run_id: uuid.UUID) -> Response:
        return Response(RunOut(self.apply(request, run_get(run_id))).data)


def _control_schema(operation_id: str, description: str, request: Any = None) -> Callable[[F], F]:
    return extend_schema(
        request=request,
        responses={200: RunOut, 409: CONFLICT},
        operation_id=operation_id,
        description=description,
    )


class RunCancel(_RunControl):
    def apply(self, request: Request, run: AgentRun) -> AgentRun:
        return services.run_cancel(actor=_actor(request), organization=_tenant(request), run=run)

    @_control_schema("agents_run_cancel", "Stops the run within one step; a finished run is a 409.")
    def post(self, request: Request, run_id: uuid.UUID) -> Response:
        return super().post(request, run_id)


class RunPause(_RunControl):
    def apply(self, request: Request, run: AgentRun) -> AgentRun:
        return services.run_pause(actor=_actor(request), organization=_tenant(request), run=run)

    @_control_schema("agents_run_pause", "Pauses the run after its current step.")
    def post(self, request: Request, run_id: uuid.UUID) -> Response:
        return super().post(request, run_id)


class RunResume(_RunControl):
    def apply(self, request: Request, run: AgentRun) -> AgentRun:
        return services.run_resume(actor=_actor(request), organization=_tenant(request), run=run)

    @_control_schema("agents_run_resume", "Puts a paused run back in the pool's queue.")
    def post(self, request: Request, run_id: uuid.UUID) -> Response:
        return super().post(request, run_id)


class RunApprove(_RunControl):
    def apply(self, request: Request, run: AgentRun) -> AgentRun:
        data = DecisionIn(data=request.data)
        data.is_valid(raise_exception=True)
        return services.run_decide(
            actor=_actor(request),
            organization=_tenant(request),
            run=run,
            approve=True,
            note=data.validated_data["note"],
        )

    @_control_schema(
        "agents_run_approve", "Runs the action the run waits on (waiting_for_approval only).", DecisionIn
    )
    def post(self, request: Request, run_id: uuid.UUID) -> Response:
        return super().post(request, run_id)


class RunDeny(_RunControl):
    def apply(self, request: Request, run: AgentRun) -> AgentRun:
        data = DecisionIn(data=request.data)
        data.is_valid(raise_exception=True)
        return services.run_decide(
            actor=_actor(request),
            organization=_tenant(request),
            run=run,
            approve=False,
            note=data.validated_data["note"],
        )

    @_control_schema(
        "agents_run_deny",
        "Refuses the action the run waits on; the agent is told (with the note) and goes on.",
        DecisionIn,
    )
    def post(self, request: Request, run_id: uuid.UUID) -> Response:
        return super().post(request, run_id)


class RunCommit(_RunControl):
    def apply(self, request: Request, run: AgentRun) -> AgentRun:
        data = CommitIn(data=request.data)
        data.is_valid(raise_exception=True)
        return services.run_commit(
            actor=_actor(request),
            organization=_tenant(request),
            run=run,
            message=data.validated_data["message"],
        )

    @_control_schema(
        "agents_run_commit",
        "Commits the finished run's diff in its workspace; the commit's hash goes in result.commit.",
        CommitIn,
    )
    def post(self, request: Request, run_id: uuid.UUID) -> Response:
        return super().post(request, run_id)
