"""Reads of the organization's agent tools and their usage (current schema)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import QuerySet

from apps.agents.models import OrganizationTool, ToolStat
from apps.core.errors import NotFound


def tools_list() -> QuerySet[OrganizationTool]:
    return OrganizationTool.objects.order_by("name")


def tool_get(*, tool_id: int) -> OrganizationTool:
    tool = OrganizationTool.objects.filter(pk=tool_id).first()
    if tool is None:
        raise NotFound("No such agent tool.")
    return tool


@dataclass(frozen=True)
class ToolUsage:
    tool: str
    calls: int
    errors: int
    error_rate: float  # 0..1
    avg_ms: float
    last_error: str
    last_used_at: datetime | None


def tool_usage(stat: ToolStat) -> ToolUsage:
    return ToolUsage(
        tool=stat.tool,
        calls=stat.calls,
        errors=stat.errors,
        error_rate=stat.error_rate,
        avg_ms=stat.total_ms / stat.calls if stat.calls else 0.0,
        last_error=stat.last_error,
        last_used_at=stat.last_used_at,
    )


def tool_stats_list() -> list[ToolUsage]:
    """Every tool the organization's runs have called, most called first."""
    return [tool_usage(stat) for stat in ToolStat.objects.order_by("-calls", "tool")]
