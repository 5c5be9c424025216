"""The feature registry: every module a plan can grant, declared here with its key."""

from __future__ import annotations

FEATURES: dict[str, str] = {
    "core_environment": "Workspaces with a sandboxed development environment",
    "git": "Git operations on workspace repositories",
    "terminal": "Interactive terminals in workspaces",
    "ai_assistance": "AI agents and the LLM gateway",
    "code_analysis": "Code analysis tools for agents",
    "testing_tools": "Test running and coverage tools for agents",
    "performance_profiling": "Performance profiling tools",
    "knowledge": "Shared knowledge: indexed repositories, documents and search",
    "multi_agent": "Multi-agent plans: several agents working together",
    "sso": "Single sign-on through the organization's own identity provider (OIDC)",
    "audit_export": "Exporting the organization's audit log",
}
