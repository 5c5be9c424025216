"""The create form. It only parses shapes (lines into lists and NAME=value pairs);
the rules (templates, limits, allow-list entries) are the service's, and its
refusals are shown on the field they name."""

from typing import Any

from django import forms
from django.conf import settings

from apps.workspaces.validation import templates


class WorkspaceForm(forms.Form):
    name = forms.CharField(max_length=64, label="Name", help_text="Letters, digits, spaces, dots, dashes.")
    template = forms.ChoiceField(label="Template", widget=forms.RadioSelect)
    repo_url = forms.CharField(
        max_length=500, required=False, label="Repository (optional)", help_text="The project it holds."
    )
    cpus = forms.FloatField(label="CPUs", initial=1.0, min_value=0.1)
    memory_mb = forms.IntegerField(label="Memory (MB)", initial=1024)
    disk_mb = forms.IntegerField(label="Disk (MB)", initial=2048)
    pids = forms.IntegerField(label="Processes", initial=256)
    idle_timeout_seconds = forms.IntegerField(
        label="Stop when idle for (seconds)", initial=3600, help_text="No command, file change or keystroke."
    )
    network_allow = forms.CharField(
        required=False,
        label="Network allow-list",
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "github.com:443"}),
        help_text="One host:port a line. Empty: no network at all.",
    )
    env = forms.CharField(
        required=False,
        label="Environment variables",
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "NAME=value", "autocomplete": "off"}),
        help_text="One NAME=value a line. Stored encrypted; only the names are shown afterwards.",
    )
    start = forms.BooleanField(required=False, initial=True, label="Start it now")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choices = templates()
        template = self.fields["template"]
        assert isinstance(template, forms.ChoiceField)
        template.choices = [(key, f"{value.title} — {value.description}") for key, value in choices.items()]
        template.initial = "base" if "base" in choices else next(iter(choices), "")
        self.fields["cpus"].help_text = f"At most {settings.WORKSPACES_MAX_CPUS}."
        self.fields["memory_mb"].help_text = f"At most {settings.WORKSPACES_MAX_MEMORY_MB} MB."
        self.fields["disk_mb"].help_text = f"At most {settings.WORKSPACES_MAX_DISK_MB} MB."
        self.fields["pids"].help_text = f"At most {settings.WORKSPACES_MAX_PIDS}."

    def clean_network_allow(self) -> list[str]:
        text: str = self.cleaned_data.get("network_allow") or ""
        return [line.strip() for line in text.splitlines() if line.strip()]

    def clean_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        text: str = self.cleaned_data.get("env") or ""
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            name, separator, value = line.partition("=")
            if not separator:
                raise forms.ValidationError(f"Line {number} is not NAME=value.")
            env[name.strip()] = value
        return env


class FileForm(forms.Form):
    content = forms.CharField(
        required=False, strip=False, widget=forms.Textarea(attrs={"rows": 24, "spellcheck": "false"})
    )


class SecretForm(forms.Form):
    """Set a secret: its name and value. The value is never rendered back, not even after an error."""

    name = forms.CharField(
        max_length=64,
        label="Name",
        help_text="Letters, digits and _, not starting with a digit (e.g. GITHUB_TOKEN). An existing"
        " name gets the new value.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    value = forms.CharField(
        max_length=16 * 1024,
        strip=False,
        label="Value",
        help_text="Stored encrypted; it is never shown again.",
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
    )
