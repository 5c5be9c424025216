"""A loopback Stripe API for tests, driven by the real `stripe` SDK (StripeClient with its
base addresses pointed here, or `stripe.api_base`).

It speaks Stripe's protocol: form-encoded request bodies in Stripe's bracket notation
(`line_items[0][price]=price_...`), JSON answers shaped like Stripe's objects, Stripe's
error bodies {"error": {"type", "message", "param", "code"}}, `Idempotency-Key` replays
(the same key and parameters get the first answer again, with `Idempotent-Replayed: true`),
and webhooks signed the real way (`Stripe-Signature: t=<ts>,v1=<HMAC-SHA256(secret,
"<ts>.<payload>")>`), so `stripe.Webhook.construct_event` verifies them.

Endpoints: customers (create, retrieve, update, delete), products and prices (create,
retrieve, update, list; metered prices name a billing meter), checkout sessions (create in
subscription, setup or payment mode, retrieve, expire; `url` is this fake's hosted page),
billing portal sessions, subscriptions (create, retrieve, update, cancel, list), billing
meters (create, retrieve, list) and meter events (an `identifier` seen before is refused
the way Stripe refuses it), invoices (retrieve, list), events (retrieve, list).

Hosted pages: GET /checkout/<id> shows the line items and a "Pay and subscribe" button
(a setup session: "Save payment details"); submitting it completes the session (a
customer if there was none, the subscription and its paid first invoice), sends the
signed webhooks checkout.session.completed, customer.subscription.created and
invoice.paid to `webhook_url`, then redirects to success_url. A "Cancel" link goes to
cancel_url. GET /portal/<id> lists the customer's subscriptions with a button that sets
cancel_at_period_end, and a link back to return_url.

    with stripe_server() as fake:            # or the `stripe_fake` fixture (session-scoped)
        fake.webhook_url = "http://127.0.0.1:8000/billing/stripe/webhook/"
        client = stripe.StripeClient("sk_test_x", base_addresses=fake.base_addresses)
        fake.fail("/v1/billing/meter_events", times=3)      # the next 3 answer 500
        fake.fail("/v1/billing/meter_events")               # ...all of them, until cleared
        fake.clear_failures()
        fake.meter_events                                  # the events Stripe kept
        fake.send_event("customer.subscription.updated", subscription)  # any event
        fake.deliver(event)                                # again: a replay
        fake.advance(31 * 86400)                           # renews subscriptions

The same controls answer over HTTP under /_fake/ (JSON), for a process that holds no
reference to the object: POST /_fake/fail {"path", "times", "status"}, POST
/_fake/clear_failures, GET /_fake/meter_events, POST /_fake/events {"type", "object"},
POST /_fake/advance {"seconds"}, POST /_fake/checkout/<id>/complete.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import html
import json
import os
import re
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

API_VERSION = "2026-10-28.endive"
MONTH_SECONDS = 30 * 86400
METER_EVENT_MAX_AGE_SECONDS = 35 * 86400


class Dropped(Exception):
    """The connection is closed without an answer."""


class StripeError(Exception):
    """An answer in Stripe's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        should_retry: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param
        self.code = code
        self.should_retry = should_retry

    def body(self, request_id: str) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.error_type, "message": self.message}
        if self.param:
            error["param"] = self.param
        if self.code:
            error["code"] = self.code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        error["request_log_url"] = f"https://dashboard.stripe.com/test/logs/{request_id}"
        return {"error": error}


def missing(kind: str, object_id: str, param: str = "id") -> StripeError:
    return StripeError(404, f"No such {kind}: '{object_id}'", param=param, code="resource_missing")


def decode_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's bracket notation back into nested dicts and lists:
    `items[0][price]=p&expand[0]=x&metadata[k]=v` -> {"items": [{"price": "p"}], ...}."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        first, _, rest = key.partition("[")
        names = [first] + (re.findall(r"\[([^\]]*)\]", "[" + rest) if rest else [])
        node: dict[str, Any] = root
        for index, name in enumerate(names):
            last = index == len(names) - 1
            if name == "":  # `a[]=x`: the next free index
                name = str(len(node))
            if last:
                node[name] = value
            else:
                node = node.setdefault(name, {})
    decoded: dict[str, Any] = _listify(root)
    return decoded


def _listify(value: Any) -> Any:
    if isinstance(value, dict):
        converted = {key: _listify(item) for key, item in value.items()}
        if converted and all(key.isdigit() for key in converted):
            return [converted[key] for key in sorted(converted, key=int)]
        return converted
    return value


def _truthy(value: Any) -> bool:
    return str(value).lower() in {"true", "1"}


def _int(value: Any, param: str) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise StripeError(400, f"Invalid integer: {value}", param=param) from None


def sign(payload: str, secret: str, timestamp: int) -> str:
    """The Stripe-Signature header for a payload (as Stripe computes it)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


@dataclass
class Failure:
    path: str  # a request whose path starts with this fails
    status: int = 500
    remaining: int | None = None  # None: until clear_failures()
    method: str | None = None  # None: every method
    after_processing: bool = False  # do the work, then answer the error (a lost answer)
    drop: bool = False  # close the connection without answering (a network error)


@dataclass
class Delivery:
    event_id: str
    type: str
    status: int | None  # None: the endpoint could not be reached
    body: str = ""


@dataclass
class Recorded:
    method: str
    path: str
    params: dict[str, Any]
    headers: dict[str, str]
    status: int = 0


@dataclass
class FakeStripe:
    api_key: str | None = None  # set: another Bearer key gets Stripe's 401
    webhook_url: str | None = None  # where events are sent (None: recorded only)
    webhook_secret: str = field(default_factory=lambda: "whsec_" + secrets.token_hex(16))
    # Instead of HTTP: called with (body, headers) and returns the status (a Django test client).
    webhook_handler: Callable[[bytes, dict[str, str]], int] | None = None
    origin: str = ""

    def __post_init__(self) -> None:
        self.lock = threading.RLock()
        self.offset = 0  # seconds added to the real clock by advance()
        self.store: dict[str, dict[str, dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self.deliveries: list[Delivery] = []
        self.meter_events: list[dict[str, Any]] = []
        self.meter_event_attempts = 0
        self.requests: list[Recorded] = []
        self.failures: list[Failure] = []
        self._idempotency: dict[str, tuple[str, int, bytes]] = {}
        self._identifiers: dict[str, int] = {}
        self._sequence = 0
        self._pending_local = threading.local()

    # -- what tests use -----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self.origin

    @property
    def base_addresses(self) -> Any:  # the SDK's BaseAddresses (a TypedDict)
        """For `stripe.StripeClient(key, base_addresses=...)`: every Stripe host is this fake."""
        return {"api": self.origin, "connect": self.origin, "files": self.origin, "meter_events": self.origin}

    def now(self) -> int:
        return int(time.time()) + self.offset

    def reset(self) -> None:
        """Forget every object, event, request and failure (the webhook settings stay)."""
        with self.lock:
            self.__post_init__()

    def fail(
        self,
        path: str,
        *,
        times: int | None = None,
        status: int = 500,
        method: str | None = None,
        after_processing: bool = False,
        drop: bool = False,
    ) -> Failure:
        """The next `times` requests to paths starting with `path` (None: all, until
        clear_failures) answer `status` in Stripe's error shape. after_processing: the
        request is carried out first and only its answer is lost. drop: the connection closes
        with no answer at all (what the SDK reports as APIConnectionError)."""
        failure = Failure(
            path=path,
            status=status,
            remaining=times,
            method=method,
            after_processing=after_processing,
            drop=drop,
        )
        with self.lock:
            self.failures.append(failure)
        return failure

    def clear_failures(self) -> None:
        with self.lock:
            self.failures.clear()

    def objects(self, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            return [copy.deepcopy(item) for item in self.store.get(kind, {}).values()]

    def get(self, kind: str, object_id: str) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self._get(kind, object_id))

    def meter_totals(self) -> dict[tuple[str, str], Decimal]:
        """(customer id, event name) -> the sum of the values Stripe kept."""
        totals: dict[tuple[str, str], Decimal] = {}
        with self.lock:
            for event in self.meter_events:
                meter = self._meter_for(event["event_name"])
                customer_key = (
                    meter["customer_mapping"]["event_payload_key"] if meter else "stripe_customer_id"
                )
                value_key = meter["value_settings"]["event_payload_key"] if meter else "value"
                key = (event["payload"][customer_key], event["event_name"])
                totals[key] = totals.get(key, Decimal(0)) + Decimal(event["payload"][value_key])
        return totals

    def events_of(self, event_type: str) -> list[dict[str, Any]]:
        with self.lock:
            return [copy.deepcopy(event) for event in self.events if event["type"] == event_type]

    def send_event(
        self,
        event_type: str,
        data_object: dict[str, Any],
        *,
        created: int | None = None,
        event_id: str | None = None,
        previous_attributes: dict[str, Any] | None = None,
        deliver: bool = True,
    ) -> dict[str, Any]:
        """An event of any type about any object (made up, or one of the fake's own), recorded
        and, by default, delivered. `created` sets its time (an older event sent late)."""
        event = self._event(
            event_type, data_object, created=created, event_id=event_id, previous=previous_attributes
        )
        if deliver:
            self.deliver(event)
        return event

    def signed(
        self, event: dict[str, Any], *, secret: str | None = None, timestamp: int | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """The body and headers Stripe would send for this event."""
        payload = json.dumps(event, indent=2)
        header = sign(payload, secret or self.webhook_secret, timestamp or int(time.time()))
        return payload.encode(), {
            "Content-Type": "application/json; charset=utf-8",
            "Stripe-Signature": header,
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        }

    def deliver(
        self, event: dict[str, Any], *, secret: str | None = None, timestamp: int | None = None
    ) -> int | None:
        """Sends one event to the endpoint (again, for a replay); returns the endpoint's status.
        `timestamp` is the signature's (real clock; an old one falls outside the tolerance)."""
        body, headers = self.signed(event, secret=secret, timestamp=timestamp)
        status: int | None
        text = ""
        if self.webhook_handler is not None:
            status = self.webhook_handler(body, headers)
        elif self.webhook_url:
            if not self.webhook_url.startswith(("http://", "https://")):
                raise ValueError(f"webhook_url must be http(s), not {self.webhook_url!r}")
            request = urllib.request.Request(  # noqa: S310 (checked just above)
                self.webhook_url, data=body, headers=headers, method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (loopback)
                    status, text = response.status, response.read().decode(errors="replace")
            except urllib.error.HTTPError as exc:
                status, text = exc.code, exc.read().decode(errors="replace")
            except OSError as exc:
                status, text = None, str(exc)
        else:
            return None
        with self.lock:
            self.deliveries.append(
                Delivery(event_id=event["id"], type=event["type"], status=status, body=text)
            )
        return status

    def advance(self, seconds: int) -> None:
        """Moves the fake's clock: subscriptions whose period ended renew (a new period and
        a paid invoice) or, when set to cancel at the period's end, end; each change sends
        its events as Stripe would."""
        with self.lock:
            self.offset += seconds
            due = [
                sub
                for sub in self.store.get("subscription", {}).values()
                if sub["status"] in {"active", "trialing", "past_due"} and self._period_end(sub) <= self.now()
            ]
        for subscription in due:
            with self.lock:
                if subscription["cancel_at_period_end"]:
                    previous = {"status": subscription["status"]}
                    self._end_subscription(subscription)
                    event_type, invoice = "customer.subscription.deleted", None
                else:
                    start = self._period_end(subscription)
                    previous = {
                        "items": copy.deepcopy(subscription["items"]),
                        "latest_invoice": subscription["latest_invoice"],
                    }
                    for item in subscription["items"]["data"]:
                        item["current_period_start"], item["current_period_end"] = (
                            start,
                            start + MONTH_SECONDS,
                        )
                    invoice = self._invoice_for(subscription, billing_reason="subscription_cycle")
                    subscription["latest_invoice"] = invoice["id"]
                    event_type = "customer.subscription.updated"
                snapshot = copy.deepcopy(subscription)
            self.send_event(event_type, snapshot, previous_attributes=previous)
            if invoice is not None:
                self.send_event("invoice.paid", invoice)

    def complete_checkout(self, session_id: str) -> str:
        """What pressing "Pay and subscribe" does; returns the success_url to go to."""
        with self.lock:
            session = self._get("checkout.session", session_id)
            if session["status"] != "open":
                raise StripeError(400, f"This Checkout Session is {session['status']}.")
            customer = session["customer"]
            new_customer = None
            if customer is None:
                new_customer = self._customer_create(
                    {"email": session.get("customer_email") or f"{secrets.token_hex(4)}@example.test"}
                )
                customer = new_customer["id"]
            session["customer"] = customer
            session["status"] = "complete"
            subscription = invoice = None
            if session["mode"] == "subscription":
                subscription_data = session.get("_subscription_data") or {}
                subscription = self._subscription_create(
                    {
                        "customer": customer,
                        "items": [
                            {
                                "price": item["price"]["id"],
                                **({"quantity": item["quantity"]} if item.get("quantity") else {}),
                            }
                            for item in session["_line_items"]
                        ],
                        "metadata": subscription_data.get("metadata") or {},
                        "trial_period_days": subscription_data.get("trial_period_days"),
                    }
                )
                invoice = self._get("invoice", subscription["latest_invoice"])
                session["subscription"] = subscription["id"]
                session["invoice"] = invoice["id"]
                session["payment_status"] = "paid"
                session["amount_total"] = invoice["total"]
            elif session["mode"] == "setup":
                payment_method = self._new_id("pm")
                setup_intent = self._new_id("seti")
                self._get("customer", customer)["invoice_settings"]["default_payment_method"] = payment_method
                session["setup_intent"] = setup_intent
                session["payment_status"] = "no_payment_required"
            else:
                session["payment_status"] = "paid"
            snapshots = [
                ("customer.created", copy.deepcopy(new_customer)) if new_customer else None,
                ("checkout.session.completed", self._public(session)),
                ("customer.subscription.created", copy.deepcopy(subscription)) if subscription else None,
                ("invoice.paid", copy.deepcopy(invoice)) if invoice else None,
            ]
            success_url = str(session["success_url"] or "").replace("{CHECKOUT_SESSION_ID}", session["id"])
        for entry in snapshots:
            if entry is not None:
                self.send_event(entry[0], entry[1])
        return success_url

    # -- objects ------------------------------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}_{'test_' if prefix == 'cs' else ''}{secrets.token_hex(12)}"

    def _put(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        self._sequence += 1
        obj["_sequence"] = self._sequence
        self.store.setdefault(kind, {})[obj["id"]] = obj
        return obj

    def _get(self, kind: str, object_id: str, param: str = "id") -> dict[str, Any]:
        obj = self.store.get(kind, {}).get(object_id)
        if obj is None:
            raise missing(kind.replace("_", " ").replace(".", " "), object_id, param)
        return obj

    @staticmethod
    def _public(obj: dict[str, Any]) -> dict[str, Any]:
        return {key: copy.deepcopy(value) for key, value in obj.items() if not key.startswith("_")}

    @staticmethod
    def _metadata(current: dict[str, Any], update: Any) -> dict[str, Any]:
        if update in (None, ""):
            return {} if update == "" else current
        if not isinstance(update, dict):
            raise StripeError(400, "Invalid hash", param="metadata")
        merged = dict(current)
        for key, value in update.items():
            if value == "":
                merged.pop(key, None)
            else:
                merged[key] = str(value)
        return merged

    def _customer_create(self, params: dict[str, Any]) -> dict[str, Any]:
        customer = {
            "id": self._new_id("cus"),
            "object": "customer",
            "address": None,
            "balance": 0,
            "created": self.now(),
            "currency": None,
            "delinquent": False,
            "description": params.get("description"),
            "email": params.get("email"),
            "invoice_settings": {"custom_fields": None, "default_payment_method": None, "footer": None},
            "livemode": False,
            "metadata": self._metadata({}, params.get("metadata")),
            "name": params.get("name"),
            "phone": params.get("phone"),
        }
        return self._put("customer", customer)

    def _price_object(self, price_id: str) -> dict[str, Any]:
        return self._public(self._get("price", price_id, "price"))

    def _meter_for(self, event_name: str) -> dict[str, Any] | None:
        for meter in self.store.get("billing.meter", {}).values():
            if meter["event_name"] == event_name and meter["status"] == "active":
                return meter
        return None

    @staticmethod
    def _period_end(subscription: dict[str, Any]) -> int:
        return int(subscription["items"]["data"][0]["current_period_end"])

    def _end_subscription(self, subscription: dict[str, Any]) -> None:
        subscription["status"] = "canceled"
        subscription["canceled_at"] = subscription["canceled_at"] or self.now()
        subscription["ended_at"] = self.now()

    def _subscription_items(self, subscription_id: str, items: Any, start: int) -> list[dict[str, Any]]:
        if not isinstance(items, list) or not items:
            raise StripeError(400, "Missing required param: items.", param="items")
        made = []
        for index, item in enumerate(items):
            if not isinstance(item, dict) or not item.get("price"):
                raise StripeError(400, "Missing required param: price.", param=f"items[{index}][price]")
            price = self._price_object(str(item["price"]))
            if price["type"] != "recurring":
                raise StripeError(
                    400,
                    "The price specified is set to `type=one_time` but this field only accepts prices "
                    "with `type=recurring`.",
                    param=f"items[{index}][price]",
                )
            metered = price["recurring"]["usage_type"] == "metered"
            if metered and item.get("quantity") not in (None, ""):
                raise StripeError(
                    400,
                    "Quantity should not be specified where usage_type is `metered`. Remove quantity "
                    f"from `items[{index}]`.",
                    param=f"items[{index}][quantity]",
                )
            made.append(
                {
                    "id": self._new_id("si"),
                    "object": "subscription_item",
                    "created": start,
                    "current_period_start": start,
                    "current_period_end": start + MONTH_SECONDS,
                    "metadata": {},
                    "price": price,
                    "quantity": None
                    if metered
                    else _int(item.get("quantity") or 1, f"items[{index}][quantity]"),
                    "subscription": subscription_id,
                }
            )
        return made

    def _subscription_create(self, params: dict[str, Any]) -> dict[str, Any]:
        customer = self._get("customer", str(params.get("customer") or ""), "customer")
        start = self.now()
        subscription_id = self._new_id("sub")
        trial_days = params.get("trial_period_days")
        trial_end = start + _int(trial_days, "trial_period_days") * 86400 if trial_days else None
        items = self._subscription_items(subscription_id, params.get("items"), start)
        subscription = {
            "id": subscription_id,
            "object": "subscription",
            "billing_cycle_anchor": start,
            "cancel_at": None,
            "cancel_at_period_end": False,
            "canceled_at": None,
            "collection_method": "charge_automatically",
            "created": start,
            "currency": items[0]["price"]["currency"],
            "customer": customer["id"],
            "default_payment_method": customer["invoice_settings"]["default_payment_method"]
            or self._new_id("pm"),
            "ended_at": None,
            "items": {
                "object": "list",
                "data": items,
                "has_more": False,
                "total_count": len(items),
                "url": f"/v1/subscription_items?subscription={subscription_id}",
            },
            "latest_invoice": None,
            "livemode": False,
            "metadata": self._metadata({}, params.get("metadata")),
            "start_date": start,
            "status": "trialing" if trial_end else "active",
            "trial_end": trial_end,
            "trial_start": start if trial_end else None,
        }
        self._put("subscription", subscription)
        invoice = self._invoice_for(subscription, billing_reason="subscription_create", trial=bool(trial_end))
        subscription["latest_invoice"] = invoice["id"]
        return subscription

    def _invoice_for(
        self, subscription: dict[str, Any], *, billing_reason: str, trial: bool = False
    ) -> dict[str, Any]:
        lines = []
        total = 0
        for item in subscription["items"]["data"]:
            price = item["price"]
            amount = 0
            if price["recurring"]["usage_type"] == "licensed" and not trial:
                amount = int(Decimal(price["unit_amount_decimal"] or 0) * (item["quantity"] or 1))
            total += amount
            lines.append(
                {
                    "id": self._new_id("il"),
                    "object": "line_item",
                    "amount": amount,
                    "currency": price["currency"],
                    "description": f"{item['quantity'] or 0} x {price.get('nickname') or price['product']}",
                    "period": {"start": item["current_period_start"], "end": item["current_period_end"]},
                    "pricing": {"price_details": {"price": price["id"], "product": price["product"]}},
                    "quantity": item["quantity"],
                }
            )
        invoice_id = self._new_id("in")
        period = subscription["items"]["data"][0]
        count = len(self.store.get("invoice", {})) + 1
        invoice = {
            "id": invoice_id,
            "object": "invoice",
            "amount_due": total,
            "amount_paid": total,
            "amount_remaining": 0,
            "billing_reason": billing_reason,
            "collection_method": "charge_automatically",
            "created": self.now(),
            "currency": subscription["currency"],
            "customer": subscription["customer"],
            "hosted_invoice_url": f"{self.origin}/invoice/{invoice_id}",
            "invoice_pdf": f"{self.origin}/invoice/{invoice_id}/pdf",
            "lines": {
                "object": "list",
                "data": lines,
                "has_more": False,
                "url": f"/v1/invoices/{invoice_id}/lines",
            },
            "livemode": False,
            "metadata": {},
            "number": f"FAKE-{count:04d}",
            "parent": {
                "type": "subscription_details",
                "subscription_details": {
                    "subscription": subscription["id"],
                    "metadata": subscription["metadata"],
                },
            },
            "period_start": period["current_period_start"],
            "period_end": period["current_period_end"],
            "status": "paid",
            "status_transitions": {"finalized_at": self.now(), "paid_at": self.now()},
            "subtotal": total,
            "total": total,
        }
        return self._put("invoice", invoice)

    def _event(
        self,
        event_type: str,
        data_object: dict[str, Any],
        *,
        created: int | None = None,
        event_id: str | None = None,
        previous: dict[str, Any] | None = None,
        request: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        data: dict[str, Any] = {"object": self._public(data_object)}
        if previous is not None:
            data["previous_attributes"] = previous
        event = {
            "id": event_id or self._new_id("evt"),
            "object": "event",
            "api_version": API_VERSION,
            "created": self.now() if created is None else created,
            "data": data,
            "livemode": False,
            "pending_webhooks": 1,
            "request": request or {"id": None, "idempotency_key": None},
            "type": event_type,
        }
        with self.lock:
            self.events.append(event)
        return copy.deepcopy(event)

    # -- the API ------------------------------------------------------------------------------------

    def handle_api(
        self, method: str, path: str, params: dict[str, Any], headers: dict[str, str]
    ) -> tuple[int, Any, dict[str, str]]:
        """One /v1 request: (status, JSON body, extra headers)."""
        request_id = "req_" + secrets.token_hex(7)
        extra = {"Request-Id": request_id, "Stripe-Version": headers.get("stripe-version", API_VERSION)}
        recorded = Recorded(method=method, path=path, params=params, headers=headers)
        with self.lock:
            self.requests.append(recorded)
            if path == "/v1/billing/meter_events":
                self.meter_event_attempts += 1
            failure = next(
                (
                    item
                    for item in self.failures
                    if path.startswith(item.path)
                    and (item.method is None or item.method.upper() == method)
                    and (item.remaining is None or item.remaining > 0)
                ),
                None,
            )
            if failure is not None and failure.remaining is not None:
                failure.remaining -= 1
        key = headers.get("idempotency-key") if method == "POST" else None
        fingerprint = json.dumps([method, path, params], sort_keys=True)
        try:
            if failure is not None and failure.drop:
                raise Dropped
            if failure is not None and not failure.after_processing:
                raise StripeError(
                    failure.status,
                    "An unknown error occurred (the fake was told to fail).",
                    error_type="api_error",
                )
            if key:
                with self.lock:
                    seen = self._idempotency.get(key)
                if seen is not None:
                    if seen[0] != fingerprint:
                        raise StripeError(
                            400,
                            "Keys for idempotent requests can only be used with the same parameters they "
                            f"were first used with. Try using a key other than '{key}' if you meant to "
                            "execute a different request.",
                            error_type="idempotency_error",
                        )
                    recorded.status = seen[1]
                    return seen[1], json.loads(seen[2]), {**extra, "Idempotent-Replayed": "true"}
            if not self._authorized(headers):
                raise StripeError(
                    401, f"Invalid API Key provided: {headers.get('authorization', '')[7:15]}****"
                )
            status, body = 200, self._route(method, path, params)
            if key:
                with self.lock:
                    self._idempotency[key] = (fingerprint, status, json.dumps(body).encode())
            if failure is not None:  # done, but the answer is lost
                raise StripeError(failure.status, "An unknown error occurred.", error_type="api_error")
        except StripeError as exc:
            status, body = exc.status, exc.body(request_id)
            if exc.should_retry is not None:
                extra["Stripe-Should-Retry"] = "true" if exc.should_retry else "false"
            # No idempotent result is saved for a refusal: Stripe saves none for a request refused
            # before it ran (validation), and the fake refuses only that way.
        recorded.status = status
        return status, body, extra

    def _authorized(self, headers: dict[str, str]) -> bool:
        authorization = headers.get("authorization", "")
        if not authorization.startswith("Bearer ") or len(authorization) <= 7:
            return False
        return self.api_key is None or authorization == f"Bearer {self.api_key}"

    def _route(self, method: str, path: str, params: dict[str, Any]) -> Any:
        for route_method, pattern, handler in self._routes():
            if route_method != method:
                continue
            match = re.fullmatch(pattern, path)
            if match:
                with self.lock:
                    result = handler(params, *match.groups())
                    return self._expand(result, params.get("expand") or [])
        raise StripeError(404, f"Unrecognized request URL ({method}: {path}).")

    def _routes(self) -> list[tuple[str, str, Callable[..., Any]]]:
        sessions, meters = "/v1/checkout/sessions", "/v1/billing/meters"
        session, meter = "checkout.session", "billing.meter"
        return [
            ("POST", r"/v1/customers", lambda p: self._public(self._customer_create(p))),
            ("GET", r"/v1/customers/([^/]+)", lambda p, i: self._public(self._get("customer", i))),
            ("POST", r"/v1/customers/([^/]+)", self._customer_update),
            ("DELETE", r"/v1/customers/([^/]+)", self._customer_delete),
            ("POST", r"/v1/products", self._product_create),
            ("GET", r"/v1/products", lambda p: self._list("product", p, "/v1/products")),
            ("GET", r"/v1/products/([^/]+)", lambda p, i: self._public(self._get("product", i))),
            ("POST", r"/v1/products/([^/]+)", self._product_update),
            ("POST", r"/v1/prices", self._price_create),
            ("GET", r"/v1/prices", self._price_list),
            ("GET", r"/v1/prices/([^/]+)", lambda p, i: self._public(self._get("price", i))),
            ("POST", r"/v1/prices/([^/]+)", self._price_update),
            ("POST", r"/v1/checkout/sessions", self._checkout_create),
            ("GET", r"/v1/checkout/sessions", lambda p: self._list("checkout.session", p, sessions)),
            ("GET", r"/v1/checkout/sessions/([^/]+)", lambda p, i: self._public(self._get(session, i))),
            ("POST", r"/v1/checkout/sessions/([^/]+)/expire", self._checkout_expire),
            ("POST", r"/v1/billing_portal/sessions", self._portal_create),
            ("POST", r"/v1/subscriptions", lambda p: self._subscription_create_api(p)),
            ("GET", r"/v1/subscriptions", self._subscription_list),
            ("GET", r"/v1/subscriptions/([^/]+)", lambda p, i: self._public(self._get("subscription", i))),
            ("POST", r"/v1/subscriptions/([^/]+)", self._subscription_update),
            ("DELETE", r"/v1/subscriptions/([^/]+)", self._subscription_cancel),
            ("POST", r"/v1/billing/meters", self._meter_create),
            ("GET", r"/v1/billing/meters", lambda p: self._list(meter, p, meters, status=p.get("status"))),
            ("GET", r"/v1/billing/meters/([^/]+)", lambda p, i: self._public(self._get("billing.meter", i))),
            ("POST", r"/v1/billing/meter_events", self._meter_event_create),
            ("GET", r"/v1/invoices", self._invoice_list),
            ("GET", r"/v1/invoices/([^/]+)", lambda p, i: self._public(self._get("invoice", i))),
            ("GET", r"/v1/events", self._event_list),
            ("GET", r"/v1/events/([^/]+)", self._event_retrieve),
        ]  # fmt: skip

    def _expand(self, result: Any, expand: list[str]) -> Any:
        for dotted in expand if isinstance(expand, list) else []:
            self._expand_path(result, str(dotted).split("."))
        return result

    def _expand_path(self, node: Any, parts: list[str]) -> None:
        if not parts or not isinstance(node, dict):
            return
        if parts[0] == "data" and isinstance(node.get("data"), list):
            for item in node["data"]:
                self._expand_path(item, parts[1:])
            return
        value = node.get(parts[0])
        if isinstance(value, str):
            for kind in self.store.values():
                if value in kind:
                    node[parts[0]] = value = self._public(kind[value])
                    break
        self._expand_path(value, parts[1:])

    def _list(
        self,
        kind: str,
        params: dict[str, Any],
        url: str,
        keep: Callable[[dict[str, Any]], bool] | None = None,
        **equal: Any,
    ) -> dict[str, Any]:
        items = sorted(
            self.store.get(kind, {}).values(),
            key=lambda item: (item.get("created", 0), item["_sequence"]),
            reverse=True,
        )
        items = [
            item
            for item in items
            if all(value is None or item.get(name) == value for name, value in equal.items())
            and (keep is None or keep(item))
        ]
        limit = min(max(_int(params.get("limit") or 10, "limit"), 1), 100)
        if params.get("starting_after"):
            ids = [item["id"] for item in items]
            if params["starting_after"] not in ids:
                raise missing(kind, str(params["starting_after"]), "starting_after")
            items = items[ids.index(params["starting_after"]) + 1 :]
        elif params.get("ending_before"):
            ids = [item["id"] for item in items]
            if params["ending_before"] in ids:
                items = items[: ids.index(params["ending_before"])][-limit:]
        page = items[:limit]
        return {
            "object": "list",
            "data": [self._public(item) for item in page],
            "has_more": len(items) > limit,
            "url": url,
        }

    def _customer_update(self, params: dict[str, Any], customer_id: str) -> dict[str, Any]:
        customer = self._get("customer", customer_id)
        for name in ("email", "name", "description", "phone"):
            if name in params:
                customer[name] = params[name] or None
        if "metadata" in params:
            customer["metadata"] = self._metadata(customer["metadata"], params["metadata"])
        settings = params.get("invoice_settings")
        if isinstance(settings, dict) and "default_payment_method" in settings:
            customer["invoice_settings"]["default_payment_method"] = (
                settings["default_payment_method"] or None
            )
        return self._public(customer)

    def _customer_delete(self, params: dict[str, Any], customer_id: str) -> dict[str, Any]:
        self._get("customer", customer_id)
        del self.store["customer"][customer_id]
        return {"id": customer_id, "object": "customer", "deleted": True}

    def _product_create(self, params: dict[str, Any]) -> dict[str, Any]:
        if not params.get("name"):
            raise StripeError(400, "Missing required param: name.", param="name")
        product = {
            "id": params.get("id") or self._new_id("prod"),
            "object": "product",
            "active": _truthy(params.get("active", "true")),
            "created": self.now(),
            "default_price": None,
            "description": params.get("description"),
            "livemode": False,
            "metadata": self._metadata({}, params.get("metadata")),
            "name": params["name"],
            "type": "service",
            "updated": self.now(),
        }
        return self._public(self._put("product", product))

    def _product_update(self, params: dict[str, Any], product_id: str) -> dict[str, Any]:
        product = self._get("product", product_id)
        for name in ("name", "description"):
            if name in params:
                product[name] = params[name]
        if "active" in params:
            product["active"] = _truthy(params["active"])
        if "metadata" in params:
            product["metadata"] = self._metadata(product["metadata"], params["metadata"])
        product["updated"] = self.now()
        return self._public(product)

    def _price_create(self, params: dict[str, Any]) -> dict[str, Any]:
        if not params.get("currency"):
            raise StripeError(400, "Missing required param: currency.", param="currency")
        product_id = params.get("product")
        if isinstance(params.get("product_data"), dict):
            product_id = self._product_create(params["product_data"])["id"]
        if not product_id:
            raise StripeError(400, "Missing required param: product.", param="product")
        self._get("product", str(product_id), "product")
        recurring = params.get("recurring")
        recurring_object = None
        if isinstance(recurring, dict):
            interval = recurring.get("interval")
            if interval not in {"day", "week", "month", "year"}:
                raise StripeError(400, "Invalid recurring[interval]", param="recurring[interval]")
            usage_type = recurring.get("usage_type") or "licensed"
            meter = recurring.get("meter")
            if usage_type == "metered":
                if not meter:
                    raise StripeError(
                        400,
                        "Metered prices must be backed by a meter. Set `recurring[meter]`.",
                        param="recurring[meter]",
                    )
                self._get("billing.meter", str(meter), "recurring[meter]")
            recurring_object = {
                "interval": interval,
                "interval_count": _int(recurring.get("interval_count") or 1, "recurring[interval_count]"),
                "meter": meter,
                "trial_period_days": None,
                "usage_type": usage_type,
            }
        amount = params.get("unit_amount")
        amount_decimal = params.get("unit_amount_decimal")
        scheme = params.get("billing_scheme") or "per_unit"
        tiers = None
        if scheme == "tiered":
            tiers = self._tiers(params)
        elif amount is None and amount_decimal is None:
            raise StripeError(400, "Missing required param: unit_amount.", param="unit_amount")
        if tiers is not None:
            amount = amount_decimal = None
        elif amount is not None:
            amount = _int(amount, "unit_amount")
            amount_decimal = str(amount)
        else:
            try:
                Decimal(str(amount_decimal))
            except InvalidOperation:
                raise StripeError(400, "Invalid decimal", param="unit_amount_decimal") from None
        lookup_key = params.get("lookup_key")
        if lookup_key:
            for other in self.store.get("price", {}).values():
                if other["lookup_key"] == lookup_key:
                    if not _truthy(params.get("transfer_lookup_key", "false")):
                        raise StripeError(
                            400,
                            f"A price (`{other['id']}`) already uses that lookup key.",
                            param="lookup_key",
                        )
                    other["lookup_key"] = None
        price = {
            "id": self._new_id("price"),
            "object": "price",
            "active": _truthy(params.get("active", "true")),
            "billing_scheme": scheme,
            "created": self.now(),
            "currency": str(params["currency"]).lower(),
            "livemode": False,
            "lookup_key": lookup_key,
            "metadata": self._metadata({}, params.get("metadata")),
            "nickname": params.get("nickname"),
            "product": product_id,
            "recurring": recurring_object,
            "tax_behavior": "unspecified",
            "tiers": tiers,
            "tiers_mode": params.get("tiers_mode") if tiers else None,
            "type": "recurring" if recurring_object else "one_time",
            "unit_amount": amount,
            "unit_amount_decimal": None if amount_decimal is None else str(amount_decimal),
        }
        return self._public(self._put("price", price))

    @staticmethod
    def _tiers(params: dict[str, Any]) -> list[dict[str, Any]]:
        """A tiered price's tiers (each up_to a quantity or "inf", with its unit amount)."""
        if params.get("tiers_mode") not in {"graduated", "volume"}:
            raise StripeError(400, "Missing required param: tiers_mode.", param="tiers_mode")
        tiers = params.get("tiers")
        if not isinstance(tiers, list) or not tiers:
            raise StripeError(400, "Missing required param: tiers.", param="tiers")
        made = []
        for index, tier in enumerate(tiers):
            up_to = tier.get("up_to")
            if up_to is None or (up_to != "inf" and not str(up_to).isdigit()):
                raise StripeError(400, "Invalid up_to: an integer or `inf`.", param=f"tiers[{index}][up_to]")
            decimal = tier.get("unit_amount_decimal", tier.get("unit_amount", "0"))
            try:
                Decimal(str(decimal))
            except InvalidOperation:
                raise StripeError(
                    400, "Invalid decimal", param=f"tiers[{index}][unit_amount_decimal]"
                ) from None
            made.append(
                {
                    "flat_amount": None,
                    "flat_amount_decimal": None,
                    "unit_amount": None,
                    "unit_amount_decimal": str(decimal),
                    "up_to": None if up_to == "inf" else int(up_to),
                }
            )
        if made[-1]["up_to"] is not None:
            raise StripeError(
                400, "The last tier must be up to `inf`.", param=f"tiers[{len(made) - 1}][up_to]"
            )
        return made

    def _price_list(self, params: dict[str, Any]) -> dict[str, Any]:
        lookup_keys = params.get("lookup_keys")
        if isinstance(lookup_keys, list) and len(lookup_keys) > 10:
            raise StripeError(400, "You can specify up to 10 lookup_keys.", param="lookup_keys")
        active = params.get("active")
        return self._list(
            "price",
            params,
            "/v1/prices",
            keep=lambda price: (
                (not lookup_keys or price["lookup_key"] in lookup_keys)
                and (active is None or price["active"] == _truthy(active))
            ),
            product=params.get("product"),
            type=params.get("type"),
            currency=params.get("currency"),
        )

    def _price_update(self, params: dict[str, Any], price_id: str) -> dict[str, Any]:
        price = self._get("price", price_id)
        for name in ("nickname", "lookup_key"):
            if name in params:
                price[name] = params[name] or None
        if "active" in params:
            price["active"] = _truthy(params["active"])
        if "metadata" in params:
            price["metadata"] = self._metadata(price["metadata"], params["metadata"])
        return self._public(price)

    def _checkout_create(self, params: dict[str, Any]) -> dict[str, Any]:
        mode = params.get("mode")
        if mode not in {"payment", "setup", "subscription"}:
            raise StripeError(400, "Missing required param: mode.", param="mode")
        if not params.get("success_url"):
            raise StripeError(400, "Missing required param: success_url.", param="success_url")
        customer = params.get("customer")
        if customer:
            self._get("customer", str(customer), "customer")
        line_items = params.get("line_items") or []
        if mode != "setup" and not line_items:
            raise StripeError(400, "Missing required param: line_items.", param="line_items")
        stored_items: list[dict[str, Any]] = []
        for index, item in enumerate(line_items):
            if not isinstance(item, dict) or not item.get("price"):
                raise StripeError(400, "Missing required param: price.", param=f"line_items[{index}][price]")
            price = self._price_object(str(item["price"]))
            if not price["active"]:
                raise StripeError(
                    400, f"The price `{price['id']}` is not active.", param=f"line_items[{index}][price]"
                )
            metered = (price.get("recurring") or {}).get("usage_type") == "metered"
            if mode == "subscription" and price["type"] != "recurring":
                raise StripeError(
                    400,
                    "You must provide at least one recurring price in `subscription` mode when using prices.",
                    param=f"line_items[{index}][price]",
                )
            if metered and item.get("quantity") not in (None, ""):
                raise StripeError(
                    400,
                    "Quantity should not be specified where usage_type is `metered`. Remove quantity from "
                    f"`line_items[{index}]`.",
                    param=f"line_items[{index}][quantity]",
                )
            if not metered and item.get("quantity") in (None, ""):
                raise StripeError(
                    400,
                    f"Quantity is required. Add `quantity` to `line_items[{index}]`.",
                    param=f"line_items[{index}][quantity]",
                )
            quantity = None if metered else _int(item["quantity"], f"line_items[{index}][quantity]")
            stored_items.append({"price": price, "quantity": quantity})
        session_id = self._new_id("cs")
        subscription_data = (
            params.get("subscription_data") if isinstance(params.get("subscription_data"), dict) else {}
        )
        amount_total = sum(
            int(Decimal(item["price"]["unit_amount_decimal"] or 0) * (item["quantity"] or 0))
            for item in stored_items
        )
        session = {
            "id": session_id,
            "object": "checkout.session",
            "amount_subtotal": amount_total,
            "amount_total": amount_total,
            "cancel_url": params.get("cancel_url"),
            "client_reference_id": params.get("client_reference_id"),
            "created": self.now(),
            "currency": stored_items[0]["price"]["currency"] if stored_items else params.get("currency"),
            "customer": customer or None,
            "customer_email": params.get("customer_email"),
            "expires_at": self.now() + 86400,
            "invoice": None,
            "livemode": False,
            "metadata": self._metadata({}, params.get("metadata")),
            "mode": mode,
            "payment_status": "unpaid",
            "setup_intent": None,
            "status": "open",
            "subscription": None,
            "success_url": params["success_url"],
            "ui_mode": "hosted",
            "url": f"{self.origin}/checkout/{session_id}",
            "_line_items": stored_items,
            "_subscription_data": subscription_data,
        }
        return self._public(self._put("checkout.session", session))

    def _checkout_expire(self, params: dict[str, Any], session_id: str) -> dict[str, Any]:
        session = self._get("checkout.session", session_id)
        if session["status"] != "open":
            raise StripeError(400, "Only Checkout Sessions with a status of `open` can be expired.")
        session["status"] = "expired"
        session["url"] = None
        return self._public(session)

    def _portal_create(self, params: dict[str, Any]) -> dict[str, Any]:
        customer = self._get("customer", str(params.get("customer") or ""), "customer")
        portal_id = "bps_" + secrets.token_hex(12)
        portal = {
            "id": portal_id,
            "object": "billing_portal.session",
            "configuration": "bpc_fake",
            "created": self.now(),
            "customer": customer["id"],
            "livemode": False,
            "locale": None,
            "return_url": params.get("return_url"),
            "url": f"{self.origin}/portal/{portal_id}",
        }
        return self._public(self._put("billing_portal.session", portal))

    def _subscription_create_api(self, params: dict[str, Any]) -> dict[str, Any]:
        subscription = self._subscription_create(params)
        invoice = self._get("invoice", subscription["latest_invoice"])
        self._after_unlock(
            [
                ("customer.subscription.created", copy.deepcopy(subscription)),
                ("invoice.paid", copy.deepcopy(invoice)),
            ]
        )
        return self._public(subscription)

    def _subscription_list(self, params: dict[str, Any]) -> dict[str, Any]:
        status = params.get("status")
        price = params.get("price")

        def keep(subscription: dict[str, Any]) -> bool:
            if status == "all":
                status_ok = True
            elif status:
                status_ok = subscription["status"] == status
            else:
                status_ok = subscription["status"] != "canceled"
            price_ok = not price or any(
                item["price"]["id"] == price for item in subscription["items"]["data"]
            )
            return status_ok and price_ok

        return self._list(
            "subscription", params, "/v1/subscriptions", keep=keep, customer=params.get("customer")
        )

    def _subscription_update(self, params: dict[str, Any], subscription_id: str) -> dict[str, Any]:
        subscription = self._get("subscription", subscription_id)
        if subscription["status"] == "canceled" and set(params) - {
            "metadata",
            "cancellation_details",
            "expand",
        }:
            raise StripeError(
                400,
                "A canceled subscription can only update its cancellation_details and metadata.",
            )
        previous: dict[str, Any] = {}
        if "cancel_at_period_end" in params:
            value = _truthy(params["cancel_at_period_end"])
            if value != subscription["cancel_at_period_end"]:
                previous["cancel_at_period_end"] = subscription["cancel_at_period_end"]
                previous["cancel_at"] = subscription["cancel_at"]
                previous["canceled_at"] = subscription["canceled_at"]
                subscription["cancel_at_period_end"] = value
                subscription["cancel_at"] = self._period_end(subscription) if value else None
                subscription["canceled_at"] = self.now() if value else None
        if "metadata" in params:
            previous["metadata"] = subscription["metadata"]
            subscription["metadata"] = self._metadata(subscription["metadata"], params["metadata"])
        if "items" in params:
            previous["items"] = copy.deepcopy(subscription["items"])
            current = {item["id"]: item for item in subscription["items"]["data"]}
            start = subscription["items"]["data"][0]["current_period_start"]
            for index, change in enumerate(params["items"] if isinstance(params["items"], list) else []):
                item_id = change.get("id")
                if item_id:
                    if item_id not in current:
                        raise missing("subscription item", item_id, f"items[{index}][id]")
                    if _truthy(change.get("deleted", "false")):
                        del current[item_id]
                        continue
                    if change.get("price"):
                        current[item_id]["price"] = self._price_object(str(change["price"]))
                    if change.get("quantity") not in (None, ""):
                        current[item_id]["quantity"] = _int(change["quantity"], f"items[{index}][quantity]")
                else:
                    for made in self._subscription_items(subscription_id, [change], start):
                        made["current_period_end"] = subscription["items"]["data"][0]["current_period_end"]
                        current[made["id"]] = made
            subscription["items"]["data"] = list(current.values())
            subscription["items"]["total_count"] = len(current)
        if previous:
            self._after_unlock([("customer.subscription.updated", copy.deepcopy(subscription), previous)])
        return self._public(subscription)

    def _subscription_cancel(self, params: dict[str, Any], subscription_id: str) -> dict[str, Any]:
        subscription = self._get("subscription", subscription_id)
        if subscription["status"] == "canceled":
            raise StripeError(400, f"The subscription '{subscription_id}' is already canceled.")
        self._end_subscription(subscription)
        self._after_unlock([("customer.subscription.deleted", copy.deepcopy(subscription))])
        return self._public(subscription)

    def _meter_create(self, params: dict[str, Any]) -> dict[str, Any]:
        for name in ("display_name", "event_name"):
            if not params.get(name):
                raise StripeError(400, f"Missing required param: {name}.", param=name)
        aggregation = params.get("default_aggregation")
        if not isinstance(aggregation, dict) or aggregation.get("formula") not in {"sum", "count", "last"}:
            raise StripeError(
                400,
                "Missing required param: default_aggregation[formula].",
                param="default_aggregation[formula]",
            )
        if self._meter_for(str(params["event_name"])):
            raise StripeError(
                400,
                f"An active meter with event_name `{params['event_name']}` already exists.",
                param="event_name",
            )
        mapping = params.get("customer_mapping") or {}
        values = params.get("value_settings") or {}
        meter = {
            "id": "mtr_" + secrets.token_hex(12),
            "object": "billing.meter",
            "created": self.now(),
            "customer_mapping": {
                "event_payload_key": mapping.get("event_payload_key") or "stripe_customer_id",
                "type": mapping.get("type") or "by_id",
            },
            "default_aggregation": {"formula": aggregation["formula"]},
            "display_name": params["display_name"],
            "event_name": params["event_name"],
            "event_time_window": params.get("event_time_window"),
            "livemode": False,
            "status": "active",
            "status_transitions": {"deactivated_at": None},
            "updated": self.now(),
            "value_settings": {"event_payload_key": values.get("event_payload_key") or "value"},
        }
        return self._public(self._put("billing.meter", meter))

    def _meter_event_create(self, params: dict[str, Any]) -> dict[str, Any]:
        event_name = params.get("event_name")
        if not event_name:
            raise StripeError(400, "Missing required param: event_name.", param="event_name")
        payload = params.get("payload")
        if not isinstance(payload, dict):
            raise StripeError(400, "Missing required param: payload.", param="payload")
        meter = self._meter_for(str(event_name))
        if meter is None:
            raise StripeError(
                400, f"No active meter found for event_name `{event_name}`.", param="event_name"
            )
        customer_key = meter["customer_mapping"]["event_payload_key"]
        value_key = meter["value_settings"]["event_payload_key"]
        if customer_key not in payload:
            raise StripeError(
                400, f"Missing required param: payload[{customer_key}].", param=f"payload[{customer_key}]"
            )
        self._get("customer", str(payload[customer_key]), f"payload[{customer_key}]")
        raw_value = payload.get(value_key)
        try:
            value = Decimal(str(raw_value))
        except InvalidOperation:
            raise StripeError(
                400,
                f"The value in the event payload must be a number. Received `{raw_value}`.",
                param=f"payload[{value_key}]",
            ) from None
        if not value.is_finite() or len(value.normalize().as_tuple().digits) > 15:
            raise StripeError(
                400,
                f"The value in the event payload can have at most 15 digits. Received `{raw_value}`.",
                param=f"payload[{value_key}]",
                code="meter_event_value_too_many_digits",
            )
        timestamp = _int(params.get("timestamp") or self.now(), "timestamp")
        if timestamp < self.now() - METER_EVENT_MAX_AGE_SECONDS or timestamp > self.now() + 300:
            raise StripeError(
                400,
                "Timestamp must be within the past 35 calendar days and at most 5 minutes in the future.",
                param="timestamp",
            )
        identifier = str(params.get("identifier") or secrets.token_hex(16))
        seen = self._identifiers.get(identifier)
        if seen is not None and seen > self.now() - 86400:
            raise StripeError(
                400,
                f"An event already exists with identifier {identifier}.",
                param="identifier",
                should_retry=False,
            )
        self._identifiers[identifier] = self.now()
        event = {
            "object": "billing.meter_event",
            "created": self.now(),
            "event_name": event_name,
            "identifier": identifier,
            "livemode": False,
            "payload": {str(key): str(item) for key, item in payload.items()},
            "timestamp": timestamp,
        }
        self.meter_events.append(event)
        return copy.deepcopy(event)

    def _invoice_list(self, params: dict[str, Any]) -> dict[str, Any]:
        subscription = params.get("subscription")
        return self._list(
            "invoice",
            params,
            "/v1/invoices",
            keep=lambda invoice: (
                not subscription or invoice["parent"]["subscription_details"]["subscription"] == subscription
            ),
            customer=params.get("customer"),
            status=params.get("status"),
        )

    def _event_list(self, params: dict[str, Any]) -> dict[str, Any]:
        kind = params.get("type")
        ordered = [
            {**event, "_sequence": index}
            for index, event in enumerate(self.events)
            if not kind or event["type"] == kind
        ]
        store = {event["id"]: event for event in ordered}
        self.store["_events_view"] = store
        try:
            return self._list("_events_view", params, "/v1/events")
        finally:
            del self.store["_events_view"]

    def _event_retrieve(self, params: dict[str, Any], event_id: str) -> dict[str, Any]:
        for event in self.events:
            if event["id"] == event_id:
                return copy.deepcopy(event)
        raise missing("event", event_id)

    # Events an API call causes are sent after its answer, outside the lock (the endpoint may
    # call back into the fake while it handles them), as Stripe sends them after answering.
    def _after_unlock(self, entries: list[tuple[Any, ...]]) -> None:
        pending = getattr(self._pending_local, "events", None)
        if pending is None:
            pending = self._pending_local.events = []
        pending.extend(entries)

    def flush_pending(self) -> None:
        pending = getattr(self._pending_local, "events", None) or []
        self._pending_local.events = []
        for entry in pending:
            previous = entry[2] if len(entry) > 2 else None
            self.send_event(entry[0], entry[1], previous_attributes=previous)

    # -- hosted pages -------------------------------------------------------------------------------

    def checkout_page(self, session_id: str) -> tuple[int, str]:
        with self.lock:
            session = self.store.get("checkout.session", {}).get(session_id)
            if session is None:
                return 404, _page("Not found", "<p>This checkout link is not valid.</p>")
            if session["status"] != "open":
                return 410, _page(
                    "Checkout", f"<p>This checkout session is {html.escape(session['status'])}.</p>"
                )
            rows = []
            for item in session["_line_items"]:
                price = item["price"]
                product = self.store.get("product", {}).get(price["product"], {})
                if price["tiers"]:
                    amount = "by usage, in tiers"
                elif price["recurring"] and price["recurring"]["usage_type"] == "metered":
                    amount = (
                        f"{Decimal(price['unit_amount_decimal']) / 100} {price['currency'].upper()} per unit"
                    )
                else:
                    total = Decimal(price["unit_amount_decimal"]) / 100 * (item["quantity"] or 1)
                    amount = f"{total:.2f} {price['currency'].upper()}"
                    if price["recurring"]:
                        amount += f" / {price['recurring']['interval']}"
                rows.append(
                    f"<li class='line-item'><span>{html.escape(str(product.get('name') or price['product']))}"
                    f"</span> <span>{html.escape(amount)}</span></li>"
                )
            button = "Save payment details" if session["mode"] == "setup" else "Pay and subscribe"
            cancel = (
                f"<a id='cancel' href='{html.escape(session['cancel_url'])}'>Cancel</a>"
                if session["cancel_url"]
                else ""
            )
            body = (
                f"<h1>Fake Stripe Checkout</h1><ul>{''.join(rows)}</ul>"
                f"<form method='post' action='/checkout/{session_id}'>"
                "<label>Card number <input name='card' value='4242 4242 4242 4242'></label>"
                f"<button type='submit' id='submit'>{button}</button></form>{cancel}"
            )
            return 200, _page("Checkout", body)

    def portal_page(self, portal_id: str) -> tuple[int, str]:
        with self.lock:
            portal = self.store.get("billing_portal.session", {}).get(portal_id)
            if portal is None:
                return 404, _page("Not found", "<p>This portal link is not valid.</p>")
            rows = []
            for subscription in self.store.get("subscription", {}).values():
                if subscription["customer"] != portal["customer"] or subscription["status"] == "canceled":
                    continue
                names = ", ".join(
                    str(self.store.get("product", {}).get(item["price"]["product"], {}).get("name") or "")
                    for item in subscription["items"]["data"]
                )
                action = (
                    "<p>Cancels at the end of the period.</p>"
                    if subscription["cancel_at_period_end"]
                    else f"<form method='post' action='/portal/{portal_id}/cancel/{subscription['id']}'>"
                    "<button type='submit'>Cancel plan</button></form>"
                )
                rows.append(f"<li>{html.escape(names)} ({subscription['status']}) {action}</li>")
            back = (
                f"<a id='return' href='{html.escape(portal['return_url'])}'>Return</a>"
                if portal["return_url"]
                else ""
            )
            return 200, _page("Billing portal", f"<h1>Fake billing portal</h1><ul>{''.join(rows)}</ul>{back}")

    def portal_cancel(self, portal_id: str, subscription_id: str) -> str:
        with self.lock:
            portal = self._get("billing_portal.session", portal_id)
            subscription = self._get("subscription", subscription_id)
            if subscription["customer"] != portal["customer"]:
                raise missing("subscription", subscription_id)
        self.handle_api("POST", f"/v1/subscriptions/{subscription_id}", {"cancel_at_period_end": "true"}, {
            "authorization": f"Bearer {self.api_key or 'sk_test_portal'}"
        })  # fmt: skip
        self.flush_pending()
        return f"/portal/{portal_id}"

    # -- the HTTP control API -----------------------------------------------------------------------

    def handle_control(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        if method == "POST" and path == "/_fake/fail":
            self.fail(
                str(body["path"]),
                times=body.get("times"),
                status=int(body.get("status") or 500),
                after_processing=bool(body.get("after_processing")),
                drop=bool(body.get("drop")),
            )
            return 200, {"ok": True}
        if method == "POST" and path == "/_fake/clear_failures":
            self.clear_failures()
            return 200, {"ok": True}
        if method == "GET" and path == "/_fake/meter_events":
            with self.lock:
                return 200, {"data": copy.deepcopy(self.meter_events), "attempts": self.meter_event_attempts}
        if method == "POST" and path == "/_fake/events":
            event = self.send_event(
                str(body["type"]), dict(body["object"]), created=body.get("created"), event_id=body.get("id")
            )
            return 200, event
        if method == "POST" and path == "/_fake/advance":
            self.advance(int(body["seconds"]))
            return 200, {"now": self.now()}
        match = re.fullmatch(r"/_fake/checkout/([^/]+)/complete", path)
        if method == "POST" and match:
            return 200, {"success_url": self.complete_checkout(match.group(1))}
        return 404, {"error": f"no control endpoint {method} {path}"}


def _page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
        f"<body>{body}</body></html>"
    )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


def _handler_for(fake: FakeStripe) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
            return

        def _send(
            self, status: int, payload: bytes, content_type: str, headers: dict[str, str] | None = None
        ) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _redirect(self, location: str) -> None:
            self.send_response(303)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _serve(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode() if length else ""
            headers = {name.lower(): value for name, value in self.headers.items()}
            path = url.path
            try:
                if path.startswith("/v1/"):
                    pairs = parse_qsl(url.query, keep_blank_values=True)
                    if self.command == "POST" or raw:
                        pairs += parse_qsl(raw, keep_blank_values=True)
                    try:
                        status, body, extra = fake.handle_api(self.command, path, decode_form(pairs), headers)
                    except Dropped:
                        self.close_connection = True
                        return
                    self._send(status, json.dumps(body, indent=2).encode(), "application/json", extra)
                    fake.flush_pending()
                elif path.startswith("/_fake/"):
                    status, body = fake.handle_control(self.command, path, json.loads(raw or "{}"))
                    self._send(status, json.dumps(body).encode(), "application/json")
                elif self.command == "GET" and (match := re.fullmatch(r"/checkout/([^/]+)", path)):
                    status, page = fake.checkout_page(match.group(1))
                    self._send(status, page.encode(), "text/html; charset=utf-8")
                elif self.command == "POST" and (match := re.fullmatch(r"/checkout/([^/]+)", path)):
                    self._redirect(fake.complete_checkout(match.group(1)))
                elif self.command == "GET" and (match := re.fullmatch(r"/portal/([^/]+)", path)):
                    status, page = fake.portal_page(match.group(1))
                    self._send(status, page.encode(), "text/html; charset=utf-8")
                elif self.command == "POST" and (
                    match := re.fullmatch(r"/portal/([^/]+)/cancel/([^/]+)", path)
                ):
                    self._redirect(fake.portal_cancel(match.group(1), match.group(2)))
                elif self.command == "GET" and (match := re.fullmatch(r"/invoice/([^/]+)(/pdf)?", path)):
                    invoice = fake.get("invoice", match.group(1))
                    total = Decimal(invoice["total"]) / 100
                    text = f"Invoice {invoice['number']}: {total:.2f} {invoice['currency'].upper()}"
                    self._send(200, _page("Invoice", html.escape(text)).encode(), "text/html; charset=utf-8")
                else:
                    self._send(404, b"not found", "text/plain")
            except StripeError as exc:
                self._send(
                    exc.status, _page("Error", html.escape(exc.message)).encode(), "text/html; charset=utf-8"
                )
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        do_GET = do_POST = do_DELETE = _serve

    return Handler


@contextmanager
def stripe_server(**options: Any) -> Iterator[FakeStripe]:
    """A FakeStripe serving on 127.0.0.1 (a free port) until the block ends."""
    fake = FakeStripe(**options)
    server = _Server(("127.0.0.1", 0), _handler_for(fake))
    fake.origin = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True, name="fake-stripe"
    )
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


def encode_for_test(params: dict[str, Any]) -> str:
    """Stripe's bracket notation of nested params (what the SDK sends); for tests of decode_form."""
    pairs: list[tuple[str, str]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}[{key}]" if prefix else str(key), item)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(f"{prefix}[{index}]", item)
        else:
            pairs.append((prefix, str(value)))

    walk("", params)
    return urlencode(pairs)


@pytest.fixture(scope="session")
def stripe_fake() -> Iterator[FakeStripe]:
    """One fake Stripe for the session, with the platform's settings pointed at it
    (STRIPE_API_KEY, STRIPE_API_BASE, STRIPE_WEBHOOK_SECRET) and the same values in the
    environment, so a Celery worker started after it talks to it too. Set `webhook_url`
    (a live server's /billing/stripe/webhook/) or `webhook_handler` to receive events.
    Failures a test sets are its own to clear (`clear_failures()`)."""
    from django.conf import settings

    with stripe_server(api_key="sk_test_fake") as fake:
        values = {
            "STRIPE_API_KEY": "sk_test_fake",
            "STRIPE_API_BASE": fake.origin,
            "STRIPE_WEBHOOK_SECRET": fake.webhook_secret,
        }
        saved_settings = {name: getattr(settings, name, "") for name in values}
        saved_environ = {name: os.environ.get(name) for name in values}
        for name, value in values.items():
            setattr(settings, name, value)
            os.environ[name] = value
        try:
            yield fake
        finally:
            for name, value in saved_settings.items():
                setattr(settings, name, value)
            for name, previous in saved_environ.items():
                if previous is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = previous
