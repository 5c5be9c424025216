"""Forms of the LLM gateway pages. They check the shape of the input; what it means
(a catalog model, a known provider, a usable base URL) is the services' to decide,
and their refusals are shown on the same fields."""

from typing import Any

from django import forms

from apps.llm.providers.openai_compatible import OPTION_VALUES, SERVER_PRESETS

USAGE_DAYS = (7, 30, 90)
USAGE_METRICS = {"cost": "Cost (USD)", "requests": "Requests", "tokens": "Tokens (input + output)"}


class ModelSwitchForm(forms.Form):
    model = forms.CharField(max_length=100)
    enabled = forms.TypedChoiceField(
        choices=[("1", "on"), ("0", "off")],
        coerce=lambda value: value == "1",
        error_messages={"invalid_choice": "Say whether to turn the model on (1) or off (0)."},
    )


class CredentialForm(forms.Form):
    provider = forms.CharField(max_length=50, widget=forms.Select)
    api_key = forms.CharField(
        label="API key",
        max_length=1000,
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Stored encrypted and never shown again, only its last characters."
        " Replaces the organization's earlier key for this provider.",
    )
    base_url = forms.CharField(
        label="Base URL",
        max_length=500,
        required=False,
        widget=forms.URLInput(attrs={"placeholder": "https://llm.example.com/v1"}),
        help_text="Needed for openai_compatible (vLLM, Ollama, llama.cpp server...);"
        " for the others only to go through a proxy.",
    )

    # openai_compatible only: how the server differs from OpenAI's API.
    server = forms.ChoiceField(
        label="Server",
        required=False,
        choices=[("", "generic"), *((name, name) for name in SERVER_PRESETS if name != "generic")],
        help_text="openai_compatible only: vLLM, TGI, llama.cpp, Ollama and TabbyAPI each copy"
        " OpenAI's API a little differently; the choice sets the four options below.",
    )
    tools = forms.ChoiceField(
        label="Tool calls",
        required=False,
        choices=[
            ("", "the server's default"),
            ("native", "native"),
            ("emulated", "emulated (in the prompt)"),
        ],
    )
    json = forms.ChoiceField(
        label="JSON output",
        required=False,
        choices=[("", "the server's default"), *((name, name) for name in OPTION_VALUES["json"])],
    )
    stream_usage = forms.TypedChoiceField(
        label="Reports usage when streaming",
        required=False,
        choices=[("", "the server's default"), ("1", "yes"), ("0", "no")],
        coerce=lambda value: value == "1",
        empty_value=None,
    )

    def __init__(self, *args: Any, providers: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        widget = self.fields["provider"].widget
        assert isinstance(widget, forms.Select)
        widget.choices = [(name, name) for name in providers or []]

    def options(self) -> dict[str, Any]:
        return {name: self.cleaned_data.get(name) for name in ("server", "tools", "json", "stream_usage")}


class CredentialDeleteForm(forms.Form):
    provider = forms.CharField(max_length=50)


class UsageForm(forms.Form):
    days = forms.TypedChoiceField(
        label="Period",
        choices=[(str(days), f"Last {days} days") for days in USAGE_DAYS],
        coerce=int,
        required=False,
        error_messages={
            "invalid_choice": "Choose 7, 30 or 90 days (%(value)s is not one of them).",
        },
    )
    metric = forms.ChoiceField(
        label="Chart",
        choices=list(USAGE_METRICS.items()),
        required=False,
        error_messages={"invalid_choice": "Chart cost, requests or tokens (not %(value)s)."},
    )

    def clean_days(self) -> int:
        return int(self.cleaned_data.get("days") or 30)

    def clean_metric(self) -> str:
        return str(self.cleaned_data.get("metric") or "cost")
