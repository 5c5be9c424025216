"""Reads of prompt templates (the current organization's schema) and their versions."""

from __future__ import annotations

import difflib
from typing import Any

from django.db.models import QuerySet

from apps.core.errors import NotFound
from apps.prompts.models import PromptTemplate, PromptVersion


def templates_list() -> QuerySet[PromptTemplate]:
    return PromptTemplate.objects.select_related("current_version").order_by("name")


def template_get(*, template_id: int) -> PromptTemplate:
    template = templates_list().filter(pk=template_id).first()
    if template is None:
        raise NotFound("No such prompt template.")
    return template


def template_by_name(*, name: str) -> PromptTemplate | None:
    return templates_list().filter(name=name).first()


def versions_list(*, template: PromptTemplate) -> QuerySet[PromptVersion]:
    return PromptVersion.objects.filter(template=template).order_by("-number")


def version_get(*, template: PromptTemplate, number: int) -> PromptVersion:
    version = PromptVersion.objects.filter(template=template, number=number).first()
    if version is None:
        raise NotFound(
            f"The prompt template {template.name} has no version {number}.", code="version_not_found"
        )
    return version


def _variables_changes(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> dict[str, list[str]]:
    old = {declaration["name"]: declaration for declaration in before}
    new = {declaration["name"]: declaration for declaration in after}
    return {
        "added": [name for name in new if name not in old],
        "removed": [name for name in old if name not in new],
        "changed": [name for name in new if name in old and old[name] != new[name]],
    }


def versions_diff(
    *, template: PromptTemplate, from_number: int, to_number: int, context: int = 3
) -> dict[str, Any]:
    """A unified diff of two versions' bodies, and which declared variables changed."""
    old = version_get(template=template, number=from_number)
    new = version_get(template=template, number=to_number)
    lines = difflib.unified_diff(
        old.body.splitlines(keepends=True),
        new.body.splitlines(keepends=True),
        fromfile=f"{template.name} v{old.number}",
        tofile=f"{template.name} v{new.number}",
        n=context,
    )
    diff = "".join(
        line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines
    )
    return {
        "template": template.name,
        "from": old.number,
        "to": new.number,
        "diff": diff,
        "identical": old.body == new.body and old.variables == new.variables,
        "variables": _variables_changes(list(old.variables), list(new.variables)),
    }
