"""Forms of the prompt template pages. Declared variables are edited as TOML lines
(`task = { type = "string", required = true }`), the shape the file defaults use."""

import json
from typing import Any

from django import forms

from apps.core.errors import Invalid
from apps.prompts import variables as declared_variables

VARIABLES_HELP = (
    'One line per variable: name = { type = "string", required = true, description = "..." }.'
    " Types: string, integer, number, boolean, list, object. An optional variable may have a default."
)


class _VersionFields(forms.Form):
    body = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 16, "spellcheck": "false", "class": "code"}),
        strip=False,
        help_text="Jinja: {{ variable }}, {% if %}, {% for %}. Only declared variables may be used.",
    )
    variables = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 5, "spellcheck": "false", "class": "code"}),
        help_text=VARIABLES_HELP,
    )
    message = forms.CharField(max_length=500, required=False, help_text="What changed, for the history.")

    def clean_variables(self) -> list[dict[str, Any]]:
        try:
            return declared_variables.from_toml(self.cleaned_data.get("variables") or "")
        except Invalid as exc:
            raise forms.ValidationError(exc.message) from None


class TemplateForm(_VersionFields):
    name = forms.CharField(
        max_length=100, help_text="Lowercase letters, digits, '.', '_' and '-'; e.g. agent.system."
    )
    description = forms.CharField(max_length=2000, required=False)
    field_order = ["name", "description", "body", "variables", "message"]


class VersionForm(_VersionFields):
    base_version = forms.IntegerField(widget=forms.HiddenInput, min_value=1)


class PreviewForm(forms.Form):
    values = forms.CharField(
        required=False,
        label="Variables (JSON)",
        widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false", "class": "code"}),
        help_text='An object, e.g. {"task": "Fix the failing test"}.',
    )

    def clean_values(self) -> dict[str, Any]:
        text = (self.cleaned_data.get("values") or "").strip()
        if not text:
            return {}
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc.msg} (line {exc.lineno}).") from None
        if not isinstance(value, dict):
            raise forms.ValidationError("Give a JSON object of variable names to values.")
        return value
