"""Sync the shipped catalog again: the local model's embedding entry, and the local chat
model's tools and JSON (grammar-constrained). Each catalog change ships a migration like
this one, so `migrate` alone brings an installation's catalog up to date."""

from typing import Any

from django.db import migrations


def sync_catalog(apps: Any, schema_editor: Any) -> None:
    from apps.llm.catalog import catalog_sync

    catalog_sync(apps.get_model("llm", "LlmModel"))


class Migration(migrations.Migration):
    dependencies = [("llm", "0002_catalog_data")]

    operations = [migrations.RunPython(sync_catalog, migrations.RunPython.noop)]
