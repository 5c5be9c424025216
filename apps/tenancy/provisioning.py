"""Schemas for new organizations, cloned from an always-migrated template.

from apps.tenancy.db import tenant_connection

Running every migration for each new organization takes seconds and grows with
every migration we add. Instead one template schema is kept migrated (our
`migrate_schemas` migrates it beside the tenants), and a new organization's
schema is a copy of it, rows of `django_migrations` included. A real `migrate`
then runs on the copy: a no-op when the template is current, and still correct
if it is not.
"""

import io

from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django_tenants.clone import CloneSchema
from django_tenants.utils import schema_exists

from apps.tenancy.db import tenant_connection


def template_schema_name() -> str:
    return str(settings.TENANT_TEMPLATE_SCHEMA)


def template_schema_migrate(*, verbosity: int = 0) -> None:
    """Create the template schema if needed and apply every tenant migration to it."""
    name = template_schema_name()
    tenant_connection().set_schema_to_public()
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE SCHEMA IF NOT EXISTS "{name}"')
    schema_migrate(schema_name=name, verbosity=verbosity)


def schema_migrate(*, schema_name: str, verbosity: int = 0) -> None:
    out = io.StringIO()
    call_command(
        "migrate_schemas",
        schema_name=schema_name,
        interactive=False,
        verbosity=verbosity,
        stdout=out,
        stderr=out,
    )
    tenant_connection().set_schema_to_public()


def schema_clone_from_template(*, schema_name: str) -> None:
    template = template_schema_name()
    if not schema_exists(template):
        template_schema_migrate()
    CloneSchema().clone_schema(template, schema_name, "DATA")
    schema_migrate(schema_name=schema_name)


def schema_drop(*, schema_name: str) -> None:
    tenant_connection().set_schema_to_public()
    with connection.cursor() as cursor:
        cursor.execute(f'DROP SCHEMA IF EXISTS "{schema_name}" CASCADE')
