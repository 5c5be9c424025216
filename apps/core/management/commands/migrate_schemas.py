"""django-tenants' migrate_schemas, which also keeps the template schema current.

New organizations are cloned from the template (apps/tenancy/provisioning.py),
so it must be migrated whenever the tenants are.
"""

from typing import Any

from django_tenants.management.commands.migrate_schemas import MigrateSchemasCommand


class Command(MigrateSchemasCommand):
    def handle(self, *args: Any, **options: Any) -> None:
        super().handle(*args, **options)
        if self.sync_tenant and not options.get("schema_name"):
            from apps.tenancy.provisioning import template_schema_migrate

            template_schema_migrate(verbosity=int(options.get("verbosity", 1)))
