"""An owner opens the LLM usage page with some usage, sees the chart and the numbers
(Alpha's only), changes the period, then switches a model off on the models page."""

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone
from playwright.sync_api import expect

from apps.llm import selectors
from apps.llm.models import ModelAccess, UsageDaily, UsageHourly
from apps.tenancy.models import AuditEvent
from tests.conftest import ARTIFACTS, LiveServer, World

pytestmark = pytest.mark.browser
MODEL = "gpt-4o-mini"


@pytest.fixture
def usage(live_db: World) -> Iterator[None]:
    # Only these rows: earlier tests' real calls (agent runs on the local model) were metered too.
    UsageDaily.objects.filter(organization__in=[live_db.alpha, live_db.beta]).delete()
    UsageHourly.objects.filter(organization__in=[live_db.alpha, live_db.beta]).delete()
    today = timezone.now().date()
    rows = [
        UsageDaily.objects.create(
            organization=live_db.alpha,
            day=today - timedelta(days=offset),
            model=model,
            provider=provider,
            user_id=live_db.alice.pk,
            requests=requests,
            input_tokens=1000 * requests,
            output_tokens=100 * requests,
            cost_usd=cost,
        )
        for offset, model, provider, requests, cost in [
            (0, MODEL, "openai", 3, Decimal("0.30")),
            (0, "claude-3-5-haiku", "anthropic", 1, Decimal("0.05")),
            (2, MODEL, "openai", 2, Decimal("0.12")),
        ]
    ]
    rows.append(
        UsageDaily.objects.create(
            organization=live_db.beta,
            day=today,
            model="beta-only-model",
            provider="openai",
            user_id=live_db.bob.pk,
            requests=40,
            cost_usd=Decimal("8"),
        )
    )
    yield
    UsageDaily.objects.filter(pk__in=[row.pk for row in rows]).delete()
    ModelAccess.objects.filter(organization=live_db.alpha).delete()
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {AuditEvent._meta.db_table} WHERE organization_id = %s"  # noqa: S608
            " AND action LIKE 'llm.model_%%'",
            [live_db.alpha.pk],
        )
    selectors.snapshots_clear()


def test_usage_chart_and_numbers_then_switch_a_model_off(
    page: Any, asgi_server: LiveServer, world: World, usage: None
) -> None:
    page.goto(asgi_server.url(path="/login/"))
    page.get_by_label("Email").fill(world.alice.email)
    page.get_by_label("Password").fill(world.password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Alpha")

    page.get_by_role("navigation", name="Organization").get_by_role("link", name="Models").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Models")
    page.get_by_role("navigation", name="LLM gateway").get_by_role("link", name="Usage").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Usage")

    chart = page.get_by_test_id("usage-chart")
    expect(chart).to_be_visible()
    expect(chart.locator("svg")).to_be_visible()
    expect(page.get_by_test_id("chart-bar")).to_have_count(3)
    tallest = page.locator(f'[data-testid="chart-bar"][data-model="{MODEL}"]').first
    assert float(tallest.get_attribute("height") or 0) > 10
    expect(page.get_by_test_id("legend-item")).to_have_text([MODEL, "claude-3-5-haiku"])
    expect(page.get_by_test_id("total-requests")).to_have_text("6")
    expect(page.get_by_test_id("total-cost")).to_have_text("$0.47")
    expect(
        page.locator(f'[data-testid="model-usage-row"][data-model="{MODEL}"] [data-testid="cost"]')
    ).to_have_text("$0.42")
    expect(page.get_by_text("beta-only-model")).to_have_count(0)
    (ARTIFACTS / "screenshots").mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "screenshots" / "llm_usage_page.png"), full_page=True)

    page.get_by_label("Chart").select_option("requests")
    page.get_by_role("button", name="Show").click()
    expect(page).to_have_url(f"{asgi_server.url(world.alpha, '/llm/usage/')}?days=30&metric=requests")
    expect(page.get_by_role("heading", name="Requests per day, by model")).to_be_visible()

    page.get_by_role("navigation", name="LLM gateway").get_by_role("link", name="Models").click()
    row = page.locator(f'[data-testid="model-row"][data-name="{MODEL}"]')
    expect(row.get_by_test_id("model-state")).to_have_text("On")
    row.get_by_role("button", name=f"Turn off {MODEL}").click()
    expect(page.get_by_text(f"{MODEL} is now off for Alpha.")).to_be_visible()
    expect(row.get_by_test_id("model-state")).to_have_text("Off")
    expect(row).to_have_attribute("data-enabled", "false")
    assert ModelAccess.objects.get(organization=world.alpha, model__name=MODEL).enabled is False
