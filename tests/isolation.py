"""The cross-tenant isolation checker.

It walks every URL pattern of a tenant URLconf (so a new endpoint cannot be
forgotten), fills each parameter with an object of organization Alpha, and
requests it on Alpha's host as: nobody, a member of Beta, and a person in no
organization. None of them may get Alpha's data: only a redirect to the public
login page, 401, 403, 404 or 405 is acceptable.
"""

import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.test import Client
from django.urls import URLPattern, URLResolver
from django.urls.resolvers import RoutePattern

from tests.conftest import World, client_for, host


# Parameter name -> a function that makes an object in the current (Alpha's)
# schema and returns the value to put in the URL. A new URL parameter needs an
# entry here, or the suite fails naming it: an endpoint cannot slip by untested.
def _alpha_member(world: World) -> int:
    from apps.tenancy.models import Membership

    return Membership.objects.get(organization=world.alpha, user=world.amy).pk


def _alpha_invitation(world: World) -> int:
    from datetime import timedelta

    from django.utils import timezone

    from apps.tenancy.models import Invitation

    invitation, _ = Invitation.objects.get_or_create(
        organization=world.alpha,
        email="invitee@alpha.test",
        defaults={"token_hash": uuid.uuid4().hex, "expires_at": timezone.now() + timedelta(days=1)},
    )
    return invitation.pk


def _alpha_api_key(world: World) -> int:
    from apps.tenancy.models import ApiKey

    api_key, _ = ApiKey.objects.get_or_create(
        organization=world.alpha, prefix="isoalpha0001", defaults={"name": "sample", "secret_hash": "0" * 64}
    )
    return api_key.pk


def _alpha_workspace(world: World) -> int:
    """A stopped workspace row of Alpha: enough for every route (refusals come before the runtime)."""
    from apps.workspaces.models import Workspace

    workspace, _ = Workspace.objects.get_or_create(
        name="isolation-sample", defaults={"state": Workspace.State.STOPPED}
    )
    return workspace.pk


def _alpha_secret(world: World) -> int:
    from apps.workspaces.crypto import encrypt_text
    from apps.workspaces.models import Secret

    secret, _ = Secret.objects.get_or_create(
        name="ISOLATION_SAMPLE", defaults={"value_encrypted": encrypt_text("alpha-only")}
    )
    return secret.pk


def _alpha_prompt(world: World) -> int:
    """A prompt template of Alpha with two versions (every route: read, diff, roll back, render)."""
    from apps.prompts import services as prompts_services
    from apps.prompts.models import PromptTemplate
    from apps.tenancy.audit import Actor

    template = PromptTemplate.objects.filter(name="isolation-sample").first()
    if template is None:
        actor = Actor(user=world.alice)
        template = prompts_services.template_create(
            actor=actor, organization=world.alpha, name="isolation-sample", body="Alpha's secret prompt v1"
        )
        prompts_services.version_create(
            actor=actor, organization=world.alpha, template=template, body="Alpha's secret prompt v2"
        )
    return template.pk


def _alpha_prompt_version(world: World) -> int:
    _alpha_prompt(world)
    return 1


def _alpha_knowledge_source(world: World) -> int:
    """A document source of Alpha with one chunk (rows only: refusals come before the index)."""
    from apps.knowledge.models import KnowledgeChunk, KnowledgeSource

    name = "isolation-sample.md"
    source, created = KnowledgeSource.objects.get_or_create(
        kind="document", name=name, defaults={"uri": name, "status": "ready", "chunk_count": 1}
    )
    if created:
        KnowledgeChunk.objects.create(
            key=f"isolation-{source.pk}",
            source=source,
            kind="document",
            path=name,
            text="Alpha's secret knowledge",
            content_hash="0" * 64,
        )
    return source.pk


def _alpha_agent_profile(world: World) -> int:
    from apps.agents.models import AgentProfile

    profile, _ = AgentProfile.objects.get_or_create(
        name="isolation-sample", defaults={"role": "Alpha's agent"}
    )
    return profile.pk


def _alpha_run(world: World) -> str:
    """A finished run of Alpha with a secret in its events, result and diff (rows only)."""
    from apps.agents.events import event_append
    from apps.agents.models import AgentRun

    run = AgentRun.objects.filter(task="isolation-sample: Alpha's secret task").first()
    if run is None:
        run = AgentRun.objects.create(
            task="isolation-sample: Alpha's secret task",
            workspace_id=_alpha_workspace(world),
            state=AgentRun.State.SUCCEEDED,
            result={"answer": "Alpha's secret answer", "diff": "+alpha secret\n", "commit": None},
        )
        event_append(run=run, kind="message", payload={"role": "user", "text": "Alpha's secret task"})
    return str(run.pk)


def _catalog_model(world: World) -> str:
    """A model name (/v1/models/<model_id>): the catalog is shared, the key decides who asks."""
    return "smollm2-135m"


def _alpha_agent_tool(world: World) -> int:
    """An MCP server tool of Alpha with a secret header (its test would connect out: refusals come first)."""
    import json

    from apps.agents.models import OrganizationTool
    from apps.workspaces.crypto import encrypt_text

    tool, _ = OrganizationTool.objects.get_or_create(
        name="isolation-sample",
        defaults={
            "kind": "mcp",
            "url": "http://127.0.0.1:9/mcp",
            "headers_encrypted": encrypt_text(json.dumps({"Authorization": "Bearer alpha-only"})),
        },
    )
    return tool.pk


SAMPLE_VALUES: dict[str, Callable[[World], Any]] = {
    "member_id": _alpha_member,
    "invitation_id": _alpha_invitation,
    "key_id": _alpha_api_key,
    "workspace_id": _alpha_workspace,
    "secret_id": _alpha_secret,
    "prompt_id": _alpha_prompt,
    "prompt_version": _alpha_prompt_version,
    "model_id": _catalog_model,
    "source_id": _alpha_knowledge_source,
    "profile_id": _alpha_agent_profile,
    "run_id": _alpha_run,
    "tool_id": _alpha_agent_tool,
    "endpoint": lambda world: "responses",  # /v1/<path:endpoint>: APIs the OpenAI endpoint lacks
}

REFUSED = {400, 401, 403, 404, 405}
METHODS = ("get", "post", "put", "patch", "delete")


@dataclass(frozen=True)
class Endpoint:
    route: str  # as written in the URLconf, e.g. "notices/<int:notice_id>/"
    name: str | None


def tenant_endpoints(urlconf: ModuleType) -> Iterator[Endpoint]:
    def walk(patterns: list[Any], prefix: str) -> Iterator[Endpoint]:
        for entry in patterns:
            if not isinstance(entry.pattern, RoutePattern):
                raise AssertionError(
                    f"{prefix}{entry.pattern} uses re_path; use path() so the isolation suite can fill it"
                )
            route = prefix + str(entry.pattern)
            if isinstance(entry, URLResolver):
                yield from walk(list(entry.url_patterns), route)
            elif isinstance(entry, URLPattern):
                yield Endpoint(route=route, name=entry.name)

    yield from walk(list(urlconf.urlpatterns), "")


_PARAMETER = re.compile(r"<(?:(?P<converter>[^>:]+):)?(?P<name>[^>]+)>")


def concrete_path(endpoint: Endpoint, world: World) -> str:
    def fill(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in SAMPLE_VALUES:
            raise AssertionError(
                f"{endpoint.route}: add a sample for the URL parameter '{name}' to "
                "tests/isolation.py SAMPLE_VALUES (an object of organization Alpha)"
            )
        return str(SAMPLE_VALUES[name](world))

    return "/" + _PARAMETER.sub(fill, endpoint.route)


def _refused(response: Any) -> bool:
    if response.status_code in REFUSED:
        return True
    if response.status_code in {301, 302, 303, 307, 308}:
        # Only a way out to the public site (the login page, say) is acceptable.
        location = urlsplit(str(response.headers.get("Location", "")))
        return location.hostname == settings.BASE_DOMAIN
    return False


def find_leaks(urlconf: ModuleType, world: World) -> list[str]:
    """Every (endpoint, method, visitor) that got something other than a refusal."""
    from django_tenants.utils import schema_context

    visitors: dict[str, Client] = {
        "anonymous": client_for(None, world.alpha),
        "member of beta": client_for(world.ben, world.alpha),
        "owner of beta": client_for(world.bob, world.alpha),
        "no organization": client_for(world.olga, world.alpha),
    }
    # API keys of Beta with every scope: on Alpha's host, and on the public host
    # (where the key selects Beta) asking for Alpha's objects.
    beta_key = beta_admin_key(world)
    key_visitors: dict[str, Client] = {
        "beta's admin key on alpha's host": Client(HTTP_HOST=host(world.alpha), HTTP_AUTHORIZATION=beta_key),
        "beta's admin key on the API host": Client(HTTP_HOST=host(None), HTTP_AUTHORIZATION=beta_key),
    }
    leaks = []
    for endpoint in tenant_endpoints(urlconf):
        with schema_context(world.alpha.schema_name):
            path = concrete_path(endpoint, world)
        is_api = path.startswith("/api/")
        for method in METHODS:
            for who, client in visitors.items() | (key_visitors.items() if is_api else {}.items()):
                response = getattr(client, method)(path, data={} if method == "get" else None)
                if who.endswith("on the API host") and _has_parameters(endpoint):
                    # Beta's own collection is Beta's to see; Alpha's objects must be 404.
                    if response.status_code not in {404, 405}:
                        leaks.append(f"{method.upper()} {path} as {who}: {response.status_code}")
                    continue
                if who.endswith("on the API host"):
                    continue
                if not _refused(response):
                    leaks.append(f"{method.upper()} {path} as {who}: {response.status_code}")
    return leaks


def _has_parameters(endpoint: Endpoint) -> bool:
    return bool(_PARAMETER.search(endpoint.route))


def beta_admin_key(world: World) -> str:
    from apps.tenancy import identity
    from apps.tenancy.audit import Actor

    _, raw = identity.api_key_create(
        actor=Actor(user=world.bob), organization=world.beta, name="isolation", scopes=["admin"]
    )
    return f"Bearer {raw}"


def sample_uuid(_: World) -> str:
    return str(uuid.uuid4())
