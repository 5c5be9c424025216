"""The default connection, typed as django-tenants' schema-aware wrapper."""

from typing import TYPE_CHECKING, cast

from django.db import connection

if TYPE_CHECKING:
    from django_tenants.postgresql_backend.base import DatabaseWrapper


def tenant_connection() -> "DatabaseWrapper":
    return cast("DatabaseWrapper", connection)
