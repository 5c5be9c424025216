"""Channels group names carry the schema, so a broadcast never crosses organizations."""

from apps.tenancy.db import tenant_connection


def tenant_group(name: str, schema_name: str | None = None) -> str:
    schema = schema_name or tenant_connection().schema_name
    if schema == "public":
        raise RuntimeError("Tenant groups need a tenant schema; this code ran in public.")
    return f"t.{schema}.{name}"
