# `migrate` is `migrate_schemas` here, as in django-tenants, template schema included.
from apps.core.management.commands.migrate_schemas import Command

__all__ = ["Command"]
