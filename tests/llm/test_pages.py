"""The LLM gateway pages, as people use them: the models page (catalog, prices, whose
key, the switch for managers), provider keys (set, never shown back, delete), usage
by day, model and person with its chart; who may do what, bad input on its field
with a 4xx, and another organization's usage never shown."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client, override_settings
from django.utils import timezone

from apps.llm import selectors
from apps.llm.credentials import api_key_decrypt
from apps.llm.models import ModelAccess, ProviderCredential, UsageDaily
from apps.llm.pages import money, price, usage_chart
from apps.tenancy import identity
from apps.tenancy.audit import Actor
from apps.tenancy.models import AuditEvent, Membership
from tests.conftest import World, client_for
from tests.factories import make_user

pytestmark = pytest.mark.django_db
NO_PLATFORM_KEYS = override_settings(OPENAI_API_KEY="", ANTHROPIC_API_KEY="", GEMINI_API_KEY="")


@pytest.fixture(autouse=True)
def _fresh_snapshots() -> Iterator[None]:
    # The gateway keeps per-process snapshots of organizations' settings; these tests roll back.
    selectors.snapshots_clear()
    yield
    selectors.snapshots_clear()


def _client_with_role(world: World, role: str) -> Client:
    user = make_user(f"{role}-llm@alpha.test")
    Membership.objects.create(user=user, organization=world.alpha, role=role)
    return client_for(user, world.alpha)


def _rows(page: str, testid: str, attribute: str) -> list[str]:
    return re.findall(rf'data-testid="{testid}" data-{attribute}="([^"]*)"', page)


def _usage(world: World, **fields: Any) -> UsageDaily:
    defaults: dict[str, Any] = {
        "organization": world.alpha,
        "day": timezone.now().date(),
        "model": "gpt-4o-mini",
        "provider": "openai",
        "requests": 1,
        "input_tokens": 100,
        "output_tokens": 10,
        "cost_usd": Decimal("0.001"),
    }
    return UsageDaily.objects.create(**{**defaults, **fields})


# Models -------------------------------------------------------------------------------------------


@NO_PLATFORM_KEYS
def test_a_member_sees_the_catalog_with_prices_and_key_sources_but_no_switch(world: World) -> None:
    response = client_for(world.amy, world.alpha).get("/llm/models/")
    assert response.status_code == 200
    page = response.content.decode()
    assert 'href="/llm/models/" aria-current="page">Models</a>' in page  # in the sidebar
    names = _rows(page, "model-row", "name")
    assert "smollm2-135m" in names
    assert "gpt-4o-mini" in names
    local = page[page.index('data-name="smollm2-135m"') :]
    local = local[: local.index("</tr>")]
    assert "None needed" in local  # the local model needs no key
    gpt = page[page.index('data-name="gpt-4o-mini"') :]
    gpt = gpt[: gpt.index("</tr>")]
    assert "Missing" in gpt  # no platform key and none of Alpha's
    assert '<span class="badge">tools</span>' in gpt
    assert re.search(r'<td class="num">\$\d+\.\d+</td>', gpt)  # prices per million tokens
    assert "/llm/models/switch/" not in page  # members read, managers switch
    assert 'href="/llm/usage/"' not in page  # usage and keys are for managers


@NO_PLATFORM_KEYS
def test_a_manager_switches_a_model_off_and_on_audited(world: World) -> None:
    alice = client_for(world.alice, world.alpha)
    page = alice.get("/llm/models/").content.decode()
    assert 'Turn off<span class="visually-hidden"> gpt-4o-mini</span>' in page
    off = alice.post("/llm/models/switch/", {"model": "gpt-4o-mini", "enabled": "0"}, follow=True)
    assert off.status_code == 200
    page = off.content.decode()
    assert "gpt-4o-mini is now off for Alpha." in page
    assert 'data-name="gpt-4o-mini" data-enabled="false"' in page
    assert ModelAccess.objects.get(organization=world.alpha, model__name="gpt-4o-mini").enabled is False
    assert not ModelAccess.objects.filter(organization=world.beta).exists()
    on = alice.post("/llm/models/switch/", {"model": "gpt-4o-mini", "enabled": "1"}, follow=True)
    assert 'data-name="gpt-4o-mini" data-enabled="true"' in on.content.decode()
    actions = list(
        AuditEvent.objects.filter(organization=world.alpha, action__startswith="llm.model_")
        .order_by("pk")
        .values_list("action", flat=True)
    )
    assert actions == ["llm.model_disabled", "llm.model_enabled"]


def test_bad_switches_are_400_with_the_reason(world: World) -> None:
    alice = client_for(world.alice, world.alpha)
    unknown = alice.post("/llm/models/switch/", {"model": "no-such-model", "enabled": "0"})
    assert unknown.status_code == 400
    assert "There is no model &#x27;no-such-model&#x27; in the catalog." in unknown.content.decode()
    bad_state = alice.post("/llm/models/switch/", {"model": "gpt-4o-mini", "enabled": "maybe"})
    assert bad_state.status_code == 400
    assert "Say whether to turn the model on (1) or off (0)." in bad_state.content.decode()
    missing = alice.post("/llm/models/switch/", {"enabled": "0"})
    assert missing.status_code == 400
    assert 'data-testid="switch-errors"' in missing.content.decode()
    assert not ModelAccess.objects.filter(organization=world.alpha).exists()


@pytest.mark.parametrize("role", ["member", "viewer", "billing"])
def test_only_managers_change_anything(world: World, role: str) -> None:
    client = _client_with_role(world, role)
    assert client.get("/llm/models/").status_code == 200  # everyone sees the models
    for path, body in [
        ("/llm/models/switch/", {"model": "gpt-4o-mini", "enabled": "0"}),
        ("/llm/credentials/set/", {"provider": "openai", "api_key": "sk-nope-1234"}),
        ("/llm/credentials/delete/", {"provider": "openai"}),
    ]:
        response = client.post(path, body)
        assert response.status_code == 403, path
        assert (
            "llm.manage" in response.content.decode()
            or "Enable and disable models" in response.content.decode()
        )
    assert client.get("/llm/credentials/").status_code == 403
    assert client.get("/llm/usage/").status_code == 403
    assert not ModelAccess.objects.filter(organization=world.alpha).exists()
    assert not ProviderCredential.objects.filter(organization=world.alpha).exists()


def test_an_admin_may_manage(world: World) -> None:
    admin = _client_with_role(world, "admin")
    assert admin.get("/llm/usage/").status_code == 200
    assert admin.get("/llm/credentials/").status_code == 200
    response = admin.post("/llm/models/switch/", {"model": "gpt-4o", "enabled": "0"})
    assert response.status_code == 302


# Credentials --------------------------------------------------------------------------------------


@NO_PLATFORM_KEYS
def test_a_key_is_set_encrypted_never_shown_back_and_deleted(world: World) -> None:
    alice = client_for(world.alice, world.alpha)
    page = alice.get("/llm/credentials/")
    assert page.status_code == 200
    assert page["Cache-Control"] == "no-store"
    assert _rows(page.content.decode(), "credential-row", "provider")  # one row a provider
    assert 'type="password" name="api_key"' in page.content.decode()

    saved = alice.post(
        "/llm/credentials/set/", {"provider": "openai", "api_key": "sk-alpha-secret-9876"}, follow=True
    )
    assert saved.status_code == 200
    page_text = saved.content.decode()
    assert "The openai key …9876 was saved" in page_text
    assert "sk-alpha-secret" not in page_text
    assert 'data-testid="key-hint">…9876<' in page_text
    credential = ProviderCredential.objects.get(organization=world.alpha, provider="openai")
    assert "sk-alpha" not in credential.api_key_encrypted
    assert api_key_decrypt(credential.api_key_encrypted) == "sk-alpha-secret-9876"
    models = alice.get("/llm/models/").content.decode()
    gpt = models[models.index('data-name="gpt-4o-mini"') :]
    assert "Organization&#x27;s key" in gpt[: gpt.index("</tr>")]
    # Beta's pages know nothing of Alpha's key.
    beta_page = client_for(world.bob, world.beta).get("/llm/credentials/").content.decode()
    assert "9876" not in beta_page

    deleted = alice.post("/llm/credentials/delete/", {"provider": "openai"}, follow=True)
    assert "The openai key was deleted" in deleted.content.decode()
    assert not ProviderCredential.objects.filter(organization=world.alpha).exists()
    actions = list(
        AuditEvent.objects.filter(organization=world.alpha, action__startswith="llm.credential")
        .order_by("pk")
        .values_list("action", flat=True)
    )
    assert actions == ["llm.credential_set", "llm.credential_deleted"]


def test_openai_compatible_takes_a_base_url(world: World) -> None:
    alice = client_for(world.alice, world.alpha)
    response = alice.post(
        "/llm/credentials/set/",
        {"provider": "openai_compatible", "api_key": "", "base_url": "https://llm.alpha.test/v1"},
        follow=True,
    )
    assert response.status_code == 200
    assert "<code>https://llm.alpha.test/v1</code>" in response.content.decode()
    credential = ProviderCredential.objects.get(organization=world.alpha, provider="openai_compatible")
    assert credential.base_url == "https://llm.alpha.test/v1"


def test_bad_credentials_are_shown_on_their_field(world: World) -> None:
    alice = client_for(world.alice, world.alpha)

    def error_of(body: dict[str, str], status: int = 400) -> str:
        response = alice.post("/llm/credentials/set/", body)
        assert response.status_code == status, response.content
        page = response.content.decode()
        match = re.search(
            r'class="field has-error">\s*<label for="id_(\w+)".*?class="field-error" role="alert">([^<]+)<',
            page,
            re.S,
        )
        assert match, page
        return f"{match.group(1)}: {match.group(2)}"

    assert error_of({"provider": "openai", "api_key": ""}) == "api_key: Enter the API key."
    assert error_of({"provider": "nope", "api_key": "k"}).startswith(
        "provider: Unknown provider &#x27;nope&#x27;"
    )
    assert (
        error_of({"provider": "local", "api_key": "k"})
        == "provider: The local provider needs no credentials."
    )
    assert (
        error_of({"provider": "openai_compatible", "api_key": "k"})
        == "base_url: The openai_compatible provider needs a base URL."
    )
    assert (
        error_of({"provider": "openai", "api_key": "k", "base_url": "ftp://x"})
        == "base_url: The base URL must be an http:// or https:// address."
    )
    assert error_of({"provider": "openai", "api_key": "k" * 1001}).startswith("api_key: Ensure this value")
    assert error_of({"api_key": "k"}) == "provider: This field is required."
    missing = alice.post("/llm/credentials/delete/", {"provider": "anthropic"})
    assert missing.status_code == 404
    assert "The organization has no anthropic credentials." in missing.content.decode()
    assert alice.post("/llm/credentials/delete/", {}).status_code == 400
    assert not ProviderCredential.objects.filter(organization=world.alpha).exists()


# Usage --------------------------------------------------------------------------------------------


def test_usage_shows_only_the_organizations_own_by_day_model_and_person(world: World) -> None:
    today = timezone.now().date()
    api_key, _ = identity.api_key_create(
        actor=Actor(user=world.alice), organization=world.alpha, name="nightly job", scopes=["llm:write"]
    )
    _usage(world, user_id=world.alice.pk, requests=3, cost_usd=Decimal("0.30"))
    _usage(
        world, user_id=world.amy.pk, model="claude-3-5-haiku", provider="anthropic", cost_usd=Decimal("0.05")
    )
    _usage(world, day=today - timedelta(days=2), user_id=world.alice.pk, cost_usd=Decimal("0.10"), failures=2)
    _usage(world, day=today - timedelta(days=1), api_key_id=api_key.pk, requests=4, cost_usd=Decimal("0.02"))
    _usage(world, day=today - timedelta(days=60), user_id=world.alice.pk, cost_usd=Decimal("9"))
    _usage(
        world,
        organization=world.beta,
        user_id=world.bob.pk,
        model="beta-only-model",
        requests=50,
        cost_usd=Decimal("7"),
    )

    response = client_for(world.alice, world.alpha).get("/llm/usage/?days=30")
    assert response.status_code == 200
    page = response.content.decode()
    assert 'data-testid="total-requests">9<' in page
    assert 'data-testid="total-cost">$0.47<' in page
    assert 'data-testid="total-failures">2<' in page
    assert _rows(page, "model-usage-row", "model") == ["gpt-4o-mini", "claude-3-5-haiku"]
    assert _rows(page, "user-usage-row", "email") == ["alice@alpha.test", "amy@alpha.test", ""]
    assert "nightly job" in page
    assert api_key.prefix in page
    assert _rows(page, "day-usage-row", "day") == [
        str(today),
        str(today - timedelta(days=1)),
        str(today - timedelta(days=2)),
    ]
    bars = re.findall(r'data-testid="chart-bar" data-day="([^"]+)" data-model="([^"]+)"', page)
    assert sorted(bars) == sorted(
        [
            (str(today), "gpt-4o-mini"),
            (str(today), "claude-3-5-haiku"),
            (str(today - timedelta(days=1)), "gpt-4o-mini"),
            (str(today - timedelta(days=2)), "gpt-4o-mini"),
        ]
    )
    assert "<title>" + f"{today} · gpt-4o-mini: $0.30</title>" in page
    # Beta's usage is never on Alpha's page, and Beta sees only its own.
    assert "bob@beta.test" not in page
    assert "beta-only-model" not in page
    assert "$7" not in page
    beta = client_for(world.bob, world.beta).get("/llm/usage/").content.decode()
    assert _rows(beta, "model-usage-row", "model") == ["beta-only-model"]
    assert "alice@alpha.test" not in beta

    longer = client_for(world.alice, world.alpha).get("/llm/usage/?days=90&metric=requests").content.decode()
    assert 'data-testid="total-cost">$9.47<' in longer
    assert f"{today} · gpt-4o-mini: 3</title>" in longer
    assert 'value="90" selected' in longer
    tokens = client_for(world.alice, world.alpha).get("/llm/usage/?days=7&metric=tokens").content.decode()
    assert f"{today} · gpt-4o-mini: 110</title>" in tokens
    assert "Tokens (input + output) per day, by model" in tokens


def test_usage_is_empty_when_nothing_was_used(world: World) -> None:
    page = client_for(world.alice, world.alpha).get("/llm/usage/").content.decode()
    assert 'data-testid="usage-empty"' in page
    assert "Alpha called no model in the last 30 days." in page
    assert 'data-testid="usage-chart"' not in page
    assert 'data-testid="total-cost">$0.00<' in page


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("days=14", "Choose 7, 30 or 90 days (14 is not one of them)."),
        ("days=x", "Choose 7, 30 or 90 days (x is not one of them)."),
        ("metric=bananas", "Chart cost, requests or tokens (not bananas)."),
    ],
)
def test_a_bad_period_or_metric_is_400_on_its_field(world: World, query: str, message: str) -> None:
    response = client_for(world.alice, world.alpha).get(f"/llm/usage/?{query}")
    assert response.status_code == 400
    page = response.content.decode()
    assert f'<p class="field-error" role="alert">{message}</p>' in page
    assert 'data-testid="usage-totals"' not in page


def test_the_chart_has_a_bar_a_day_scaled_to_the_busiest() -> None:
    today = date(2026, 3, 10)
    summary = {
        "by_model": [{"model": "a"}, {"model": "b"}],
        "rows": [
            {
                "day": today,
                "model": "a",
                "cost_usd": Decimal("2"),
                "requests": 1,
                "input_tokens": 0,
                "output_tokens": 0,
            },
            {
                "day": today,
                "model": "b",
                "cost_usd": Decimal("2"),
                "requests": 1,
                "input_tokens": 0,
                "output_tokens": 0,
            },
            {
                "day": today - timedelta(days=3),
                "model": "a",
                "cost_usd": Decimal("1"),
                "requests": 1,
                "input_tokens": 0,
                "output_tokens": 0,
            },
        ],
    }
    chart = usage_chart(summary, days=7, metric="cost", today=today)
    plot_height = chart.bottom - chart.top
    assert len(chart.segments) == 3
    busiest = [segment for segment in chart.segments if segment.day == today]
    assert sum(segment.height for segment in busiest) == pytest.approx(plot_height)
    assert busiest[1].y == pytest.approx(chart.top)  # stacked to the top
    quieter = next(segment for segment in chart.segments if segment.day != today)
    assert quieter.height == pytest.approx(plot_height / 4)
    assert [tick.label for tick in chart.ticks] == ["$0.00", "$2.00", "$4.00"]
    assert chart.legend[0][0] == "a"
    assert chart.legend[0][1] != chart.legend[1][1]
    assert chart.days[-1].label == "Mar 10"


def test_money_keeps_small_amounts_readable() -> None:
    assert money(Decimal("0")) == "$0.00"
    assert money(Decimal("1234.5")) == "$1,234.50"
    assert money(Decimal("0.0015")) == "$0.0015"
    assert money(0.15) == "$0.15"
    assert money(Decimal("0.0000001")) == "<$0.000001"
    assert price(2.5) == "$2.50"
    assert price(0.075) == "$0.075"
    assert price(0) == "$0.00"
    assert price(1250) == "$1,250.00"
