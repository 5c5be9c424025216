"""Bring the model catalog table in line with apps/llm/catalog.py (safe to run twice)."""

from typing import Any

from django.core.management.base import BaseCommand

from apps.llm.services import catalog_refresh


class Command(BaseCommand):
    help = "Sync the shipped LLM model catalog into the database (idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        created, updated, unlisted = catalog_refresh()
        self.stdout.write(f"LLM catalog: {created} added, {updated} updated, {unlisted} no longer listed.")
