"""Billing pages on the organization's host (members only, by the middleware; what each
member may do, by @require_action in apps/billing/pages.py)."""

from django.urls import URLPattern, URLResolver, path

from apps.billing import pages

urlpatterns: list[URLPattern | URLResolver] = [
    path("billing/", pages.billing_page, name="billing"),
    path("billing/checkout/", pages.checkout_page, name="billing-checkout"),
    path("billing/checkout/success/", pages.checkout_success_page, name="billing-checkout-success"),
    path("billing/checkout/cancel/", pages.checkout_cancel_page, name="billing-checkout-cancel"),
    path("billing/portal/", pages.portal_page, name="billing-portal"),
    path("billing/budget/", pages.budget_page, name="billing-budget"),
]
