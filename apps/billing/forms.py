"""Forms of the billing pages. They check the shape of the input; what it means (a plan
the organization may choose, a downgrade its usage allows) is the services' to decide,
and their refusals are shown on the same fields."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django import forms

from apps.billing.models import UsageKind

USAGE_DAYS = (7, 30, 90)
BUDGET_MAX = Decimal("1000000000")  # the Budget column holds 12 digits, 4 after the point
THRESHOLDS_MAX = 10


def budget_parse(value: Any) -> Decimal | None:
    """A monthly budget in US dollars: None for none, else a Decimal >= 0 (0 stops all spend).

    Raises ValueError with the message to show, for the page and the API alike."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float, Decimal)):
        raise ValueError("Enter the budget in US dollars, e.g. 250 or 99.50.")
    text = str(value).strip().lstrip("$").replace(",", "")
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise ValueError(
            f"{str(value)[:40]!r} is not an amount: enter the budget in US dollars, e.g. 250 or 99.50."
        ) from None
    if not amount.is_finite():
        raise ValueError("Enter the budget in US dollars, e.g. 250 or 99.50.")
    if amount < 0:
        raise ValueError(
            "The budget cannot be negative: enter 0 or more US dollars, or leave it empty for none."
        )
    if amount >= BUDGET_MAX:
        raise ValueError("The budget must be less than 1,000,000,000 US dollars.")
    if amount != amount.quantize(Decimal("0.0001")):
        raise ValueError("Give the budget to at most four decimal places.")
    return amount


def thresholds_parse(value: Any) -> list[int]:
    """Alert thresholds in percent of a limit or the budget: whole numbers 1-100, distinct,
    sorted. Accepts a list or text like "50, 80, 100". Raises ValueError with the message."""
    if isinstance(value, str):
        parts = [part.strip().rstrip("%").strip() for part in value.replace(";", ",").split(",")]
        parts = [part for part in parts if part]
    elif isinstance(value, list):
        parts = value
    else:
        raise ValueError("Give the alert thresholds as percentages, e.g. 50, 80, 100.")
    thresholds: set[int] = set()
    for part in parts:
        if isinstance(part, bool):
            raise ValueError("Give the alert thresholds as whole percentages, e.g. 50, 80, 100.")
        try:
            number = int(part) if not isinstance(part, float) or part.is_integer() else None
        except (TypeError, ValueError):
            number = None
        if number is None:
            raise ValueError(f"{str(part)[:20]!r} is not a whole percentage: use e.g. 50, 80, 100.")
        if not 1 <= number <= 100:
            raise ValueError(f"{number}% is out of range: each threshold is between 1 and 100.")
        thresholds.add(number)
    if len(thresholds) > THRESHOLDS_MAX:
        raise ValueError(f"At most {THRESHOLDS_MAX} thresholds.")
    return sorted(thresholds)


class UsageForm(forms.Form):
    days = forms.TypedChoiceField(
        choices=[(str(days), f"Last {days} days") for days in USAGE_DAYS],
        coerce=int,
        required=False,
        empty_value=None,
        error_messages={"invalid_choice": "Choose 7, 30 or 90 days."},
    )
    kind = forms.ChoiceField(
        choices=[("", "Every kind"), *UsageKind.choices],
        required=False,
        error_messages={"invalid_choice": "Choose a kind of usage from the list."},
    )


class PlanChoiceForm(forms.Form):
    plan = forms.SlugField(max_length=50, error_messages={"required": "Choose a plan."})


class BudgetForm(forms.Form):
    budget_usd = forms.CharField(
        label="Monthly budget (USD)",
        required=False,
        max_length=40,
        help_text="Model calls stop with a clear error once this month's LLM spend reaches it."
        " Empty: no budget.",
    )
    alert_thresholds = forms.CharField(
        label="Alert at (% of a limit or the budget)",
        required=False,
        max_length=100,
        help_text="Managers get an email and a notice once per month at each: e.g. 50, 80, 100.",
    )

    def clean_budget_usd(self) -> Decimal | None:
        try:
            return budget_parse(self.cleaned_data.get("budget_usd", ""))
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean_alert_thresholds(self) -> list[int]:
        try:
            return thresholds_parse(self.cleaned_data.get("alert_thresholds", ""))
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None
