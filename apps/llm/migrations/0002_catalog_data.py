"""Load the shipped model catalog (apps/llm/catalog.py); `manage.py llm_catalog_sync`
does the same after an upgrade changes the catalog."""

from typing import Any

from django.db import migrations


def load_catalog(apps: Any, schema_editor: Any) -> None:
    from django.db import connection

    if getattr(connection, "schema_name", "public") != "public":  # a shared app: public only
        return
    from apps.llm.catalog import catalog_sync

    catalog_sync(apps.get_model("llm", "LlmModel"))


class Migration(migrations.Migration):
    dependencies = [("llm", "0001_catalog")]

    operations = [migrations.RunPython(load_catalog, migrations.RunPython.noop)]
