"""Load the shipped plan catalogue (apps/billing/plans.py); plans already present keep
staff's edits."""

from typing import Any

from django.db import migrations


def load_catalogue(apps: Any, schema_editor: Any) -> None:
    from django.db import connection

    if getattr(connection, "schema_name", "public") != "public":  # a shared app: public only
        return
    from apps.billing.plans import plan_catalogue_sync

    plan_catalogue_sync(apps.get_model("billing", "Plan"))


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]

    operations = [migrations.RunPython(load_catalogue, migrations.RunPython.noop)]
