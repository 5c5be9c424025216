"""`manage.py agent`: start an agent run from the terminal and watch it.

    manage.py agent run --org demo --workspace demo "Make the failing test pass" [--profile P]
    manage.py agent watch --org demo <run id> [--after N]

`run` creates the run as the organization's owner (or --user, who must be allowed to
run agents) through the same service as the API, then streams its events as the worker
writes them: the table is read by seq, so nothing is missed or shown twice, whatever the
broadcasts do. A progress line (step, tokens, cost, state) stays at the bottom on a
terminal and is printed after each step otherwise. The exit status says how the run
ended: 0 succeeded, 1 failed or cancelled, 2 a mistake on the command line (unknown
organization, workspace, profile or user; a workspace that is not running; an empty task),
130 interrupted (the run goes on).
"""

from __future__ import annotations

import time
import uuid
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django_tenants.utils import schema_context

from apps.accounts.models import User
from apps.agents import selectors, services
from apps.agents.models import AgentProfile, AgentRun, Event
from apps.core.errors import ServiceError
from apps.tenancy.audit import Actor
from apps.tenancy.hosts import organization_host
from apps.tenancy.models import Membership, Organization
from apps.tenancy.roles import role_allows
from apps.workspaces.models import Workspace

USAGE_ERROR = 2
RUN_NOT_SUCCEEDED = 1
INTERRUPTED = 130
POLL_SECONDS = 0.25
PAGE = 200
# Lines of a command's output shown per observation; the rest is on the run's page.
OUTPUT_LINES = 40


def _usage(message: str) -> CommandError:
    return CommandError(message, returncode=USAGE_ERROR)


def _organization(slug: str) -> Organization:
    organization = Organization.objects.filter(slug=slug).first()
    if organization is None:
        raise _usage(f"There is no organization {slug!r}.")
    if organization.status != Organization.Status.ACTIVE:
        raise _usage(f"The organization {slug!r} is {organization.get_status_display().lower()}.")
    return organization


def _user(organization: Organization, email: str | None) -> User:
    memberships = Membership.objects.select_related("user").filter(
        organization=organization, user__is_active=True
    )
    if email:
        membership = memberships.filter(user__email__iexact=email).first()
        if membership is None:
            raise _usage(f"{email} is not a member of {organization.slug}.")
        if not role_allows(membership.role, "agents.run"):
            raise _usage(f"{email} is a {membership.get_role_display().lower()}, who may not run agents.")
        return membership.user
    owner = memberships.filter(role=Membership.Role.OWNER).order_by("created_at").first()
    if owner is None:
        raise _usage(f"{organization.slug} has no owner to run the agent as; name one with --user.")
    return owner.user


def _workspace(name_or_id: str) -> Workspace:
    workspaces = Workspace.objects.exclude(state=Workspace.State.DELETED)
    found = workspaces.filter(name=name_or_id).first()
    if found is None and name_or_id.isdigit():
        found = workspaces.filter(pk=int(name_or_id)).first()
    if found is None:
        names = ", ".join(workspaces.order_by("name").values_list("name", flat=True)) or "none"
        raise _usage(f"There is no workspace {name_or_id!r} (workspaces: {names}).")
    return found


def _profile(name_or_id: str | None) -> AgentProfile | None:
    if not name_or_id:
        return None
    found = AgentProfile.objects.filter(name=name_or_id).first()
    if found is None and name_or_id.isdigit():
        found = AgentProfile.objects.filter(pk=int(name_or_id)).first()
    if found is None:
        names = ", ".join(selectors.profiles_list().values_list("name", flat=True)) or "none"
        raise _usage(f"There is no agent profile {name_or_id!r} (profiles: {names}).")
    return found


def run_url(organization: Organization, run: AgentRun) -> str:
    port = f":{settings.SITE_PORT}" if settings.SITE_PORT else ""
    return f"http://{organization_host(organization)}{port}/agents/runs/{run.pk}/"


class Progress:
    """The run's figures as its events arrive, and the line that shows them."""

    def __init__(self, run: AgentRun) -> None:
        self.state = run.state
        self.step = run.steps
        self.input_tokens = run.input_tokens
        self.output_tokens = run.output_tokens
        self.cost = Decimal(run.cost)
        self.base_seq = run.last_seq

    def add(self, event: Event) -> None:
        if event.kind == Event.Kind.STATE and event.payload.get("state"):
            self.state = str(event.payload["state"])
        self.step = max(self.step, event.step)
        if event.seq > self.base_seq:
            self.input_tokens += event.input_tokens
            self.output_tokens += event.output_tokens
            self.cost += Decimal(event.cost)

    def line(self) -> str:
        return (
            f"step {self.step} · {self.input_tokens:,} in / {self.output_tokens:,} out tokens"
            f" · ${self.cost:.6f} · {self.state.replace('_', ' ')}"
        )


def _indent(text: str, limit: int = OUTPUT_LINES) -> str:
    lines = text.rstrip("\n").splitlines() or [""]
    shown = lines[:limit]
    if len(lines) > limit:
        shown.append(f"… {len(lines) - limit} more lines on the run's page")
    return "\n".join(f"    {line}" for line in shown)


def describe(event: Event) -> str:
    """One event as the terminal shows it."""
    payload = event.payload
    if event.kind == Event.Kind.MESSAGE:
        who = "task" if payload.get("role") == "user" else "agent"
        return f"{who}: {payload.get('text', '')}"
    if event.kind == Event.Kind.ACTION:
        tool = str(payload.get("tool") or "")
        arguments = payload.get("arguments") or {}
        lines = []
        if payload.get("thought"):
            lines.append(f"  thinking: {payload['thought']}")
        if tool == "bash":
            what = f"$ {arguments.get('command', '')}"
        elif tool == "str_replace_editor":
            what = f"{arguments.get('command', '')} {arguments.get('path', '')}".strip()
        elif tool == "finish":
            what = str(arguments.get("answer", ""))
        else:
            what = ", ".join(f"{key}={value!r}" for key, value in arguments.items())
        lines.append(f"[step {event.step}] {tool or 'answer'}: {what}")
        if payload.get("risk"):
            lines.append(f"  needs approval: {payload['risk']}")
        if payload.get("valid") is False and payload.get("problem"):
            lines.append(f"  not a valid tool call: {payload['problem']}")
        return "\n".join(lines)
    if event.kind == Event.Kind.OBSERVATION:
        data = payload.get("data") or {}
        head = "  error" if payload.get("error") else "  output"
        if data.get("exit_code") is not None:
            head += f" (exit {data['exit_code']})"
        body = str(data.get("diff") or "") + str(payload.get("output") or "")
        return f"{head}:\n{_indent(body)}" if body.strip() else head
    if event.kind == Event.Kind.STATE:
        reason = payload.get("reason")
        text = f"state: {str(payload.get('state', '')).replace('_', ' ')}" + (
            f" ({reason})" if reason else ""
        )
        if payload.get("state") == AgentRun.State.WAITING:
            text += (
                "\n  approve or deny it on the run's page, or POST"
                f" /api/v1/agents/runs/{event.run_id}/approve (or /deny)"
            )
        return text
    return f"error: {payload.get('message') or payload.get('code') or 'unknown'}"


class Command(BaseCommand):
    help = "Start an agent run on a workspace and stream its events (agent run), or watch one (agent watch)."

    def add_arguments(self, parser: CommandParser) -> None:
        commands = parser.add_subparsers(dest="action", required=True, metavar="{run,watch}")
        run = commands.add_parser("run", help="start a run and stream its events until it ends")
        run.add_argument("--org", required=True, help="the organization's slug")
        run.add_argument(
            "--workspace", required=True, help="the workspace's name (or id); it must be running"
        )
        run.add_argument("task", help="what the agent should do")
        run.add_argument("--profile", help="an agent profile's name (or id); default: the default settings")
        run.add_argument("--user", help="the member the run is started as (email); default: the owner")
        run.add_argument(
            "--priority", choices=AgentRun.Priority.values, default=AgentRun.Priority.INTERACTIVE
        )
        run.add_argument(
            "--detach", action="store_true", help="print the run's id and page, and do not wait for it"
        )
        watch = commands.add_parser("watch", help="stream an existing run's events until it ends")
        watch.add_argument("--org", required=True, help="the organization's slug")
        watch.add_argument("run_id", help="the run's id")
        watch.add_argument("--after", type=int, default=0, help="only events after this sequence number")

    def handle(self, *args: Any, **options: Any) -> None:
        organization = _organization(options["org"])
        with schema_context(organization.schema_name):
            if options["action"] == "run":
                run = self._start(organization, options)
                self.stdout.write(f"Run {run.pk} queued: {run_url(organization, run)}")
                if options["detach"]:
                    return
                after = 0
            else:
                run = self._existing(options["run_id"])
                self.stdout.write(
                    f"Run {run.pk} ({run.get_state_display().lower()}): {run_url(organization, run)}"
                )
                after = max(options["after"], 0)
            final = self._follow(organization, run, after)
        if final.state != AgentRun.State.SUCCEEDED:
            raise SystemExit(RUN_NOT_SUCCEEDED)

    def _start(self, organization: Organization, options: dict[str, Any]) -> AgentRun:
        user = _user(organization, options.get("user"))
        workspace = _workspace(options["workspace"])
        found_profile = _profile(options.get("profile"))
        try:
            return services.run_create(
                actor=Actor(user=user, user_agent="manage.py agent run"),
                organization=organization,
                workspace=workspace,
                task=options["task"],
                profile=found_profile,
                priority=options["priority"],
            )
        except ServiceError as exc:
            raise _usage(exc.message) from None

    def _existing(self, run_id: str) -> AgentRun:
        try:
            return selectors.run_get(run_id=uuid.UUID(run_id))
        except (ValueError, ServiceError):
            raise _usage(f"There is no run {run_id!r} in this organization.") from None

    def _follow(self, organization: Organization, run: AgentRun, after: int) -> AgentRun:
        """Print the run's events after `after` as they are stored, until it ends."""
        progress = Progress(run)
        terminal = self.stdout.isatty()
        shown = ""
        try:
            while True:
                events = selectors.events_after(run=run, after=after, limit=PAGE)
                if shown and terminal and events:
                    self.stdout.write("\r\033[K", ending="")
                for event in events:
                    progress.add(event)
                    self.stdout.write(describe(event))
                    after = event.seq
                line = progress.line()
                if terminal:
                    if events or line != shown:
                        self.stdout.write(f"\r\033[K{line}", ending="")
                        self.stdout.flush()
                elif events and line != shown:
                    self.stdout.write(f"-- {line}")
                shown = line
                if len(events) == PAGE:
                    continue
                run.refresh_from_db(fields=["state", "last_seq", "state_reason"])
                if run.finished and after >= run.last_seq:
                    break
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            self.stdout.write("")
            self.stderr.write(
                f"Stopped watching; the run goes on: {run_url(organization, run)}\n"
                "Watch it again with: manage.py agent watch"
                f" --org {organization.slug} {run.pk} --after {after}"
            )
            raise SystemExit(INTERRUPTED) from None
        if terminal:
            self.stdout.write("")
        run.refresh_from_db()
        self.stdout.write(f"Run {run.get_state_display().lower()}: {run.state_reason}".rstrip(": "))
        return run
