"""REST endpoints for workspaces (lifecycle, exec, files, git) and the organization's
secrets. Thin: each view names its action (apps/tenancy/roles.py), validates with a
serializer and calls one service; errors are ServiceErrors with their status."""

import base64
import binascii
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
from apps.core.errors import Invalid
from apps.core.openapi import ApiError
from apps.tenancy.api import StrictSerializer
from apps.tenancy.audit import Actor
from apps.tenancy.models import Organization
from apps.workspaces import git, selectors, services
from apps.workspaces.crypto import decrypt_env
from apps.workspaces.models import Secret, Workspace
from runtime.client import FileEntry


def _tenant(request: Request) -> Organization:
    organization: Organization = request._request.tenant  # type: ignore[attr-defined]
    return organization


def _actor(request: Request) -> Actor:
    return Actor.from_request(request._request)


def _workspace(workspace_id: int) -> Workspace:
    return selectors.workspace_get(workspace_id=workspace_id)


CONFLICT = OpenApiResponse(
    ApiError,
    description="The workspace's state does not allow it (`workspace_not_running`, `workspace_archived`,"
    " `workspace_deleted`; `workspace_not_running` or `sandbox_missing` also when the runtime no longer"
    " runs or has its sandbox, and the workspace is then recorded stopped), or a limit is reached"
    " (`workspace_quota_exceeded`, `running_quota_exceeded`).",
)
UNAVAILABLE = OpenApiResponse(
    ApiError,
    description="The workspace runtime is not reachable (`runtime_unavailable`); nothing was changed.",
)
QUOTA = OpenApiResponse(
    ApiError,
    description="The organization's plan allows no more (`quota_exceeded`): workspaces, workspace storage,"
    " running sandboxes or this month's sandbox hours. Beside `error` the body names `limit`, `plan`,"
    " `allowed` and `used`.",
)
RUNTIME_ERRORS: dict[int, OpenApiResponse] = {
    400: OpenApiResponse(
        ApiError, description="Bad input; `fields` names the field (a path leaving the workspace, say)."
    ),
    409: CONFLICT,
    503: UNAVAILABLE,
}


# Workspaces ---------------------------------------------------------------------------------------


class WorkspaceOut(serializers.ModelSerializer[Workspace]):
    env_names = serializers.SerializerMethodField(
        help_text="Names of its environment variables; values are never shown."
    )
    created_by = serializers.IntegerField(source="created_by_id", read_only=True, allow_null=True)

    class Meta:
        model = Workspace
        fields = [
            "id",
            "name",
            "repo_url",
            "template",
            "cpus",
            "memory_mb",
            "disk_mb",
            "pids",
            "idle_timeout_seconds",
            "network_allow",
            "env_names",
            "state",
            "created_by",
            "created_at",
            "updated_at",
            "started_at",
            "stopped_at",
            "archived_at",
            "deleted_at",
            "last_activity_at",
        ]

    def get_env_names(self, workspace: Workspace) -> list[str]:
        try:
            return sorted(decrypt_env(workspace.env_encrypted))
        except Invalid:
            return []


class WorkspaceIn(StrictSerializer):
    name = serializers.CharField(max_length=64)
    template = serializers.CharField(max_length=64, default="base")
    repo_url = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")
    cpus = serializers.FloatField(default=1.0)
    memory_mb = serializers.IntegerField(default=1024)
    disk_mb = serializers.IntegerField(default=2048)
    pids = serializers.IntegerField(default=256)
    idle_timeout_seconds = serializers.IntegerField(default=3600)
    network_allow = serializers.ListField(
        child=serializers.CharField(max_length=300),
        default=list,
        help_text='"host:port" entries; empty: no network.',
    )
    env = serializers.DictField(
        child=serializers.CharField(allow_blank=True, trim_whitespace=False), default=dict
    )
    start = serializers.BooleanField(default=True, help_text="Start it at once (default).")


class WorkspaceFilter(filters.FilterSet):
    state = filters.ChoiceFilter(choices=Workspace.State.choices)

    class Meta:
        model = Workspace
        fields = ["state"]


class WorkspaceList(generics.ListAPIView[Workspace]):
    actions = {"GET": "workspaces.view", "POST": "workspaces.create"}
    serializer_class = WorkspaceOut
    filterset_class = WorkspaceFilter

    def get_queryset(self) -> QuerySet[Workspace]:
        # Destroyed workspaces only when asked for with ?state=deleted.
        return selectors.workspaces_list(include_deleted=self.request.query_params.get("state") == "deleted")

    @extend_schema(
        request=WorkspaceIn,
        responses={201: WorkspaceOut, 402: QUOTA, **RUNTIME_ERRORS},
        operation_id="workspace_create",
    )
    def post(self, request: Request) -> Response:
        data = WorkspaceIn(data=request.data)
        data.is_valid(raise_exception=True)
        workspace = services.workspace_create(
            actor=_actor(request), organization=_tenant(request), **data.validated_data
        )
        return Response(WorkspaceOut(workspace).data, status=201)


class WorkspaceDetail(APIView):
    actions = {"GET": "workspaces.view", "DELETE": "workspaces.destroy"}

    @extend_schema(responses=WorkspaceOut, operation_id="workspace_read")
    def get(self, request: Request, workspace_id: int) -> Response:
        return Response(WorkspaceOut(_workspace(workspace_id)).data)

    @extend_schema(
        responses={
            200: OpenApiResponse(WorkspaceOut, description="Destroyed: state `deleted`."),
            **RUNTIME_ERRORS,
        },
        operation_id="workspace_destroy",
    )
    def delete(self, request: Request, workspace_id: int) -> Response:
        workspace = services.workspace_destroy(
            actor=_actor(request), organization=_tenant(request), workspace=_workspace(workspace_id)
        )
        return Response(WorkspaceOut(workspace).data)


class _Transition(APIView):
    def _apply(self, request: Request, workspace: Workspace) -> Workspace:
        raise NotImplementedError

    def post(self, request: Request, workspace_id: int) -> Response:
        return Response(WorkspaceOut(self._apply(request, _workspace(workspace_id))).data)


class WorkspaceStart(_Transition):
    actions = {"POST": "workspaces.operate"}

    def _apply(self, request: Request, workspace: Workspace) -> Workspace:
        return services.workspace_start(
            actor=_actor(request), organization=_tenant(request), workspace=workspace
        )

    @extend_schema(
        request=None,
        responses={200: WorkspaceOut, 402: QUOTA, **RUNTIME_ERRORS},
        operation_id="workspace_start",
    )
    def post(self, request: Request, workspace_id: int) -> Response:
        return super().post(request, workspace_id)


class WorkspaceStop(_Transition):
    actions = {"POST": "workspaces.operate"}

    def _apply(self, request: Request, workspace: Workspace) -> Workspace:
        return services.workspace_stop(
            actor=_actor(request), organization=_tenant(request), workspace=workspace
        )

    @extend_schema(
        request=None, responses={200: WorkspaceOut, **RUNTIME_ERRORS}, operation_id="workspace_stop"
    )
    def post(self, request: Request, workspace_id: int) -> Response:
        return super().post(request, workspace_id)


class WorkspaceArchive(_Transition):
    actions = {"POST": "workspaces.destroy"}

    def _apply(self, request: Request, workspace: Workspace) -> Workspace:
        return services.workspace_archive(
            actor=_actor(request), organization=_tenant(request), workspace=workspace
        )

    @extend_schema(
        request=None, responses={200: WorkspaceOut, **RUNTIME_ERRORS}, operation_id="workspace_archive"
    )
    def post(self, request: Request, workspace_id: int) -> Response:
        return super().post(request, workspace_id)


# Exec ---------------------------------------------------------------------------------------------


class ExecIn(StrictSerializer):
    command = serializers.CharField(required=False, help_text="A shell command line (sh -c); or give argv.")
    argv = serializers.ListField(child=serializers.CharField(trim_whitespace=False), required=False)
    cwd = serializers.CharField(
        required=False, allow_blank=True, default="", help_text="Relative to the workspace."
    )
    env = serializers.DictField(
        child=serializers.CharField(allow_blank=True, trim_whitespace=False), default=dict
    )
    timeout = serializers.FloatField(
        default=60.0, help_text="Seconds; the command is killed at it (at most 3600)."
    )
    stdin = serializers.CharField(required=False, allow_blank=True, default="", trim_whitespace=False)


class ExecOut(serializers.Serializer[Any]):
    exit_code = serializers.IntegerField(help_text="-N when killed by signal N.")
    stdout = serializers.CharField(help_text="Ends with a `[output truncated: ...]` line when cut.")
    stderr = serializers.CharField()
    timed_out = serializers.BooleanField()
    stdout_truncated = serializers.BooleanField()
    stderr_truncated = serializers.BooleanField()
    oom_killed = serializers.BooleanField()
    duration_seconds = serializers.FloatField()


class WorkspaceExec(APIView):
    actions = {"POST": "workspaces.operate"}

    @extend_schema(request=ExecIn, responses={200: ExecOut, **RUNTIME_ERRORS}, operation_id="workspace_exec")
    def post(self, request: Request, workspace_id: int) -> Response:
        workspace = _workspace(workspace_id)
        data = ExecIn(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        outcome = services.workspace_exec(
            actor=_actor(request),
            workspace=workspace,
            command=values.get("command"),
            argv=values.get("argv"),
            cwd=values["cwd"],
            env=values["env"],
            timeout=values["timeout"],
            stdin=values["stdin"].encode(),
        )
        return Response(ExecOut(outcome).data)


# Files --------------------------------------------------------------------------------------------


class FileEntryOut(serializers.Serializer[FileEntry]):
    path = serializers.CharField()
    name = serializers.CharField()
    kind = serializers.ChoiceField(choices=["file", "dir", "symlink", "other"])
    size = serializers.IntegerField()
    modified_at = serializers.FloatField(help_text="Unix seconds.")


class PathOut(FileEntryOut):
    entries = FileEntryOut(many=True, allow_null=True, help_text="A directory's entries; null for a file.")
    content = serializers.CharField(
        allow_null=True, help_text="A file's content (the first MiB); null for a directory."
    )
    encoding = serializers.ChoiceField(choices=["utf-8", "base64"], allow_null=True)
    truncated = serializers.BooleanField(help_text="The file is larger than what `content` holds.")


class FileWriteIn(StrictSerializer):
    content = serializers.CharField(allow_blank=True, trim_whitespace=False)
    encoding = serializers.ChoiceField(choices=["utf-8", "base64"], default="utf-8")
    make_parents = serializers.BooleanField(default=True)


class PathQuery(serializers.Serializer[Any]):
    path = serializers.CharField(required=False, allow_blank=True, default="", trim_whitespace=False)
    recursive = serializers.BooleanField(required=False, default=False)


PATH_PARAMETER = OpenApiParameter(
    "path",
    OpenApiTypes.STR,
    OpenApiParameter.QUERY,
    description="Relative to the workspace root; empty: the root.",
)


def _path_json(content: selectors.PathContent) -> dict[str, Any]:
    entry = content.entry
    body: dict[str, Any] = {
        "path": entry.path,
        "name": entry.name,
        "kind": entry.kind,
        "size": entry.size,
        "modified_at": entry.modified_at,
        "entries": [FileEntryOut(item).data for item in content.entries]
        if content.entries is not None
        else None,
        "content": None,
        "encoding": None,
        "truncated": content.truncated,
    }
    if content.data is not None:
        try:
            body["content"], body["encoding"] = content.data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            body["content"], body["encoding"] = base64.b64encode(content.data).decode(), "base64"
    return body


class WorkspaceFiles(APIView):
    actions = {"GET": "workspaces.view", "PUT": "workspaces.operate", "DELETE": "workspaces.operate"}

    def _query(self, request: Request) -> dict[str, Any]:
        query = PathQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        return dict(query.validated_data)

    @extend_schema(
        parameters=[PATH_PARAMETER],
        responses={200: PathOut, **RUNTIME_ERRORS},
        operation_id="workspace_files_read",
    )
    def get(self, request: Request, workspace_id: int) -> Response:
        workspace = _workspace(workspace_id)
        content = selectors.workspace_path_read(workspace=workspace, path=self._query(request)["path"])
        return Response(_path_json(content))

    @extend_schema(
        parameters=[PATH_PARAMETER],
        request=FileWriteIn,
        responses={200: FileEntryOut, **RUNTIME_ERRORS},
        operation_id="workspace_files_write",
    )
    def put(self, request: Request, workspace_id: int) -> Response:
        workspace = _workspace(workspace_id)
        path = self._query(request)["path"]
        data = FileWriteIn(data=request.data)
        data.is_valid(raise_exception=True)
        content = data.validated_data["content"]
        if data.validated_data["encoding"] == "base64":
            try:
                raw = base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError):
                raise Invalid("content is not valid base64.", field="content") from None
        else:
            raw = content.encode()
        entry = services.workspace_file_write(
            actor=_actor(request),
            workspace=workspace,
            path=path,
            data=raw,
            make_parents=data.validated_data["make_parents"],
        )
        return Response(FileEntryOut(entry).data)

    @extend_schema(
        parameters=[
            PATH_PARAMETER,
            OpenApiParameter(
                "recursive", OpenApiTypes.BOOL, OpenApiParameter.QUERY, description="For directories."
            ),
        ],
        responses={204: None, **RUNTIME_ERRORS},
        operation_id="workspace_files_delete",
    )
    def delete(self, request: Request, workspace_id: int) -> Response:
        workspace = _workspace(workspace_id)
        query = self._query(request)
        services.workspace_path_delete(
            actor=_actor(request), workspace=workspace, path=query["path"], recursive=query["recursive"]
        )
        return Response(status=204)


# Git ----------------------------------------------------------------------------------------------


class GitOut(serializers.Serializer[Any]):
    output = serializers.CharField()
    commit = serializers.CharField(help_text="The commit now checked out or made, when there is one.")


class GitCloneIn(StrictSerializer):
    url = serializers.CharField(
        max_length=2000, help_text="A path in the workspace, a file:// or an http(s) URL."
    )
    path = serializers.CharField(max_length=4096, help_text="Where to clone to, relative to the workspace.")
    secret = serializers.CharField(
        required=False,
        allow_null=True,
        default=None,
        help_text="The name of a secret holding a token for https.",
    )
    branch = serializers.CharField(required=False, allow_null=True, default=None)


class GitRepoIn(StrictSerializer):
    path = serializers.CharField(
        required=False,
        allow_blank=True,
        default="",
        max_length=4096,
        help_text="The repository in the workspace.",
    )


class GitBranchIn(GitRepoIn):
    name = serializers.CharField(max_length=200)
    # DRF's metaclass takes declared fields out of the class body, so this name does not
    # replace Serializer.create at run time; mypy cannot know that.
    create = serializers.BooleanField(default=False)  # type: ignore[assignment]


class GitCommitIn(GitRepoIn):
    message = serializers.CharField(max_length=10000, trim_whitespace=False)
    all_changes = serializers.BooleanField(
        default=True, help_text="Stage every change first (git add --all)."
    )
    author_name = serializers.CharField(required=False, allow_null=True, default=None, max_length=200)
    author_email = serializers.CharField(required=False, allow_null=True, default=None, max_length=200)


class GitPushIn(GitRepoIn):
    remote = serializers.CharField(default="origin", max_length=100)
    branch = serializers.CharField(required=False, allow_null=True, default=None, max_length=200)
    secret = serializers.CharField(required=False, allow_null=True, default=None, max_length=64)


class GitStatusEntryOut(serializers.Serializer[Any]):
    path = serializers.CharField()
    kind = serializers.CharField(help_text="`changed`, `renamed`, `unmerged` or `untracked`.")
    index = serializers.CharField(help_text="Staged change (porcelain v2 X): M, A, D, R, ... or `.`")
    worktree = serializers.CharField(help_text="Unstaged change (porcelain v2 Y).")
    orig_path = serializers.CharField()


class GitStatusOut(serializers.Serializer[Any]):
    branch = serializers.CharField()
    commit = serializers.CharField()
    upstream = serializers.CharField()
    ahead = serializers.IntegerField()
    behind = serializers.IntegerField()
    clean = serializers.BooleanField()
    entries = GitStatusEntryOut(many=True)


class GitDiffOut(serializers.Serializer[Any]):
    diff = serializers.CharField()


class GitQuery(serializers.Serializer[Any]):
    path = serializers.CharField(required=False, allow_blank=True, default="", trim_whitespace=False)
    staged = serializers.BooleanField(required=False, default=False)


def _git_out(result: git.GitOutput) -> Response:
    return Response(GitOut(result).data)


@feature_required("git")
class GitClone(APIView):
    actions = {"POST": "workspaces.operate"}

    @extend_schema(
        request=GitCloneIn, responses={200: GitOut, **RUNTIME_ERRORS}, operation_id="workspace_git_clone"
    )
    def post(self, request: Request, workspace_id: int) -> Response:
        workspace = _workspace(workspace_id)
        data = GitCloneIn(data=request.data)
        data.is_valid(raise_exception=True)
        return _git_out(
            git.git_clone(
                actor=_actor(request),
                organization=_tenant(request),
                workspace=workspace,
                **data.validated_data,
            )
        )


@feature_required("git")
class GitBranch(APIView):
    actions = {"POST": "workspaces.operate"}

    @extend_schema(
        request=GitBranchIn, responses={200: GitOut, **RUNTIME_ERRORS}, operation_id="workspace_git_branch"
    )
    def post(self, request: Request, workspace_id: int) -> Response:
        workspace = _workspace(workspace_id)
        data = GitBranchIn(data=request.data)
        data.is_valid(raise_exception=True)
        return _git_out(git.git_branch(actor=_actor(request), workspace=workspace, **data.validated_data))


@feature_required("git")
class GitCommit(APIView):
    actions = {"POST": "workspaces.operate"}

    @extend_schema(
        request=GitCommitIn, responses={200: GitOut, **RUNTIME_ERRORS}, operation_id="workspace_git_commit"
    )
    def post(self, request: Request, workspace_id: int) -> Response:
        workspace = _workspace(workspace_id)
        data = GitCommitIn(data=request.data)
        data.is_valid(raise_exception=True)
        return _git_out(git.git_commit(actor=_actor(request), workspace=workspace, **data.validated_data))


@feature_required("git")
class GitPush(APIView):
    actions = {"POST": "workspaces.operate"}

    @extend_schema(
        request=GitPushIn, responses={200: GitOut, **RUNTIME_ERRORS}, operation_id="workspace_git_push"
    )
    def post(self, request: Request, workspace_id: int) -> Response:
        workspace = _workspace(workspace_id)
        data = GitPushIn(data=request.data)
        data.is_valid(raise_exception=True)
        return _git_out(
            git.git_push(
                actor=_actor(request),
                organization=_tenant(request),
                workspace=workspace,
                **data.validated_data,
            )
        )


GIT_PATH_PARAMETER = OpenApiParameter(
    "path", OpenApiTypes.STR, OpenApiParameter.QUERY, description="The repository, relative to the workspace."
)


@feature_required("git")
class GitStatusView(APIView):
    # Runs git in the sandbox (a repository's config can run commands): an operator's right.
    actions = {"GET": "workspaces.operate"}

    @extend_schema(
        parameters=[GIT_PATH_PARAMETER],
        responses={200: GitStatusOut, **RUNTIME_ERRORS},
        operation_id="workspace_git_status",
    )
    def get(self, request: Request, workspace_id: int) -> Response:
        workspace = _workspace(workspace_id)
        query = GitQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        status = git.git_status(actor=_actor(request), workspace=workspace, path=query.validated_data["path"])
        body = GitStatusOut(status).data
        return Response(body)


@feature_required("git")
class GitDiffView(APIView):
    actions = {"GET": "workspaces.operate"}

    @extend_schema(
        parameters=[
            GIT_PATH_PARAMETER,
            OpenApiParameter(
                "staged", OpenApiTypes.BOOL, OpenApiParameter.QUERY, description="The staged changes."
            ),
        ],
        responses={200: GitDiffOut, **RUNTIME_ERRORS},
        operation_id="workspace_git_diff",
    )
    def get(self, request: Request, workspace_id: int) -> Response:
        workspace = _workspace(workspace_id)
        query = GitQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        diff = git.git_diff(
            actor=_actor(request),
            workspace=workspace,
            path=query.validated_data["path"],
            staged=query.validated_data["staged"],
        )
        return Response({"diff": diff})


# Secrets ------------------------------------------------------------------------------------------


class SecretOut(serializers.ModelSerializer[Secret]):
    class Meta:
        model = Secret
        fields = ["id", "name", "created_at", "updated_at"]


class SecretIn(StrictSerializer):
    name = serializers.CharField(max_length=64)
    value = serializers.CharField(max_length=16384, trim_whitespace=False, write_only=True)


class SecretList(generics.ListAPIView[Secret]):
    actions = {"GET": "secrets.view", "POST": "secrets.manage"}
    serializer_class = SecretOut

    def get_queryset(self) -> QuerySet[Secret]:
        return selectors.secrets_list()

    @extend_schema(
        request=SecretIn,
        responses={200: OpenApiResponse(SecretOut, description="Set: created, or its value replaced.")},
        operation_id="secret_set",
    )
    def post(self, request: Request) -> Response:
        data = SecretIn(data=request.data)
        data.is_valid(raise_exception=True)
        secret = services.secret_set(
            actor=_actor(request), organization=_tenant(request), **data.validated_data
        )
        return Response(SecretOut(secret).data)


class SecretDetail(APIView):
    actions = {"DELETE": "secrets.manage"}

    @extend_schema(responses={204: None}, operation_id="secret_delete")
    def delete(self, request: Request, secret_id: int) -> Response:
        secret = Secret.objects.filter(pk=secret_id).first()
        if secret is None:
            from apps.core.errors import NotFound

            raise NotFound("No such secret.")
        services.secret_delete(actor=_actor(request), organization=_tenant(request), name=secret.name)
        return Response(status=204)
