"""Create the shipped plans (apps/billing/plans.py CATALOGUE) that the database lacks."""

from typing import Any

from django.core.management.base import BaseCommand

from apps.billing.models import Plan
from apps.billing.plans import plan_catalogue_sync


class Command(BaseCommand):
    help = "Add the shipped plan catalogue's missing plans (existing plans keep staff's edits; idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        made = plan_catalogue_sync(Plan)
        self.stdout.write(f"Plans: {len(made)} added{': ' + ', '.join(made) if made else ''}.")
