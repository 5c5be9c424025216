"""An organization's prompt templates and their versions. Tenant schema: each
organization has its own tables, so a name is unique per organization.

A version is never changed once written: editing makes a new version, rolling
back makes a new version equal to an old one, and the template points at its
current version. Consumers may pin a version number instead of following it."""

from typing import Any, ClassVar

from django.db import models


class PromptTemplate(models.Model):
    name = models.CharField(max_length=100, unique=True)
    description = models.CharField(max_length=2000, blank=True, default="")
    current_version = models.ForeignKey(
        "PromptVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # Users live in the public schema; a plain id keeps this table free of a cross-schema key.
    created_by_id = models.BigIntegerField(null=True, blank=True)

    class Meta:
        ordering: ClassVar[list[str]] = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def variables(self) -> list[dict[str, Any]]:
        return list(self.current_version.variables) if self.current_version else []


class PromptVersion(models.Model):
    template = models.ForeignKey(PromptTemplate, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    body = models.TextField()
    # Declared variables: [{"name", "type", "required", "default"?, "description"}].
    variables = models.JSONField(default=list, blank=True)
    message = models.CharField(max_length=500, blank=True, default="")
    # Set on a roll back: the version whose body and variables this one restores.
    restored_from = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by_id = models.BigIntegerField(null=True, blank=True)

    class Meta:
        ordering: ClassVar[list[str]] = ["template", "-number"]
        constraints: ClassVar[list[models.BaseConstraint]] = [
            models.UniqueConstraint(fields=["template", "number"], name="prompt_version_number_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.template.name} v{self.number}"
