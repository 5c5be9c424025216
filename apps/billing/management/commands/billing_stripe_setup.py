"""`manage.py billing_stripe_setup`: the meters, products and prices the plans need, made in
the Stripe account STRIPE_API_KEY names (apps/billing/stripe_catalogue.py); safe to rerun."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from apps.billing.stripe_catalogue import stripe_catalogue_sync
from apps.core.errors import ServiceError


class Command(BaseCommand):
    help = "Create in Stripe the billing meters, products and prices the plans need (existing ones are kept)."

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            lines = stripe_catalogue_sync()
        except ServiceError as exc:
            raise CommandError(exc.message) from None
        for line in lines:
            state = "created" if line.created else "exists "
            self.stdout.write(f"{state}  {line.what:<8} {line.name:<40} {line.stripe_id}")
        made = sum(line.created for line in lines)
        self.stdout.write(f"{made} created, {len(lines) - made} already there.")
