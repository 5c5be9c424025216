"""The tools a run may call: built-ins and the organization's own, by the profile's allow-list.

    toolbox = tools_for(run)
    toolbox.llm_tools()            # what the gateway offers the model
    spec = toolbox.get(wire_name)  # the tool the model chose

A tool's name on the wire must match the providers' rule (letters, digits, _ and -, at
most 64); an organization's MCP tool is named "<server>.<tool>", so its wire name has
the dot replaced. Every handler is wrapped to count its calls, errors and time in
ToolStat (per organization: the table is in its schema).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from django.db import connection
from django.utils import timezone

from apps.agents.models import ToolStat
from apps.agents.tools.base import ToolCallContext, ToolOutcome, ToolSpec
from apps.llm.types import Tool
from apps.tenancy.models import Organization

if TYPE_CHECKING:
    from apps.agents.models import AgentRun

WIRE_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
# Without `finish` a run could only end by a budget, whatever the allow-list says.
ALWAYS_ALLOWED = frozenset({"finish"})


def wire_name(name: str) -> str:
    return WIRE_NAME_UNSAFE.sub("_", name)[:64]


def tool_stat_record(*, tool: str, elapsed_ms: float, error: str | None) -> None:
    """One call of `tool`: counted, timed, and its error kept when it failed (one statement:
    this runs at every step)."""
    table = ToolStat._meta.db_table
    failed = error is not None
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (tool, calls, errors, total_ms, last_used_at, last_error)"  # noqa: S608 (ours)
            " VALUES (%s, 1, %s, %s, %s, %s) ON CONFLICT (tool) DO UPDATE SET"
            f" calls = {table}.calls + 1, errors = {table}.errors + EXCLUDED.errors,"
            f" total_ms = {table}.total_ms + EXCLUDED.total_ms, last_used_at = EXCLUDED.last_used_at,"
            f" last_error = CASE WHEN %s THEN EXCLUDED.last_error ELSE {table}.last_error END",
            [tool, int(failed), round(elapsed_ms), timezone.now(), (error or "")[:1000], failed],
        )


def _counted(spec: ToolSpec) -> Callable[[ToolCallContext, dict[str, Any]], ToolOutcome]:
    handler = spec.handler

    def call(context: ToolCallContext, arguments: dict[str, Any]) -> ToolOutcome:
        started = time.perf_counter()
        error: str | None = None
        try:
            outcome = handler(context, arguments)
            if outcome.error:
                error = outcome.output.strip().splitlines()[0] if outcome.output.strip() else "error"
            return outcome
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            tool_stat_record(tool=spec.name, elapsed_ms=(time.perf_counter() - started) * 1000, error=error)

    return call


@dataclass(frozen=True)
class Toolbox:
    specs: dict[str, ToolSpec]  # by wire name

    def llm_tools(self) -> tuple[Tool, ...]:
        return tuple(
            Tool(name=name, description=spec.description, parameters=spec.parameters)
            for name, spec in self.specs.items()
        )

    def get(self, name: str) -> ToolSpec | None:
        return self.specs.get(name)

    def names(self) -> list[str]:
        return list(self.specs)


def _organization_tools(run: AgentRun) -> list[ToolSpec]:
    try:
        from apps.agents.tools.organization import organization_tools
    except ImportError:  # the organization's tools are optional to the loop
        return []
    return list(organization_tools(run))


def _knowledge_allowed(organization: Organization | None) -> bool:
    """Whether the plan has the `knowledge` feature (this process's reading of it, so a step
    costs no query); without it the knowledge_search tool is not offered."""
    from apps.billing.features import feature_enabled_cached

    if organization is None:  # called outside the loop: the organization of the current schema
        schema = getattr(connection, "schema_name", "public")
        organization = Organization.objects.filter(schema_name=schema).first()
        if organization is None:
            return False
    return feature_enabled_cached(organization_id=organization.pk, key="knowledge")


def tools_for(run: AgentRun, *, organization: Organization | None = None) -> Toolbox:
    """The run's tools: built-ins first (they win a name clash), then the organization's,
    kept to the profile's allow-list when it has one, and to what the plan has."""
    from apps.agents.tools.builtin import builtin_tools
    from apps.knowledge.agent import TOOL_NAME as KNOWLEDGE_TOOL

    allowed = set(run.settings.get("tools") or [])
    knowledge = _knowledge_allowed(organization)
    specs: dict[str, ToolSpec] = {}
    for spec in [*builtin_tools(), *_organization_tools(run)]:
        if allowed and spec.name not in allowed and spec.name not in ALWAYS_ALLOWED:
            continue
        if spec.name == KNOWLEDGE_TOOL and not knowledge:
            continue
        name = wire_name(spec.name)
        if name in specs:
            continue
        specs[name] = replace(spec, handler=_counted(spec))
    return Toolbox(specs=specs)
