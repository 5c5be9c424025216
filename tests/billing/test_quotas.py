"""Limits and quotas, enforced at the moment of use: sandbox starts (also under a race
for the last slot), workspaces, storage, sandbox hours, members, agent runs and monthly
LLM tokens; and the 50/80/100 % alerts, once per threshold and month."""

import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.core import mail
from django.db import connection, connections
from django.test import Client
from django.utils import timezone
from django_tenants.utils import schema_context

from apps.billing.ledger import usage_record
from apps.billing.models import QuotaAlert
from apps.billing.quotas import QuotaExceeded, quota_alerts_record
from apps.billing.services import account_overrides_set
from apps.llm.types import CallContext
from apps.notices.models import Notice
from apps.scheduling.limits import organization_run_limit
from apps.tenancy import identity
from apps.tenancy.audit import Actor
from apps.tenancy.models import AuditEvent, Invitation, Membership
from apps.workspaces import services as workspaces
from apps.workspaces.models import Workspace
from apps.workspaces.runtime import runtime_client
from tests.api.conftest import key_client, new_key
from tests.billing.plan_helpers import make_staff, on_plan, plan_set
from tests.conftest import World
from tests.factories import make_user
from tests.fakes.llm_fake import Reply
from tests.fakes.openai_server import FakeOpenAI
from tests.llm.conftest import _gateway_state_reset, openai_fake  # noqa: F401 (fixtures)
from tests.llm.gateway_helpers import ask, chat
from tests.llm.gateway_helpers import openai_platform as openai_platform  # a fixture
from tests.runtime_server import RuntimeServer

API = "/api/v1"


def _api(world: World) -> Client:
    _, raw = new_key(world, ["admin"], name="quota admin")
    return key_client(raw)


def _post(client: Client, path: str, body: dict[str, Any]) -> Any:
    import json

    return client.post(API + path, data=json.dumps(body), content_type="application/json")


def _in_alpha(world: World) -> Any:
    return schema_context(world.alpha.schema_name)


# --- workspaces, storage, sandbox hours ------------------------------------------


@pytest.mark.django_db
def test_a_workspace_beyond_the_plans_limit_is_refused_naming_the_plan_and_numbers(world: World) -> None:
    with _in_alpha(world):
        existing = Workspace.objects.exclude(state=Workspace.State.DELETED).count()
    plan_set(world.alpha, "free", limit_overrides={"workspaces": existing + 1})
    with _in_alpha(world):
        workspaces.workspace_create(
            actor=Actor(user=world.alice), organization=world.alpha, name="last-one", provision=False
        )

    refused = _post(_api(world), "/workspaces", {"name": "one-too-many", "start": False})
    assert refused.status_code == 402
    body = refused.json()
    assert body["code"] == "quota_exceeded"
    assert (body["limit"], body["plan"], body["allowed"], body["used"]) == (
        "workspaces",
        "free",
        existing + 1,
        existing + 1,
    )
    assert body["detail"] == (
        f"The Free plan allows {existing + 1} workspace{'s' if existing else ''}; Alpha has {existing + 1}."
        " Destroy a workspace or upgrade the plan."
    )
    with _in_alpha(world):
        assert not Workspace.objects.filter(name="one-too-many").exists()


@pytest.mark.django_db
def test_workspace_disk_counts_against_the_storage_limit(world: World) -> None:
    plan_set(world.alpha, "free", limit_overrides={"storage_gb": 1})
    with _in_alpha(world):
        allocated = sum(
            Workspace.objects.exclude(state=Workspace.State.DELETED).values_list("disk_mb", flat=True)
        )
    refused = _post(_api(world), "/workspaces", {"name": "big-disk", "disk_mb": 2048, "start": False})
    assert refused.status_code == 402
    body = refused.json()
    assert body["limit"] == "storage_gb"
    assert "The Free plan allows 1 GB of workspace storage" in body["detail"]
    assert allocated / 1024 == body["used"]


@pytest.mark.django_db
def test_a_start_is_refused_once_the_months_sandbox_hours_are_used(world: World) -> None:
    plan_set(world.alpha, "free", limit_overrides={"sandbox_hours": 2})
    usage_record(
        organization_id=world.alpha.pk,
        kind="sandbox_seconds",
        quantity=2 * 3600,
        source_type="workspace",
        source_id="earlier",
        idempotency_key=f"test-hours-{world.alpha.pk}",
        occurred_at=timezone.now(),
    )
    refused = _post(_api(world), "/workspaces", {"name": "wants-to-run"})
    assert refused.status_code == 402
    body = refused.json()
    assert body["limit"] == "sandbox_hours"
    assert body["detail"] == (
        "The Free plan allows 2 sandbox hours a month; Alpha has 2 this month."
        " Wait for next month or upgrade the plan."
    )
    # A workspace that is not started uses no hours: still allowed.
    with _in_alpha(world):
        workspaces.workspace_create(
            actor=Actor(user=world.alice),
            organization=world.alpha,
            name="later",
            start=False,
            provision=False,
        )


@pytest.mark.django_db
def test_the_plans_sandbox_limit_refuses_a_start_below_the_platform_cap(
    world: World, runtime_server: RuntimeServer
) -> None:
    with _in_alpha(world):
        running = Workspace.objects.filter(state=Workspace.State.RUNNING).count()
    plan_set(world.alpha, "free", limit_overrides={"concurrent_sandboxes": running})
    with _in_alpha(world):
        stopped = workspaces.workspace_create(
            actor=Actor(user=world.alice), organization=world.alpha, name="waits", provision=False
        )
    refused = _post(_api(world), f"/workspaces/{stopped.pk}/start", {})
    assert refused.status_code == 402
    body = refused.json()
    assert body["limit"] == "concurrent_sandboxes"
    assert body["detail"].startswith(f"The Free plan allows {running} running sandbox")
    assert "Stop a workspace or upgrade the plan." in body["detail"]


# --- the race for the last slot ----------------------------------------------------


@pytest.fixture
def two_stopped(live_db: World, runtime_server: RuntimeServer) -> Iterator[list[Workspace]]:
    """Two committed, stopped workspaces of Alpha (the threads see only committed rows);
    afterwards they, their audit events and the alerts and notices the race made go."""
    started_at = timezone.now()
    with _in_alpha(live_db):
        made = [
            workspaces.workspace_create(
                actor=Actor(user=live_db.alice),
                organization=live_db.alpha,
                name=f"plan-race-{index}",
                memory_mb=256,
                disk_mb=128,
                start=False,
            )
            for index in range(2)
        ]
    yield made
    with _in_alpha(live_db):
        for workspace in made:
            runtime_client().destroy_sandbox(live_db.alpha.schema_name, workspace.sandbox_id)
        Workspace.objects.filter(pk__in=[workspace.pk for workspace in made]).delete()
        Notice.objects.filter(created_at__gte=started_at).delete()
    QuotaAlert.objects.filter(organization=live_db.alpha, created_at__gte=started_at).delete()
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {AuditEvent._meta.db_table} WHERE organization_id = %s"  # noqa: S608 (a model's table)
            " AND target_type = 'workspaces.Workspace' AND target_id = ANY(%s)",
            [live_db.alpha.pk, [str(workspace.pk) for workspace in made]],
        )


def test_two_concurrent_starts_for_the_plans_last_sandbox_slot_exactly_one_wins(
    live_db: World, two_stopped: list[Workspace]
) -> None:
    with _in_alpha(live_db):
        running = Workspace.objects.filter(state=Workspace.State.RUNNING).count()
    barrier = threading.Barrier(2)
    outcomes: dict[int, str] = {}
    messages: list[str] = []

    def start(workspace: Workspace) -> None:
        try:
            with _in_alpha(live_db):
                barrier.wait(timeout=10)
                workspaces.workspace_start(
                    actor=Actor(user=live_db.alice), organization=live_db.alpha, workspace=workspace
                )
            outcomes[workspace.pk] = "started"
        except QuotaExceeded as exc:
            outcomes[workspace.pk] = exc.code
            messages.append(exc.message)
        finally:
            connections.close_all()  # this thread's own connection

    # The platform cap (settings) is far above: the plan's limit is what binds.
    with on_plan(live_db.alpha, "team", limit_overrides={"concurrent_sandboxes": running + 1}):
        threads = [threading.Thread(target=start, args=(workspace,)) for workspace in two_stopped]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert sorted(outcomes.values()) == ["quota_exceeded", "started"], outcomes
    assert messages == [
        f"The Team plan allows {running + 1} running sandbox{'es' if running else ''};"
        f" Alpha runs {running + 1}. Stop a workspace or upgrade the plan."
    ]
    with _in_alpha(live_db):
        states = sorted(Workspace.objects.filter(pk__in=outcomes).values_list("state", flat=True))
    assert states == ["running", "stopped"]
    infos = [runtime_client().get_sandbox(live_db.alpha.schema_name, w.sandbox_id) for w in two_stopped]
    assert sorted(info.state for info in infos) == ["running", "stopped"]


# --- members and agent runs --------------------------------------------------------


def _invite(world: World, email: str) -> str:
    _, link = identity.invitation_create(
        actor=Actor(user=world.alice),
        organization=world.alpha,
        email=email,
        role="member",
        accept_url_base="http://localhost",
    )
    return link.rstrip("/").rsplit("/", 1)[-1]


@pytest.mark.django_db
def test_accepting_an_invitation_beyond_the_member_limit_is_refused_until_staff_raise_it(
    world: World,
) -> None:
    plan_set(world.alpha, "free", limit_overrides={"members": 2})  # alice and amy
    token = _invite(world, world.olga.email)
    with pytest.raises(QuotaExceeded) as refused:
        identity.invitation_accept(actor=Actor(user=world.olga), token=token)
    assert refused.value.message == (
        "The Free plan allows 2 members; Alpha has 2. Remove a member or upgrade the plan."
    )
    assert not Membership.objects.filter(organization=world.alpha, user=world.olga).exists()
    assert Invitation.objects.get(organization=world.alpha, email=world.olga.email).status == "pending"

    account_overrides_set(
        actor=Actor(user=make_staff()), organization=world.alpha, limit_overrides={"members": 3}
    )
    membership = identity.invitation_accept(actor=Actor(user=world.olga), token=token)
    assert membership.organization == world.alpha


@pytest.mark.django_db
def test_a_full_organization_lets_an_sso_user_log_in_without_joining(world: World) -> None:
    from apps.accounts.sso import sso_login_record
    from apps.tenancy.models import OrganizationSSO

    OrganizationSSO.objects.create(
        organization=world.alpha, issuer="https://idp.alpha.test", client_id="x", verified_domain="alpha.test"
    )
    plan_set(world.alpha, "business", limit_overrides={"members": 2})  # alice and amy
    newcomer = make_user("nora@alpha.test", "Nora")
    login = sso_login_record(
        actor=Actor(user=newcomer), user=newcomer, provider="oidc", organization=world.alpha, is_new_user=True
    )
    assert login.joined is False
    assert not Membership.objects.filter(organization=world.alpha, user=newcomer).exists()
    refusal = AuditEvent.objects.get(organization=world.alpha, action="member.join_via_sso_refused")
    assert "allows 2 members" in refusal.changes["after"]["reason"]

    plan_set(world.alpha, "business")  # 250 members
    again = sso_login_record(
        actor=Actor(user=newcomer),
        user=newcomer,
        provider="oidc",
        organization=world.alpha,
        is_new_user=False,
    )
    assert again.joined is True


@pytest.mark.django_db
def test_the_plan_decides_concurrent_agent_runs_under_the_platform_cap(world: World, settings: Any) -> None:
    settings.AGENTS_ORG_CONCURRENCY = 4
    plan_set(world.alpha, "free")
    assert organization_run_limit(world.alpha) == 1
    plan_set(world.alpha, "team")  # 10, above the platform's 4
    assert organization_run_limit(world.alpha) == 4
    plan_set(world.alpha, "free", limit_overrides={"concurrent_agent_runs": 0})
    assert organization_run_limit(world.alpha) == 0  # runs wait; none fails
    plan_set(world.beta, "business")
    assert organization_run_limit(world.beta) == 4


# --- monthly LLM tokens --------------------------------------------------------------


def _spend(fake: FakeOpenAI, context: CallContext, text: str) -> None:
    fake.script(Reply(usage=(10_000, 1_000, 0)))  # 11,000 tokens
    chat(ask("gpt-4o-mini", text), context)


@pytest.mark.django_db
def test_an_llm_call_is_refused_once_the_months_tokens_are_used_and_nothing_is_sent(
    world: World, openai_platform: FakeOpenAI
) -> None:
    plan_set(world.alpha, "free", limit_overrides={"monthly_tokens": 20_000})
    context = CallContext(organization_id=world.alpha.pk)
    _spend(openai_platform, context, "first")  # 0 used before
    _spend(openai_platform, context, "second")  # 11,000 used before
    with pytest.raises(QuotaExceeded) as refused:
        chat(ask("gpt-4o-mini", "third"), context)
    assert refused.value.status == 402
    assert refused.value.message == (
        "The Free plan allows 20,000 LLM tokens a month; Alpha has used 22,000 this month."
        " Wait for next month or upgrade the plan."
    )
    assert len(openai_platform.chat_requests) == 2
    # Beta's tokens are its own.
    _spend(openai_platform, CallContext(organization_id=world.beta.pk), "beta")


@pytest.mark.django_db
def test_written_token_usage_counts_too(world: World, openai_platform: FakeOpenAI) -> None:
    from apps.llm.metering import meter

    context = CallContext(organization_id=world.alpha.pk)
    _spend(openai_platform, context, "before the limit")
    meter().flush()
    plan_set(world.alpha, "free", limit_overrides={"monthly_tokens": 11_000})
    with pytest.raises(QuotaExceeded, match="has used 11,000 this month"):
        chat(ask("gpt-4o-mini", "again"), context)


# --- alerts --------------------------------------------------------------------------


def _alerts(world: World, limit: str) -> list[int]:
    return sorted(
        QuotaAlert.objects.filter(organization=world.alpha, limit=limit).values_list("threshold", flat=True)
    )


@pytest.mark.django_db
def test_member_alerts_go_out_once_per_threshold_by_email_and_notice(
    world: World, django_capture_on_commit_callbacks: Any
) -> None:
    plan_set(world.alpha, "free", limit_overrides={"members": 4})  # 2 of 4: none yet
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        identity.invitation_accept(actor=Actor(user=world.olga), token=_invite(world, world.olga.email))
    assert _alerts(world, "members") == [50]  # 3 of 4 is 75 %
    [email] = [m for m in mail.outbox if "50%" in m.subject]
    assert email.to == [world.alice.email]  # the owner, not amy
    assert email.subject == "[Agentyard] Alpha has used 50% of its limit of 4 members"

    fourth = make_user("pat@alpha.test", "Pat")
    with django_capture_on_commit_callbacks(execute=True):
        identity.invitation_accept(actor=Actor(user=fourth), token=_invite(world, fourth.email))
    assert _alerts(world, "members") == [50, 80, 100]
    reached = [m for m in mail.outbox if "reached" in m.subject]
    assert [m.subject for m in reached] == ["[Agentyard] Alpha has reached its limit of 4 members"]
    with _in_alpha(world):
        titles = list(Notice.objects.filter(title__contains="members").values_list("title", flat=True))
    assert sorted(titles) == [
        "Alpha has reached its limit of 4 members",
        "Alpha has used 50% of its limit of 4 members",
    ]
    # The same level again in the same month: nothing new.
    sent = len(mail.outbox)
    with django_capture_on_commit_callbacks(execute=True):
        assert (
            quota_alerts_record(organization=world.alpha, account=None, limit="members", used=4, allowed=4)
            == []
        )
    assert len(mail.outbox) == sent


@pytest.mark.django_db
def test_token_and_budget_alerts_are_recorded_before_calls(
    world: World, openai_platform: FakeOpenAI, django_capture_on_commit_callbacks: Any
) -> None:
    from apps.billing.services import organization_budget_set

    plan_set(world.alpha, "free", limit_overrides={"monthly_tokens": 20_000})
    # Two of the calls below cost 0.0021 USD each: 0.0042 of 0.005 is 84 %.
    organization_budget_set(actor=Actor(user=world.alice), organization=world.alpha, limit_usd="0.005")
    context = CallContext(organization_id=world.alpha.pk)
    with django_capture_on_commit_callbacks(execute=True):
        _spend(openai_platform, context, "one")
        _spend(openai_platform, context, "two")  # checked at 11,000 tokens: 55 %
        with pytest.raises(QuotaExceeded):
            chat(ask("gpt-4o-mini", "three"), context)  # 22,000 tokens: refused, alerts stand
    assert _alerts(world, "monthly_tokens") == [50, 80, 100]
    budget_alerts = QuotaAlert.objects.filter(organization=world.alpha, limit__startswith="budget:")
    assert sorted(budget_alerts.values_list("threshold", flat=True)) == [50, 80]
    assert any("monthly LLM budget of 0.005 USD" in m.subject for m in mail.outbox), [
        m.subject for m in mail.outbox
    ]


@pytest.mark.django_db
def test_a_money_budget_must_be_a_non_negative_number(world: World) -> None:
    from apps.billing.services import organization_budget_set
    from apps.core.errors import Invalid

    for bad in ("-5", "lots", "", None):
        with pytest.raises(Invalid):
            organization_budget_set(actor=Actor(user=world.alice), organization=world.alpha, limit_usd=bad)
    budget = organization_budget_set(actor=Actor(user=world.alice), organization=world.alpha, limit_usd="25")
    assert budget.limit_usd == Decimal(25)
