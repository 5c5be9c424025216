"""Who may do what, in one table: roles for people, scopes for API keys.

Every page decorator, DRF permission and service check reads ACTIONS; the
role-by-action table in docs/roles.md is generated from it
(`python manage.py roles_table`), so the two cannot drift apart.
"""

from dataclasses import dataclass
from typing import Final

from apps.tenancy.models import ApiKey, Membership

Role = Membership.Role
EVERYONE: Final = frozenset(Role)
MANAGERS: Final = frozenset({Role.OWNER, Role.ADMIN})
OWNERS: Final = frozenset({Role.OWNER})
BUILDERS: Final = frozenset({Role.OWNER, Role.ADMIN, Role.MEMBER})
# The billing role exists to pay: it changes the plan and budgets, nothing else.
BILLING_MANAGERS: Final = frozenset({Role.OWNER, Role.ADMIN, Role.BILLING})

ADMIN_SCOPE: Final = "admin"


@dataclass(frozen=True)
class Action:
    key: str
    family: str  # the resource family an API key scope names: "<family>:read" / "<family>:write"
    access: str  # "read" or "write"
    roles: frozenset[Membership.Role]
    description: str

    @property
    def scope(self) -> str:
        return f"{self.family}:{self.access}"


ACTIONS: Final[dict[str, Action]] = {
    action.key: action
    for action in [
        Action(
            "organization.view", "organization", "read", EVERYONE, "See the organization and its settings"
        ),
        Action("organization.update", "organization", "write", MANAGERS, "Rename the organization"),
        Action("members.view", "members", "read", EVERYONE, "See members and invitations"),
        Action("members.invite", "members", "write", MANAGERS, "Invite people and revoke invitations"),
        Action("members.change_role", "members", "write", MANAGERS, "Change a member's role"),
        Action("members.remove", "members", "write", MANAGERS, "Remove a member"),
        Action("members.transfer_ownership", "members", "write", OWNERS, "Hand ownership to another member"),
        Action("api_keys.view", "api_keys", "read", MANAGERS, "See the organization's API keys"),
        Action("api_keys.manage", "api_keys", "write", MANAGERS, "Create and revoke API keys"),
        Action("audit.view", "audit", "read", MANAGERS, "Read and export the audit log"),
        Action("sso.view", "sso", "read", MANAGERS, "See single sign-on settings"),
        Action("sso.manage", "sso", "write", OWNERS, "Configure single sign-on"),
        Action(
            "workspaces.view", "workspaces", "read", EVERYONE, "See workspaces, their files and terminals"
        ),
        Action("workspaces.create", "workspaces", "write", BUILDERS, "Create workspaces"),
        Action(
            "workspaces.operate",
            "workspaces",
            "write",
            BUILDERS,
            "Start and stop workspaces, run commands, edit files, use git, type in terminals",
        ),
        Action("workspaces.destroy", "workspaces", "write", MANAGERS, "Destroy or archive workspaces"),
        Action("secrets.view", "secrets", "read", MANAGERS, "See the names of the organization's secrets"),
        Action("secrets.manage", "secrets", "write", MANAGERS, "Set and delete the organization's secrets"),
        Action("llm.view", "llm", "read", EVERYONE, "See the models the organization may call"),
        Action(
            "llm.call",
            "llm",
            "write",
            BUILDERS,
            "Call models through the LLM gateway (the OpenAI-compatible endpoint)",
        ),
        Action(
            "llm.usage",
            "llm_settings",
            "read",
            MANAGERS,
            "See LLM usage and cost, and which provider credentials are set",
        ),
        Action(
            "llm.manage",
            "llm_settings",
            "write",
            MANAGERS,
            "Enable and disable models, set and delete provider credentials",
        ),
        Action("prompts.view", "prompts", "read", EVERYONE, "See prompt templates, their versions and diffs"),
        Action(
            "prompts.manage",
            "prompts",
            "write",
            BUILDERS,
            "Create prompt templates, save new versions, roll back and delete them",
        ),
        Action(
            "knowledge.view",
            "knowledge",
            "read",
            EVERYONE,
            "Search the organization's knowledge and see its sources",
        ),
        Action(
            "knowledge.manage",
            "knowledge",
            "write",
            BUILDERS,
            "Index repositories, upload documents, delete sources and set retention",
        ),
        Action(
            "agents.view",
            "agents",
            "read",
            EVERYONE,
            "See agent runs, their events and live view, agent profiles and tools",
        ),
        Action(
            "agents.run",
            "agents",
            "write",
            BUILDERS,
            "Start agent runs; cancel, pause, resume, approve or deny them; commit their diff",
        ),
        Action(
            "agents.manage",
            "agents_settings",
            "write",
            MANAGERS,
            "Create, edit and delete agent profiles and the organization's agent tools",
        ),
        Action(
            "billing.view",
            "billing",
            "read",
            EVERYONE,
            "See the plan, its limits, usage and cost, invoices and budgets",
        ),
        Action(
            "billing.manage",
            "billing",
            "write",
            BILLING_MANAGERS,
            "Change the plan (checkout), open the payment portal, set budgets and alert thresholds",
        ),
    ]
}

SCOPES: Final[list[str]] = [*sorted({action.scope for action in ACTIONS.values()}), ADMIN_SCOPE]


def role_allows(role: str, action_key: str) -> bool:
    return role in ACTIONS[action_key].roles


def key_allows(api_key: ApiKey, action_key: str) -> bool:
    """A write scope includes reading the same family; `admin` includes everything."""
    scopes = set(api_key.scopes)
    action = ACTIONS[action_key]
    if ADMIN_SCOPE in scopes or action.scope in scopes:
        return True
    return action.access == "read" and f"{action.family}:write" in scopes


def roles_table_markdown() -> str:
    roles = list(Role)
    lines = [
        "# Roles and actions",
        "",
        "Generated from `apps/tenancy/roles.py` by `python manage.py roles_table`; do not edit by hand.",
        "An API key needs the scope in the last column (or `admin`); a write scope includes reading.",
        "",
        "| action | " + " | ".join(role.label for role in roles) + " | API key scope |",
        "|---|" + "---|" * len(roles) + "---|",
    ]
    for action in ACTIONS.values():
        cells = ["yes" if role in action.roles else "" for role in roles]
        lines.append(
            f"| {action.description} (`{action.key}`) | " + " | ".join(cells) + f" | `{action.scope}` |"
        )
    lines += [
        "",
        "Object-level rules on top of the table: only owners may grant, change or remove the owner",
        "role; the last owner can neither leave nor be removed nor demoted; anyone may leave.",
        "",
    ]
    return "\n".join(lines)
