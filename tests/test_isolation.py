"""Cross-tenant isolation: every tenant endpoint and WebSocket route refuses
people from outside the organization. Adding a view to config/urls_tenant.py
or config/routing.py adds it here automatically."""

import asyncio
import json

import pytest
from django.test import Client, override_settings
from django.urls import URLPattern, URLResolver
from django_tenants.utils import schema_context
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

import config.urls_tenant
import tests.leaky_urls
from config.routing import websocket_urlpatterns
from tests.conftest import LiveServer, World, client_for, host
from tests.fakes.stripe_server import FakeStripe, stripe_fake  # noqa: F401 (a fixture)
from tests.isolation import Endpoint, beta_admin_key, concrete_path, find_leaks, tenant_endpoints
from tests.runtime_server import RuntimeServer
from tests.websocket import session_cookie_for, ws_connect


@pytest.mark.django_db
def test_no_tenant_endpoint_serves_people_from_outside_the_organization(world: World) -> None:
    assert find_leaks(config.urls_tenant, world) == []


@pytest.mark.django_db
def test_the_suite_enumerates_every_tenant_endpoint(world: World) -> None:
    routes = {endpoint.route for endpoint in tenant_endpoints(config.urls_tenant)}
    top_level = {
        str(entry.pattern)
        for entry in config.urls_tenant.urlpatterns
        if isinstance(entry, URLPattern)  # includes (the API, the pages) are checked below
    }
    included = {
        str(entry.pattern) + str(pattern.pattern)
        for entry in config.urls_tenant.urlpatterns
        if isinstance(entry, URLResolver)
        for pattern in entry.url_patterns
    }
    assert routes == top_level | included
    assert "settings/members/<int:member_id>/remove/" in routes
    assert "api/v1/members/<int:member_id>" in routes


@pytest.mark.django_db
def test_the_suite_catches_a_view_that_leaks(world: World) -> None:
    with override_settings(ROOT_URLCONF="tests.leaky_urls"):
        leaks = find_leaks(tests.leaky_urls, world)
    assert "GET /leaky/notices/ as member of beta: 200" in leaks
    assert "GET /leaky/notices/ as anonymous: 200" in leaks
    assert all("/leaky/notices/" in leak for leak in leaks)


@pytest.mark.django_db
def test_members_still_reach_every_tenant_page(world: World) -> None:
    """The other half: isolation must not be bought by refusing everyone (owners may do all)."""
    client = client_for(world.alice, world.alpha)
    for endpoint in tenant_endpoints(config.urls_tenant):
        response = client.get("/" + endpoint.route)
        assert response.status_code < 500, endpoint.route
        assert response.status_code != 403, endpoint.route
        assert "/login/" not in response.headers.get("Location", ""), endpoint.route


def test_no_websocket_route_accepts_people_from_outside_the_organization(
    asgi_server: LiveServer, world: World
) -> None:
    # Parameters are filled like the HTTP routes' (tests/isolation.py SAMPLE_VALUES): objects of Alpha.
    with schema_context(world.alpha.schema_name):
        paths = [
            concrete_path(Endpoint(route=str(route.pattern), name=None), world)
            for route in websocket_urlpatterns
        ]

    async def attempts() -> list[str]:
        leaks = []
        visitors = {"anonymous": None, "member of beta": world.ben, "no organization": world.olga}
        for path in paths:
            for who, user in visitors.items():
                cookie = await asyncio.to_thread(session_cookie_for, user) if user else None
                try:
                    async with ws_connect(asgi_server, world.alpha, path, cookie=cookie) as socket:
                        leaks.append(f"{path} as {who}: accepted, sent {json.loads(await socket.recv())}")
                except ConnectionRefusedError as exc:
                    if "403" not in str(exc):
                        leaks.append(f"{path} as {who}: refused oddly ({exc})")
        return leaks

    assert asyncio.run(attempts()) == []


def test_no_websocket_route_accepts_another_organizations_api_key(
    asgi_server: LiveServer, world: World
) -> None:
    """Beta's admin key, sent as a header (as API clients do), on Alpha's host: refused at
    the handshake by every route, whether it reads keys or only sessions."""
    with schema_context(world.alpha.schema_name):
        paths = [
            concrete_path(Endpoint(route=str(route.pattern), name=None), world)
            for route in websocket_urlpatterns
        ]
    beta_key = beta_admin_key(world)

    async def attempts() -> list[str]:
        leaks = []
        target = f"{host(world.alpha)}:{asgi_server.port}"
        for path in paths:
            try:
                async with connect(
                    f"ws://{target}{path}",
                    host="127.0.0.1",
                    port=asgi_server.port,
                    additional_headers={"Authorization": beta_key},
                    open_timeout=10,
                ) as socket:
                    leaks.append(f"{path}: accepted, sent {json.loads(await socket.recv())}")
            except InvalidStatus as exc:
                if exc.response.status_code != 403:
                    leaks.append(f"{path}: refused oddly ({exc.response.status_code})")
        return leaks

    assert asyncio.run(attempts()) == []


@pytest.mark.django_db
def test_billing_pages_and_api_show_an_organization_only_its_own_billing(world: World) -> None:
    """Billing's tables are in the public schema, shared by every organization: each read
    filters by the organization, or Beta would see Alpha's usage on its own host. Every
    billing route (read) as Beta's owner and with Beta's admin key, with Alpha's usage,
    invoice, custom plan and budget in place."""
    from decimal import Decimal

    from django.utils import timezone

    from apps.billing.ledger import usage_record
    from apps.billing.models import Invoice, Plan
    from apps.llm.models import Budget

    secret = "alphasecret"
    usage_record(organization_id=world.alpha.pk, kind="llm_input_tokens", quantity=123_456_789,
                 model=f"{secret}-model", source_type="agent_run", source_id=f"{secret}-run",
                 user_id=world.alice.pk, unit_price=Decimal("0.001"),
                 idempotency_key=f"isolation-{secret}")  # fmt: skip
    Invoice.objects.create(organization=world.alpha, stripe_invoice_id=f"in_{secret}", number=f"{secret}-1",
                           status="paid", total=Decimal("777.77"), created=timezone.now())  # fmt: skip
    Plan.objects.create(key=f"{secret}-plan", name=f"{secret} plan", kind="custom", public=False,
                        organization=world.alpha)  # fmt: skip
    Budget.objects.create(
        organization=world.alpha, scope="organization", period="month", limit_usd=Decimal("4321")
    )
    routes = [
        endpoint.route
        for endpoint in tenant_endpoints(config.urls_tenant)
        if endpoint.route.startswith(("billing/", "api/v1/billing"))
    ]
    assert "billing/" in routes
    assert "api/v1/billing/usage" in routes
    visitors = {
        "owner of beta on beta's host": client_for(world.bob, world.beta),
        "beta's admin key on the API host": Client(
            HTTP_HOST=host(None), HTTP_AUTHORIZATION=beta_admin_key(world)
        ),
    }
    seen = []
    for route in routes:
        for who, client in visitors.items():
            response = client.get(f"/{route}")
            body = response.content.decode()
            for marker in (secret, "123,456,789", "123456789", "777.77", "4321", "alice@alpha.test"):
                if marker in body:
                    seen.append(f"GET /{route} as {who}: {marker} ({response.status_code})")
    assert seen == []


@pytest.mark.django_db
def test_stripe_webhooks_change_only_the_organization_whose_customer_the_event_names(
    world: World,
    stripe_fake: FakeStripe,  # noqa: F811 (the fixture imported above)
) -> None:
    """The Stripe webhook is public (the bare domain; Stripe's signature instead of a login):
    no organization's host serves it, and a signed event about Beta's customer leaves Alpha's
    account as it was."""
    import time

    from apps.billing.models import StripeEvent
    from apps.billing.plans import billing_account_for
    from apps.billing.webhooks import stripe_event_process

    beta_account = billing_account_for(world.beta)
    beta_account.stripe_customer_id = "cus_isolation_beta"
    beta_account.save()
    alpha_before = billing_account_for(world.alpha)
    now = int(time.time())
    item = {"id": "si_iso", "price": {"id": "price_iso", "lookup_key": "team"}, "quantity": 1,
            "current_period_start": now, "current_period_end": now + 86400}  # fmt: skip
    subscription = {"id": "sub_iso", "object": "subscription", "customer": "cus_isolation_beta",
                    "status": "active", "cancel_at_period_end": False,
                    "items": {"object": "list", "data": [item]}, "metadata": {}}  # fmt: skip
    event = stripe_fake.send_event("customer.subscription.created", subscription, deliver=False)
    body, headers = stripe_fake.signed(event)
    signature = headers["Stripe-Signature"]
    on_alpha = Client(HTTP_HOST=host(world.alpha)).post(
        "/billing/stripe/webhook/",
        data=body,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=signature,
    )
    assert on_alpha.status_code in {302, 403, 404}
    assert not StripeEvent.objects.filter(event_id=event["id"]).exists()
    public = Client(HTTP_HOST=host(None)).post(
        "/billing/stripe/webhook/",
        data=body,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=signature,
    )
    assert public.status_code == 200
    stripe_event_process(event_id=event["id"])
    assert billing_account_for(world.beta).plan.key == "team"
    alpha_after = billing_account_for(world.alpha)
    assert (alpha_after.plan_id, alpha_after.stripe_subscription_id, alpha_after.status) == (
        alpha_before.plan_id,
        alpha_before.stripe_subscription_id,
        alpha_before.status,
    )


@pytest.mark.django_db
def test_billings_usage_tasks_charge_each_organization_only_its_own_usage(
    world: World, runtime_server: RuntimeServer
) -> None:
    """The ledger's beat tasks (billing.sandbox_seconds_account, billing.storage_measure)
    walk every organization's schema: Alpha's running sandbox and knowledge are charged
    to Alpha, and nothing of them to Beta."""
    from datetime import timedelta

    from django.utils import timezone

    from apps.billing.ledger import knowledge_bytes
    from apps.billing.models import UsageRecord
    from apps.billing.tasks import sandbox_seconds_account_task, storage_measure_task
    from apps.knowledge.models import KnowledgeChunk, KnowledgeSource
    from apps.workspaces.models import Workspace

    since = timezone.now() - timedelta(hours=2)
    with schema_context(world.alpha.schema_name):
        # Rows only: the accounting reads our records of what runs, not the runtime.
        workspace = Workspace.objects.create(name="iso-metered", state="running", started_at=since)
        source = KnowledgeSource.objects.create(kind="note", name="Alpha's notes", status="ready")
        KnowledgeChunk.objects.create(
            key="iso-ledger-note",
            source=source,
            kind="note",
            text="Alpha's secret. " * 500,
            content_hash="0" * 64,
        )
        alpha_knowledge = knowledge_bytes()
    with schema_context(world.beta.schema_name):
        beta_knowledge = knowledge_bytes()
    sandbox_seconds_account_task()
    storage_measure_task()

    recent = UsageRecord.objects.filter(occurred_at__gte=since)
    assert recent.filter(
        organization=world.alpha, kind="sandbox_seconds", source_id=str(workspace.pk)
    ).exists()
    assert not recent.filter(organization=world.beta, kind="sandbox_seconds").exists()
    alpha_storage = recent.get(organization=world.alpha, kind="storage_gb_hours", source_id="knowledge")
    beta_storage = recent.filter(
        organization=world.beta, kind="storage_gb_hours", source_id="knowledge"
    ).first()
    assert alpha_storage.quantity > 0
    assert beta_knowledge < alpha_knowledge
    assert beta_storage is None or beta_storage.quantity < alpha_storage.quantity
