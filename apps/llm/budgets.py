"""Budgets, checked before a call is sent.

A budget limits spend in US dollars per day, per month (UTC) or in total, for the
whole organization, one of its API keys, or one agent run. Before a call, every
budget that applies to its CallContext is compared with the spend so far (the
daily roll-ups, plus this process's sums not yet written) plus the least the call
can cost (its prompt at the model's input price). Over the limit: BudgetExceeded
(HTTP 402) naming the budget, and nothing is sent. Another process's calls count
once its meter has flushed (within LLM_METERING_FLUSH_SECONDS).
"""

from __future__ import annotations

from asgiref.sync import sync_to_async

from apps.llm import selectors
from apps.llm.errors import BudgetExceeded
from apps.llm.metering import Meter
from apps.llm.models import Budget
from apps.llm.selectors import BudgetInfo, OrganizationConfig
from apps.llm.types import CallContext

PERIOD_WORDS = {"day": "today's", "month": "this month's", "total": "the total"}


def applicable(config: OrganizationConfig, context: CallContext) -> list[BudgetInfo]:
    budgets = []
    for budget in config.budgets:
        if (
            budget.scope == Budget.Scope.ORGANIZATION
            or (
                budget.scope == Budget.Scope.API_KEY
                and context.api_key_id
                and budget.api_key_id == context.api_key_id
            )
            or (budget.scope == Budget.Scope.RUN and context.run_id and budget.run_id == context.run_id)
        ):
            budgets.append(budget)
    return budgets


def _describe(budget: BudgetInfo) -> str:
    period = PERIOD_WORDS.get(budget.period, budget.period)
    if budget.scope == Budget.Scope.API_KEY:
        return f"{period} budget of this API key"
    if budget.scope == Budget.Scope.RUN:
        return f"{period} budget of run {budget.run_id}"
    return f"{period} budget of the organization"


def budgets_check_sync(
    *, config: OrganizationConfig, context: CallContext, estimate_usd: float, meter: Meter
) -> None:
    for budget in applicable(config, context):
        spent = selectors.budget_spent(organization_id=context.organization_id, budget=budget)
        spent += meter.pending_cost(
            organization_id=context.organization_id,
            api_key_id=budget.api_key_id if budget.scope == Budget.Scope.API_KEY else None,
            run_id=budget.run_id if budget.scope == Budget.Scope.RUN else None,
        )
        if spent + estimate_usd > budget.limit_usd or spent >= budget.limit_usd:
            raise BudgetExceeded(
                f"The call would go over {_describe(budget)}: {budget.limit_usd:g} USD,"
                f" {spent:.6g} USD spent, this call at least {estimate_usd:.6g} USD."
            )


async def budgets_check(
    *, config: OrganizationConfig, context: CallContext, estimate_usd: float, meter: Meter
) -> None:
    if not applicable(config, context):
        return  # no query at all for the usual case
    await sync_to_async(budgets_check_sync)(
        config=config, context=context, estimate_usd=estimate_usd, meter=meter
    )
