"""Budgets refuse a call before anything is sent; estimates come before sending."""

from decimal import Decimal

import pytest

from apps.core.errors import Invalid
from apps.llm import services
from apps.llm.errors import BudgetExceeded
from apps.llm.gateway import gateway
from apps.llm.metering import meter
from apps.llm.types import CallContext
from apps.tenancy.audit import Actor
from apps.tenancy.models import ApiKey, AuditEvent
from tests.fakes.llm_fake import Reply
from tests.fakes.openai_server import FakeOpenAI
from tests.llm.gateway_helpers import ask, chat

pytestmark = pytest.mark.django_db


def spend(fake: FakeOpenAI, context: CallContext, usage: tuple[int, int, int] = (10_000, 1_000, 0)) -> None:
    """One call costing 10,000 * 0.15 + 1,000 * 0.60 per million = 0.0021 USD on gpt-4o-mini."""
    fake.script(Reply(usage=usage))
    chat(ask("gpt-4o-mini", f"spend {len(fake.chat_requests)}"), context)


def test_an_organization_over_its_budget_is_refused_and_nothing_is_sent(world, openai_platform):
    services.budget_set(
        organization=world.alpha, scope="organization", limit_usd="0.002", actor=Actor(user=world.alice)
    )
    context = CallContext(organization_id=world.alpha.pk)
    spend(openai_platform, context)  # under the limit before, over it after
    with pytest.raises(BudgetExceeded) as caught:
        chat(ask("gpt-4o-mini", "one more"), context)
    assert caught.value.status == 402
    assert "this month's budget of the organization: 0.002 USD, 0.0021 USD spent" in caught.value.message
    assert len(openai_platform.chat_requests) == 1
    # The other organization is not affected.
    chat(ask("gpt-4o-mini", "one more"), CallContext(organization_id=world.beta.pk))


def test_written_spend_counts_after_a_flush_too(world, openai_platform):
    context = CallContext(organization_id=world.alpha.pk)
    spend(openai_platform, context)
    meter().flush()
    services.budget_set(
        organization=world.alpha,
        scope="organization",
        limit_usd="0.002",
        period="day",
        actor=Actor(user=world.alice),
    )
    with pytest.raises(BudgetExceeded, match="today's budget"):
        chat(ask("gpt-4o-mini", "again"), context)
    assert len(openai_platform.chat_requests) == 1


def test_a_call_whose_prompt_alone_would_go_over_is_refused(world, openai_platform):
    services.budget_set(
        organization=world.alpha, scope="organization", limit_usd="0.001", actor=Actor(user=world.alice)
    )
    big = "word " * 20_000  # about 20,000 tokens: 0.003 USD of input on gpt-4o-mini
    with pytest.raises(BudgetExceeded):
        chat(ask("gpt-4o-mini", big), CallContext(organization_id=world.alpha.pk))
    assert openai_platform.chat_requests == []


def test_an_api_key_budget_limits_that_key_only(world, openai_platform):
    key = ApiKey.objects.create(organization=world.alpha, name="ci", prefix="ayk_test1", secret_hash="x" * 64)
    services.budget_set(
        organization=world.alpha,
        scope="api_key",
        api_key_id=key.pk,
        limit_usd="0.002",
        actor=Actor(user=world.alice),
    )
    with_key = CallContext(organization_id=world.alpha.pk, api_key_id=key.pk)
    spend(openai_platform, with_key)
    with pytest.raises(BudgetExceeded, match="this API key"):
        chat(ask("gpt-4o-mini", "key again"), with_key)
    chat(ask("gpt-4o-mini", "a person"), CallContext(organization_id=world.alpha.pk, user_id=world.alice.pk))


def test_a_run_budget_limits_that_run_only(world, openai_platform):
    services.budget_set(
        organization=world.alpha,
        scope="run",
        run_id="run-1",
        limit_usd="0.002",
        actor=Actor(user=world.alice),
    )
    run_1 = CallContext(organization_id=world.alpha.pk, run_id="run-1", priority="agent")
    spend(openai_platform, run_1)
    with pytest.raises(BudgetExceeded, match="run run-1"):
        chat(ask("gpt-4o-mini", "run 1 again"), run_1)
    chat(ask("gpt-4o-mini", "run 2"), CallContext(organization_id=world.alpha.pk, run_id="run-2"))
    assert len(openai_platform.chat_requests) == 2


def test_budgets_are_validated_and_audited(world):
    actor = Actor(user=world.alice)
    with pytest.raises(Invalid):
        services.budget_set(organization=world.alpha, scope="team", limit_usd="5", actor=actor)
    with pytest.raises(Invalid):
        services.budget_set(organization=world.alpha, scope="organization", limit_usd="-1", actor=actor)
    with pytest.raises(Invalid):
        services.budget_set(organization=world.alpha, scope="organization", limit_usd="lots", actor=actor)
    other_key = ApiKey.objects.create(
        organization=world.beta, name="b", prefix="ayk_test2", secret_hash="x" * 64
    )
    with pytest.raises(Invalid, match="no such API key"):
        services.budget_set(
            organization=world.alpha, scope="api_key", api_key_id=other_key.pk, limit_usd="5", actor=actor
        )
    budget = services.budget_set(organization=world.alpha, scope="organization", limit_usd="5", actor=actor)
    assert budget.limit_usd == Decimal(5)
    assert AuditEvent.objects.filter(organization=world.alpha, action="llm.budget_set").count() == 1


def test_the_cost_estimate_comes_before_sending(world, openai_platform):
    request = ask("gpt-4o-mini", "word " * 4000, max_tokens=1000)
    estimate = gateway().estimate_cost(request, context=CallContext(organization_id=world.alpha.pk))
    assert estimate["model"] == "gpt-4o-mini"
    assert 4000 <= estimate["input_tokens"] <= 4500
    assert estimate["max_output_tokens"] == 1000
    assert estimate["usd_low"] == pytest.approx(estimate["input_tokens"] * 0.15 / 1e6)
    assert estimate["usd_high"] == pytest.approx(estimate["usd_low"] + 1000 * 0.60 / 1e6)
    assert openai_platform.chat_requests == []
