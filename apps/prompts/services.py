"""Prompt templates: create, new version, roll back, describe, delete (each audited in
the same transaction), and rendering by name for consumers (agents), with a
version pinned or the current one, falling back to the file defaults shipped in
apps/prompts/defaults/ when the organization has no template of that name.

Runs in the current organization's schema (the request's, or a task's)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final

from django.db import IntegrityError, transaction

from apps.core.errors import Conflict, Invalid, NotFound
from apps.prompts import file_defaults, selectors
from apps.prompts import variables as declared_variables
from apps.prompts.models import PromptTemplate, PromptVersion
from apps.prompts.rendering import RenderedPrompt, check_body, render_body
from apps.tenancy.audit import Actor, audit_record
from apps.tenancy.models import Organization

MAX_TEMPLATES: Final = 500


def _user_id(actor: Actor) -> int | None:
    return actor.user.pk if actor.user is not None else None


def _validate_name(name: str) -> str:
    name = name.strip()
    if not file_defaults.NAME_PATTERN.match(name):
        raise Invalid(
            "A template name has 1 to 100 characters: lowercase letters, digits, '.', '_' and '-',"
            " starting with a letter or digit.",
            code="invalid_name",
            field="name",
        )
    return name


def _validate_text(value: str, *, field: str, limit: int) -> str:
    if len(value) > limit:
        raise Invalid(f"The {field} has at most {limit:,} characters.", field=field)
    return value


def _version_summary(version: PromptVersion) -> dict[str, Any]:
    """What the audit log keeps of a version: never the whole body, a fingerprint of it."""
    return {
        "version": version.number,
        "message": version.message,
        "variables": [declaration["name"] for declaration in version.variables],
        "body_sha256": hashlib.sha256(version.body.encode()).hexdigest()[:16],
        "body_chars": len(version.body),
        "restored_from": version.restored_from,
    }


@transaction.atomic
def template_create(
    *,
    actor: Actor,
    organization: Organization,
    name: str,
    body: str,
    variables: Any = None,
    description: str = "",
    message: str = "",
) -> PromptTemplate:
    """A template and its version 1. The body must parse and use only declared variables."""
    name = _validate_name(name)
    description = _validate_text(description, field="description", limit=2000)
    message = _validate_text(message, field="message", limit=500)
    declarations = declared_variables.normalize(variables)
    check_body(body, declarations, template=name)
    if PromptTemplate.objects.count() >= MAX_TEMPLATES:
        raise Conflict(
            f"This organization has {MAX_TEMPLATES} prompt templates, its limit; delete one first.",
            code="template_quota_exceeded",
        )
    if PromptTemplate.objects.filter(name=name).exists():
        raise Conflict(
            "A prompt template with this name exists; choose another.", code="name_taken", field="name"
        )
    try:
        with transaction.atomic():
            template = PromptTemplate.objects.create(
                name=name, description=description, created_by_id=_user_id(actor)
            )
    except IntegrityError:  # created by a concurrent request since the check above
        raise Conflict(
            "A prompt template with this name exists; choose another.", code="name_taken", field="name"
        ) from None
    version = PromptVersion.objects.create(
        template=template,
        number=1,
        body=body,
        variables=declarations,
        message=message or "Created",
        created_by_id=_user_id(actor),
    )
    template.current_version = version
    template.save(update_fields=["current_version", "updated_at"])
    audit_record(
        actor=actor,
        organization=organization,
        action="prompt.created",
        target=template,
        after={"name": name, "description": description, **_version_summary(version)},
    )
    return template


def _locked(template: PromptTemplate) -> PromptTemplate:
    locked = PromptTemplate.objects.select_for_update().filter(pk=template.pk).first()
    if locked is None:
        raise NotFound("No such prompt template.")
    return locked


def _append_version(
    *,
    actor: Actor,
    template: PromptTemplate,
    body: str,
    declarations: list[dict[str, Any]],
    message: str,
    restored_from: int | None = None,
) -> PromptVersion:
    last = PromptVersion.objects.filter(template=template).order_by("-number").first()
    version = PromptVersion.objects.create(
        template=template,
        number=(last.number if last else 0) + 1,
        body=body,
        variables=declarations,
        message=message,
        restored_from=restored_from,
        created_by_id=_user_id(actor),
    )
    template.current_version = version
    template.save(update_fields=["current_version", "updated_at"])
    return version


@transaction.atomic
def version_create(
    *,
    actor: Actor,
    organization: Organization,
    template: PromptTemplate,
    body: str,
    variables: Any = None,
    message: str = "",
    base_version: int | None = None,
) -> PromptVersion:
    """A new current version. `variables` None keeps the current declarations.
    `base_version`: the version the editor started from; if another has been saved
    since, 409 rather than silently overwriting it."""
    template = _locked(template)
    message = _validate_text(message, field="message", limit=500)
    current = template.current_version
    declarations = (
        declared_variables.normalize(variables)
        if variables is not None
        else (list(current.variables) if current else [])
    )
    check_body(body, declarations, template=template.name)
    if base_version is not None and current is not None and current.number != base_version:
        raise Conflict(
            f"Version {current.number} was saved since you started from version {base_version};"
            " review it and edit again.",
            code="version_conflict",
        )
    if current is not None and current.body == body and current.variables == declarations:
        raise Invalid(
            f"Nothing changed: this is version {current.number} already.", code="no_change", field="body"
        )
    version = _append_version(
        actor=actor, template=template, body=body, declarations=declarations, message=message
    )
    audit_record(
        actor=actor,
        organization=organization,
        action="prompt.version_created",
        target=template,
        before=_version_summary(current) if current else None,
        after=_version_summary(version),
    )
    return version


@transaction.atomic
def template_rollback(
    *, actor: Actor, organization: Organization, template: PromptTemplate, number: int, message: str = ""
) -> PromptVersion:
    """A new current version equal to version `number`; the history stays as it was."""
    template = _locked(template)
    old = selectors.version_get(template=template, number=number)
    current = template.current_version
    if current is not None and current.body == old.body and current.variables == old.variables:
        raise Conflict(f"Version {current.number} is already the same as version {number}.", code="no_change")
    message = _validate_text(message, field="message", limit=500) or f"Roll back to version {number}"
    version = _append_version(
        actor=actor,
        template=template,
        body=old.body,
        declarations=list(old.variables),
        message=message,
        restored_from=old.number,
    )
    audit_record(
        actor=actor,
        organization=organization,
        action="prompt.rolled_back",
        target=template,
        before=_version_summary(current) if current else None,
        after=_version_summary(version),
    )
    return version


@transaction.atomic
def template_update(
    *, actor: Actor, organization: Organization, template: PromptTemplate, description: str
) -> PromptTemplate:
    template = _locked(template)
    description = _validate_text(description, field="description", limit=2000)
    before = template.description
    if before != description:
        template.description = description
        template.save(update_fields=["description", "updated_at"])
        audit_record(
            actor=actor,
            organization=organization,
            action="prompt.updated",
            target=template,
            before={"description": before},
            after={"description": description},
        )
    return selectors.template_get(template_id=template.pk)


@transaction.atomic
def template_delete(*, actor: Actor, organization: Organization, template: PromptTemplate) -> None:
    """Delete a template and its history; a file default of the same name applies again."""
    template = _locked(template)
    count = PromptVersion.objects.filter(template=template).count()
    audit_record(
        actor=actor,
        organization=organization,
        action="prompt.deleted",
        target=template,
        before={"name": template.name, "versions": count},
    )
    template.delete()


def template_render(
    name: str, version: int | None = None, variables: Mapping[str, Any] | None = None
) -> RenderedPrompt:
    """Render the organization's template `name` (its current version, or `version`
    pinned), or the file default of that name when the organization has none.

    Raises NotFound for an unknown name or version, PromptError (400) for a missing,
    undeclared or mistyped variable or a failure while rendering."""
    values = dict(variables or {})
    template = selectors.template_by_name(name=name)
    if template is not None:
        if version is None:
            chosen = template.current_version
            if chosen is None:
                raise NotFound(f"The prompt template {name} has no version.", code="version_not_found")
        else:
            chosen = selectors.version_get(template=template, number=version)
        text = render_body(chosen.body, list(chosen.variables), values, template=f"{name} v{chosen.number}")
        return RenderedPrompt(text=text, name=name, version=chosen.number, source="organization")
    default = file_defaults.default_get(name)
    if default is None:
        raise NotFound(f"No prompt template is named {name}.", code="template_not_found")
    if version is not None:
        raise NotFound(
            f"The prompt template {name} is the platform's default, which has no version {version};"
            " create the template in your organization to pin versions.",
            code="version_not_found",
        )
    text = render_body(default.body, default.variables, values, template=f"{name} (default)")
    return RenderedPrompt(text=text, name=name, version=None, source="default")
