"""The fake Stripe (tests/fakes/stripe_server.py) answers the real stripe SDK the way
Stripe does: the objects, errors, idempotency and signed webhooks the platform relies on.
If the fake drifted from Stripe, the billing tests built on it would prove nothing."""

import re
import urllib.error
import urllib.request
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

import pytest
import stripe

from tests.billing.stripe_helpers import fake  # noqa: F401 (a fixture)
from tests.fakes.stripe_server import (
    FakeStripe,
    decode_form,
    encode_for_test,
    stripe_fake,  # noqa: F401 (a fixture)
    stripe_server,
)


@pytest.fixture
def sdk(fake: FakeStripe) -> stripe.StripeClient:  # noqa: F811
    return stripe.StripeClient(
        "sk_test_fake",
        base_addresses=fake.base_addresses,
        max_network_retries=0,
    )


@pytest.fixture
def received(fake: FakeStripe) -> list[stripe.Event]:  # noqa: F811
    """Webhooks the fake sends, verified with the SDK as an endpoint would."""
    events: list[stripe.Event] = []

    def endpoint(body: bytes, headers: dict[str, str]) -> int:
        events.append(stripe.Webhook.construct_event(body, headers["Stripe-Signature"], fake.webhook_secret))
        return 200

    fake.webhook_handler = endpoint
    return events


def _subscription_prices(sdk: stripe.StripeClient) -> tuple[str, str]:
    product = sdk.v1.products.create(params={"name": "Team"})
    meter = sdk.v1.billing.meters.create(
        params={
            "display_name": "Tokens",
            "event_name": f"fake_tokens_{product.id}",
            "default_aggregation": {"formula": "sum"},
        }
    )
    base = sdk.v1.prices.create(
        params={
            "product": product.id,
            "currency": "usd",
            "unit_amount": 4900,
            "recurring": {"interval": "month"},
        }
    )
    metered = sdk.v1.prices.create(
        params={
            "product": product.id,
            "currency": "usd",
            "unit_amount_decimal": Decimal("0.0004"),
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
        }
    )
    return base.id, metered.id


def test_bracket_notation_decodes_to_nested_objects_and_lists() -> None:
    params = {
        "mode": "subscription",
        "line_items": [{"price": "price_a", "quantity": "1"}, {"price": "price_b"}],
        "subscription_data": {"metadata": {"organization_id": "7"}},
        "expand": ["subscription"],
    }
    assert decode_form(parse_qsl(encode_for_test(params))) == params


def test_customers_are_created_read_and_updated_with_their_metadata(sdk: stripe.StripeClient) -> None:
    customer = sdk.v1.customers.create(params={"name": "Acme", "metadata": {"organization_id": "7"}})
    assert customer.id.startswith("cus_")
    sdk.v1.customers.update(customer.id, params={"email": "billing@acme.test", "metadata": {"tier": "x"}})
    read = sdk.v1.customers.retrieve(customer.id)
    assert (read.name, read.email) == ("Acme", "billing@acme.test")
    assert read.metadata is not None
    assert read.metadata.to_dict() == {"organization_id": "7", "tier": "x"}


def test_an_unknown_object_is_stripes_404_with_its_error_code(sdk: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as caught:
        sdk.v1.customers.retrieve("cus_missing")
    assert caught.value.http_status == 404
    assert caught.value.code == "resource_missing"
    assert "No such customer" in str(caught.value.user_message)


def test_a_wrong_api_key_is_refused(fake: FakeStripe) -> None:  # noqa: F811
    wrong = stripe.StripeClient("sk_test_wrong", base_addresses=fake.base_addresses)
    with pytest.raises(stripe.AuthenticationError):
        wrong.v1.customers.create(params={"name": "x"})


def test_a_metered_price_needs_a_meter(sdk: stripe.StripeClient) -> None:
    product = sdk.v1.products.create(params={"name": "Metered"})
    with pytest.raises(stripe.InvalidRequestError) as caught:
        sdk.v1.prices.create(
            params={
                "product": product.id,
                "currency": "usd",
                "unit_amount": 1,
                "recurring": {"interval": "month", "usage_type": "metered"},
            }
        )
    assert caught.value.param == "recurring[meter]"


def test_prices_are_found_by_lookup_key(sdk: stripe.StripeClient) -> None:
    product = sdk.v1.products.create(params={"name": "Lookup"})
    price = sdk.v1.prices.create(
        params={
            "product": product.id,
            "currency": "usd",
            "unit_amount": 100,
            "recurring": {"interval": "month"},
            "lookup_key": f"lookup_{product.id}",
        }
    )
    found = sdk.v1.prices.list(params={"lookup_keys": [f"lookup_{product.id}"]})
    assert [item.id for item in found.data] == [price.id]


def test_paying_on_the_hosted_checkout_page_subscribes_and_sends_signed_webhooks(
    fake: FakeStripe,  # noqa: F811
    sdk: stripe.StripeClient,
    received: list[stripe.Event],
) -> None:
    base, metered = _subscription_prices(sdk)
    customer = sdk.v1.customers.create(params={"name": "Buyer"})
    session = sdk.v1.checkout.sessions.create(
        params={
            "mode": "subscription",
            "customer": customer.id,
            "line_items": [{"price": base, "quantity": 1}, {"price": metered}],
            "success_url": "http://app.test/done?session={CHECKOUT_SESSION_ID}",
            "cancel_url": "http://app.test/cancelled",
            "client_reference_id": "42",
        }
    )
    url = str(session.url)
    assert url.startswith(fake.origin)
    page = urllib.request.urlopen(url).read().decode()  # noqa: S310 (loopback)
    assert "Pay and subscribe" in page
    assert "href='http://app.test/cancelled'" in page

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as redirect:
        opener.open(urllib.request.Request(url, data=b"card=4242", method="POST"))  # noqa: S310
    assert redirect.value.code == 303
    assert redirect.value.headers["Location"] == f"http://app.test/done?session={session.id}"

    assert [event.type for event in received] == [
        "checkout.session.completed",
        "customer.subscription.created",
        "invoice.paid",
    ]
    completed, created, paid = (event.data.object for event in received)
    assert (completed.status, completed.client_reference_id) == ("complete", "42")
    assert (created.id, created.status) == (completed.subscription, "active")
    assert (paid.total, paid.status) == (4900, "paid")
    subscription = sdk.v1.subscriptions.retrieve(created.id)
    assert sorted(item.price.id for item in subscription["items"].data) == sorted([base, metered])
    assert sdk.v1.checkout.sessions.retrieve(session.id).status == "complete"


def test_a_tampered_webhook_does_not_verify(fake: FakeStripe) -> None:  # noqa: F811
    event = fake.send_event("customer.updated", {"id": "cus_x", "object": "customer"}, deliver=False)
    body, headers = fake.signed(event, secret="whsec_someone_else")
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body, headers["Stripe-Signature"], fake.webhook_secret)


def test_an_idempotency_key_replays_the_first_answer(sdk: stripe.StripeClient, fake: FakeStripe) -> None:  # noqa: F811
    first = sdk.v1.customers.create(params={"name": "Once"}, options={"idempotency_key": "same-key"})
    again = sdk.v1.customers.create(params={"name": "Once"}, options={"idempotency_key": "same-key"})
    assert again.id == first.id
    with pytest.raises(stripe.IdempotencyError):
        sdk.v1.customers.create(params={"name": "Other"}, options={"idempotency_key": "same-key"})


def test_a_meter_event_identifier_is_taken_once(sdk: stripe.StripeClient, fake: FakeStripe) -> None:  # noqa: F811
    customer = sdk.v1.customers.create(params={"name": "Metered"})
    meter = sdk.v1.billing.meters.create(
        params={
            "display_name": "x",
            "event_name": f"once_{customer.id}",
            "default_aggregation": {"formula": "sum"},
        }
    )
    params: Any = {
        "event_name": meter.event_name,
        "identifier": f"hour-1-{customer.id}",
        "payload": {"stripe_customer_id": customer.id, "value": "12.5"},
    }
    sdk.v1.billing.meter_events.create(params=params, options={"idempotency_key": params["identifier"]})
    # A retry with the same Idempotency-Key gets the first answer; a new key is refused.
    sdk.v1.billing.meter_events.create(params=params, options={"idempotency_key": params["identifier"]})
    with pytest.raises(stripe.InvalidRequestError) as caught:
        sdk.v1.billing.meter_events.create(params=params)
    assert "already exists with identifier" in str(caught.value.user_message)
    assert fake.meter_totals()[(customer.id, meter.event_name)] == Decimal("12.5")


def test_failures_can_be_set_for_some_requests_or_until_cleared(
    sdk: stripe.StripeClient,
    fake: FakeStripe,  # noqa: F811
) -> None:
    fake.fail("/v1/customers", times=2)
    for _ in range(2):
        with pytest.raises(stripe.APIError) as caught:
            sdk.v1.customers.create(params={"name": "x"})
        assert caught.value.http_status == 500
    sdk.v1.customers.create(params={"name": "x"})
    fake.fail("/v1/customers", drop=True)
    with pytest.raises(stripe.APIConnectionError):
        sdk.v1.customers.create(params={"name": "x"})
    fake.clear_failures()
    assert sdk.v1.customers.create(params={"name": "x"}).id


def test_a_lost_answer_still_did_the_work(sdk: stripe.StripeClient, fake: FakeStripe) -> None:  # noqa: F811
    fake.fail("/v1/customers", times=1, after_processing=True)
    with pytest.raises(stripe.APIError):
        sdk.v1.customers.create(params={"name": "Lost answer"}, options={"idempotency_key": "lost-1"})
    made = sdk.v1.customers.create(params={"name": "Lost answer"}, options={"idempotency_key": "lost-1"})
    assert [c["id"] for c in fake.objects("customer") if c["name"] == "Lost answer"] == [made.id]


def test_cancelling_and_the_passing_of_time_send_the_subscription_events() -> None:
    # A fake of its own: moving the clock of the session's fake would age other tests' objects.
    with stripe_server() as own:
        sdk = stripe.StripeClient("sk_test_own", base_addresses=own.base_addresses)
        received: list[stripe.Event] = []

        def endpoint(body: bytes, headers: dict[str, str]) -> int:
            received.append(
                stripe.Webhook.construct_event(body, headers["Stripe-Signature"], own.webhook_secret)
            )
            return 200

        own.webhook_handler = endpoint
        base, _ = _subscription_prices(sdk)
        customer = sdk.v1.customers.create(params={"name": "Renews"})
        subscription = sdk.v1.subscriptions.create(
            params={"customer": customer.id, "items": [{"price": base, "quantity": 1}]}
        )
        end = subscription["items"].data[0].current_period_end
        own.advance(31 * 86400)
        renewed = sdk.v1.subscriptions.retrieve(subscription.id)
        assert renewed["items"].data[0].current_period_start == end
        sdk.v1.subscriptions.update(subscription.id, params={"cancel_at_period_end": True})
        own.advance(31 * 86400)
        assert sdk.v1.subscriptions.retrieve(subscription.id).status == "canceled"
    assert [event.type for event in received] == [
        "customer.subscription.created",
        "invoice.paid",
        "customer.subscription.updated",
        "invoice.paid",
        "customer.subscription.updated",
        "customer.subscription.deleted",
    ]
    previous = received[4].data.previous_attributes
    assert previous is not None
    assert previous.cancel_at_period_end is False


def test_the_portal_page_cancels_at_the_period_end(
    fake: FakeStripe,  # noqa: F811
    sdk: stripe.StripeClient,
    received: list[stripe.Event],
) -> None:
    base, _ = _subscription_prices(sdk)
    customer = sdk.v1.customers.create(params={"name": "Portal"})
    subscription = sdk.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"price": base, "quantity": 1}]}
    )
    portal = sdk.v1.billing_portal.sessions.create(
        params={"customer": customer.id, "return_url": "http://app.test/billing/"}
    )
    page = urllib.request.urlopen(portal.url).read().decode()  # noqa: S310 (loopback)
    action = re.search(r"action='([^']+)'", page)
    assert action is not None
    assert "http://app.test/billing/" in page
    urllib.request.urlopen(urllib.request.Request(fake.origin + action.group(1), data=b"", method="POST"))  # noqa: S310
    assert sdk.v1.subscriptions.retrieve(subscription.id).cancel_at_period_end is True
    assert received[-1].type == "customer.subscription.updated"


def test_each_fake_is_its_own_stripe() -> None:
    with stripe_server() as one, stripe_server() as other:
        made = stripe.StripeClient("sk_test_a", base_addresses=one.base_addresses)
        customer = made.v1.customers.create(params={"name": "Only here"})
        elsewhere = stripe.StripeClient("sk_test_a", base_addresses=other.base_addresses)
        with pytest.raises(stripe.InvalidRequestError):
            elsewhere.v1.customers.retrieve(customer.id)


def test_the_control_api_answers_over_http(sdk: stripe.StripeClient, fake: FakeStripe) -> None:  # noqa: F811
    """For a process holding no reference to the fake (a browser test's helper, a script)."""
    import json

    def control(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(fake.origin + path, data=data, method=method)  # noqa: S310 (loopback)
        with urllib.request.urlopen(request) as response:  # noqa: S310
            return json.loads(response.read())

    control("POST", "/_fake/fail", {"path": "/v1/customers", "times": 1, "status": 503})
    with pytest.raises(stripe.APIError) as caught:
        sdk.v1.customers.create(params={"name": "x"})
    assert caught.value.http_status == 503
    customer = sdk.v1.customers.create(params={"name": "Controlled"})
    meter = sdk.v1.billing.meters.create(
        params={
            "display_name": "c",
            "event_name": f"ctl_{customer.id}",
            "default_aggregation": {"formula": "sum"},
        }
    )
    sdk.v1.billing.meter_events.create(
        params={"event_name": meter.event_name, "payload": {"stripe_customer_id": customer.id, "value": "3"}}
    )
    listed = control("GET", "/_fake/meter_events")
    assert any(event["payload"]["stripe_customer_id"] == customer.id for event in listed["data"])
    sent = control("POST", "/_fake/events", {"type": "customer.updated", "object": {"id": customer.id}})
    assert fake.events[-1]["id"] == sent["id"]
    control("POST", "/_fake/fail", {"path": "/v1/customers"})
    control("POST", "/_fake/clear_failures")
    assert sdk.v1.customers.retrieve(customer.id).name == "Controlled"
