"""The one module that talks to Stripe (the official `stripe` SDK); everything else in the
platform calls these functions and gets plain dicts back, shaped like Stripe's objects.

Configuration (config/settings/base.py): STRIPE_API_KEY (a test-mode `sk_test_...` key in
development), STRIPE_WEBHOOK_SECRET (the endpoint's `whsec_...`), STRIPE_API_BASE (empty in
production; tests point it at tests/fakes/stripe_server.py), STRIPE_WEBHOOK_TOLERANCE_SECONDS
and STRIPE_TIMEOUT_SECONDS. Without a key every call raises StripeNotConfigured, a 503 that
says what to set.

Errors come back as ServiceErrors (apps/core/errors.py), so a page or API view shows them
as a 4xx/5xx with a message, never a traceback:
- StripeNotConfigured (503): no key or webhook secret.
- StripeUnavailable (503): Stripe could not be reached, timed out, was rate limiting, or
  answered 5xx. Nothing is known to have changed; retrying later is right.
- StripeRefused (502): Stripe answered 4xx: the request itself was wrong (an unknown price,
  a deleted customer). `stripe_code` and `duplicate` (a meter event identifier it already
  has) say which.
- WebhookSignatureInvalid (400): a webhook whose signature does not verify.

The SDK's own retries are off (max_network_retries=0): reporting retries with its own
backoff, and a page should say at once that Stripe is unreachable rather than hang.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import stripe
from django.conf import settings

from apps.core.errors import Invalid, ServiceError, Unavailable

logger = logging.getLogger(__name__)

# The SDK writes a telemetry id under ~/.config and sends request metrics; we want neither.
stripe.enable_telemetry = False
# It also logs every request at INFO (a line per meter event); our callers log what matters.
logging.getLogger("stripe").setLevel(logging.WARNING)


class StripeNotConfigured(Unavailable):
    code = "stripe_not_configured"


class StripeUnavailable(Unavailable):
    code = "stripe_unavailable"


class StripeRefused(ServiceError):
    status = 502
    code = "stripe_refused"

    def __init__(
        self, message: str, *, stripe_code: str | None = None, http_status: int | None = None
    ) -> None:
        super().__init__(message)
        self.stripe_code = stripe_code or ""
        self.http_status = http_status

    @property
    def duplicate(self) -> bool:
        """A meter event whose identifier Stripe already holds: it was recorded before."""
        return "already exists with identifier" in self.message


class WebhookSignatureInvalid(Invalid):
    code = "invalid_signature"


_clients: dict[tuple[str, str, int], stripe.StripeClient] = {}
_clients_lock = threading.Lock()


def configured() -> bool:
    """Whether Stripe calls can be made (a key is set)."""
    return bool(settings.STRIPE_API_KEY)


def client() -> stripe.StripeClient:
    """A StripeClient for the current settings (one per key and address, reused: it keeps
    its HTTP connections)."""
    api_key = str(settings.STRIPE_API_KEY)
    if not api_key:
        raise StripeNotConfigured(
            "Payments are not set up on this server: set STRIPE_API_KEY (and STRIPE_WEBHOOK_SECRET)."
        )
    base = str(settings.STRIPE_API_BASE).rstrip("/")
    timeout = int(settings.STRIPE_TIMEOUT_SECONDS)
    key = (api_key, base, timeout)
    with _clients_lock:
        existing = _clients.get(key)
        if existing is not None:
            return existing
        options: dict[str, Any] = {}
        if base:
            options["base_addresses"] = {"api": base, "connect": base, "files": base, "meter_events": base}
        made = stripe.StripeClient(
            api_key,
            max_network_retries=0,
            http_client=stripe.RequestsClient(timeout=timeout),
            **options,
        )
        _clients[key] = made
        return made


def _plain(value: Any) -> dict[str, Any]:
    result: dict[str, Any] = value.to_dict(recursive=True, for_json=True)
    return result


def _call(what: str, function: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Calls the SDK and turns its errors into ours (the module docstring says which)."""
    try:
        return _plain(function(*args, **kwargs))
    except stripe.RateLimitError as exc:
        raise StripeUnavailable(f"Stripe is rate limiting ({what}); try again shortly.") from exc
    except stripe.APIConnectionError as exc:
        raise StripeUnavailable(f"Stripe could not be reached ({what}): {exc.user_message or exc}") from exc
    except stripe.AuthenticationError as exc:
        raise StripeRefused(
            f"Stripe refused the API key ({what}); check STRIPE_API_KEY.", http_status=exc.http_status
        ) from exc
    except stripe.StripeError as exc:
        status = exc.http_status or 0
        if status >= 500 or status in {0, 409}:
            raise StripeUnavailable(f"Stripe failed ({what}, HTTP {status}); try again shortly.") from exc
        raise StripeRefused(
            f"Stripe refused {what}: {exc.user_message or exc}", stripe_code=exc.code, http_status=status
        ) from exc


def _options(idempotency_key: str | None) -> dict[str, Any]:
    return {"options": {"idempotency_key": idempotency_key}} if idempotency_key else {}


# --- customers, prices, products, meters ------------------------------------------------------


def customer_create(*, params: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
    return _call(
        "creating a customer", client().v1.customers.create, params=params, **_options(idempotency_key)
    )


def customer_retrieve(*, customer_id: str) -> dict[str, Any]:
    return _call("reading a customer", client().v1.customers.retrieve, customer_id)


def product_create(*, params: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
    return _call(
        "creating a product", client().v1.products.create, params=params, **_options(idempotency_key)
    )


def price_create(*, params: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
    return _call("creating a price", client().v1.prices.create, params=params, **_options(idempotency_key))


def price_retrieve(*, price_id: str) -> dict[str, Any]:
    return _call("reading a price", client().v1.prices.retrieve, price_id)


def prices_by_lookup_key(*, lookup_keys: list[str]) -> dict[str, dict[str, Any]]:
    """Active prices with these lookup keys, by lookup key."""
    if not lookup_keys:
        return {}
    found = _call(
        "listing prices",
        client().v1.prices.list,
        params={"lookup_keys": lookup_keys, "active": True, "limit": 100},
    )
    return {str(price["lookup_key"]): price for price in found["data"] if price.get("lookup_key")}


def meter_create(*, params: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
    return _call(
        "creating a billing meter",
        client().v1.billing.meters.create,
        params=params,
        **_options(idempotency_key),
    )


def meters_list() -> list[dict[str, Any]]:
    found = _call("listing billing meters", client().v1.billing.meters.list, params={"limit": 100})
    return list(found["data"])


# --- checkout, portal, subscriptions, invoices -------------------------------------------------


def checkout_session_create(*, params: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
    return _call(
        "creating a checkout session",
        client().v1.checkout.sessions.create,
        params=params,
        **_options(idempotency_key),
    )


def portal_session_create(*, params: dict[str, Any]) -> dict[str, Any]:
    return _call("opening the billing portal", client().v1.billing_portal.sessions.create, params=params)


def subscription_retrieve(*, subscription_id: str) -> dict[str, Any]:
    return _call("reading a subscription", client().v1.subscriptions.retrieve, subscription_id)


def subscription_update(
    *, subscription_id: str, params: dict[str, Any], idempotency_key: str | None = None
) -> dict[str, Any]:
    return _call(
        "changing a subscription",
        client().v1.subscriptions.update,
        subscription_id,
        params=params,
        **_options(idempotency_key),
    )


def subscription_cancel(*, subscription_id: str) -> dict[str, Any]:
    return _call("cancelling a subscription", client().v1.subscriptions.cancel, subscription_id)


def invoices_list(*, customer_id: str, limit: int = 100) -> list[dict[str, Any]]:
    found = _call(
        "listing invoices", client().v1.invoices.list, params={"customer": customer_id, "limit": limit}
    )
    return list(found["data"])


# --- usage ---------------------------------------------------------------------------------------


def meter_event_create(
    *, event_name: str, customer_id: str, value: str, identifier: str, timestamp: int
) -> dict[str, Any]:
    """One Billing Meter event. `identifier` is also the Idempotency-Key: a retry of a request
    whose answer was lost gets Stripe's first answer, and an identifier Stripe already holds
    is refused with StripeRefused(duplicate=True), which means it was recorded."""
    return _call(
        f"reporting usage ({event_name})",
        client().v1.billing.meter_events.create,
        params={
            "event_name": event_name,
            "identifier": identifier,
            "timestamp": timestamp,
            "payload": {"stripe_customer_id": customer_id, "value": value},
        },
        options={"idempotency_key": identifier},
    )


# --- webhooks ------------------------------------------------------------------------------------


def webhook_event_construct(*, payload: bytes, signature: str) -> dict[str, Any]:
    """The event in a webhook request, once its Stripe-Signature verifies against
    STRIPE_WEBHOOK_SECRET within STRIPE_WEBHOOK_TOLERANCE_SECONDS (the SDK's check)."""
    secret = str(settings.STRIPE_WEBHOOK_SECRET)
    if not secret:
        raise StripeNotConfigured("Stripe webhooks are not set up on this server: set STRIPE_WEBHOOK_SECRET.")
    if not signature:
        raise WebhookSignatureInvalid("The request has no Stripe-Signature header.")
    try:
        event = stripe.Webhook.construct_event(
            payload, signature, secret, tolerance=int(settings.STRIPE_WEBHOOK_TOLERANCE_SECONDS)
        )
    except stripe.SignatureVerificationError as exc:
        raise WebhookSignatureInvalid(
            f"The Stripe signature does not verify: {exc.user_message or exc}"
        ) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise WebhookSignatureInvalid("The body is not a Stripe event (not JSON).") from exc
    return _plain(event)
