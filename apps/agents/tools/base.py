"""What every agent tool is: a name, a JSON Schema for its arguments, and a handler.

Built-in tools (apps/agents/tools/builtin.py) and the organization's own tools
(HTTP endpoints and MCP servers, apps/agents/tools/organization.py) all become a
`ToolSpec`; the loop offers their schemas to the model through the gateway and calls
the handler of the one the model chose. A handler never raises for a bad call or a
failed command: it returns `ToolOutcome(error=True)` with a message the model can act
on. It raises only when the platform itself fails (runtime unreachable), which the
loop records as an error event.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from apps.agents.models import AgentRun
    from apps.tenancy.audit import Actor
    from apps.tenancy.models import Organization
    from apps.workspaces.models import Workspace


@dataclass
class ToolCallContext:
    run: AgentRun
    organization: Organization
    workspace: Workspace
    actor: Actor  # the member who started the run
    step: int
    # time.monotonic() by which the run's wall-time budget ends
    deadline: float


@dataclass(frozen=True)
class ToolOutcome:
    output: str  # what the model reads back (already truncated with a marker when long)
    error: bool = False
    # Shown in the run's timeline, not sent to the model: e.g. {"exit_code": 0},
    # {"path": ..., "diff": ...} for an edit.
    data: dict[str, Any] = field(default_factory=dict)
    # The `finish` tool sets it: the run ends, succeeded, with this answer.
    finish: str | None = None


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON Schema of the arguments object
    handler: Callable[[ToolCallContext, dict[str, Any]], ToolOutcome]
    # The reason a call needs a member's approval in confirmation mode, or None.
    risk: Callable[[dict[str, Any]], str | None] | None = None
    # "builtin", "http" or "mcp"
    source: str = "builtin"
