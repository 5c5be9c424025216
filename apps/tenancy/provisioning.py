"""Schemas for new organizations, copied from an always-migrated template.

Running every migration for each new organization costs more with every
migration we add. Instead one template schema is kept migrated (our
`migrate_schemas` migrates it beside the tenants), and a new organization's
schema is a copy of it, rows of `django_migrations` included.

The copy is ours, not django-tenants' `clone_schema` SQL function: that one
re-installs a 4,600-line PL/pgSQL function on every call, walks the whole
catalog each time, and was measured slower than migrating (and slower still on
a reused connection). Here the template is read once per process into a
`ClonePlan` (tables, constraints and indexes under their own names, foreign
keys, rows to copy), and each new schema is one batch of plain DDL. The plan is
rebuilt when the template's migrations change, and the template is migrated
first if it lags behind the code. A template holding anything the plan does not
know how to copy (views, functions, triggers calling them, types, free-standing sequences)
falls back to django-tenants' function, which copies everything.
"""

import hashlib
import io
import logging
import threading
from dataclasses import dataclass

from django.conf import settings
from django.core.management import call_command
from django.db import connection, transaction
from django.db.backends.utils import CursorWrapper
from django.db.migrations.executor import MigrationExecutor
from django_tenants.clone import CloneSchema
from django_tenants.utils import schema_exists

from apps.tenancy.db import tenant_connection

logger = logging.getLogger(__name__)


def template_schema_name() -> str:
    return str(settings.TENANT_TEMPLATE_SCHEMA)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def template_schema_migrate(*, verbosity: int = 0) -> None:
    """Create the template schema if needed and apply every tenant migration to it."""
    name = template_schema_name()
    tenant_connection().set_schema_to_public()
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(name)}")
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


def schema_create_and_migrate(*, schema_name: str) -> None:
    """The slow way: an empty schema and every migration. For comparison and repair."""
    tenant_connection().set_schema_to_public()
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE SCHEMA {_quote(schema_name)}")
    schema_migrate(schema_name=schema_name)


@dataclass(frozen=True)
class ClonePlan:
    """What to run to copy the template; `{schema}` stands for the new schema's quoted name."""

    state: str  # a digest of the template's applied migrations
    statements: tuple[str, ...]
    supported: bool  # False: the template holds objects this plan cannot copy


_plan_lock = threading.Lock()
_plan: ClonePlan | None = None
_verified_state: str | None = None  # the template state last checked against the code's migrations


def _template_state(template: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT app, name FROM {_quote(template)}.django_migrations ORDER BY id")  # noqa: S608
        rows = cursor.fetchall()
    return hashlib.sha256(repr(rows).encode()).hexdigest()


def _template_is_current(template: str) -> bool:
    tenant_connection().set_schema(template, include_public=False)
    try:
        executor = MigrationExecutor(connection)
        return not executor.migration_plan(executor.loader.graph.leaf_nodes())
    finally:
        tenant_connection().set_schema_to_public()


def _unsupported_objects(cursor: CursorWrapper, template: str) -> list[str]:
    queries = {
        "views": (
            "SELECT count(*) FROM pg_class WHERE relnamespace = %s::regnamespace AND relkind IN ('v', 'm')"
        ),
        "functions": "SELECT count(*) FROM pg_proc WHERE pronamespace = %s::regnamespace",
        # Triggers are copied (below) when their functions live outside the template.
        "triggers calling the template's own functions": (
            "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
            " JOIN pg_proc p ON p.oid = t.tgfoid"
            " WHERE c.relnamespace = %s::regnamespace AND NOT t.tgisinternal"
            " AND p.pronamespace = c.relnamespace"
        ),
        "types": (
            "SELECT count(*) FROM pg_type"
            " WHERE typnamespace = %s::regnamespace AND typtype IN ('e', 'd', 'r')"
        ),
        # Identity columns own their sequences; any other sequence would be shared by mistake.
        "sequences": (
            "SELECT count(*) FROM pg_class s WHERE s.relnamespace = %s::regnamespace AND s.relkind = 'S'"
            " AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = s.oid AND d.deptype = 'i')"
        ),
    }
    found = []
    for kind, query in queries.items():
        cursor.execute(query, [template])
        row = cursor.fetchone()
        if row and row[0]:
            found.append(kind)
    return found


def _build_plan(template: str) -> ClonePlan:
    prefix = _quote(template) + "."
    bare_prefix = template + "."

    def retarget(definition: str) -> str:
        # Catalog functions qualify the template's objects by schema (public is on the
        # search path, so references to shared tables stay unqualified).
        return definition.replace(prefix, "{schema}.").replace(bare_prefix, "{schema}.")

    tenant_connection().set_schema_to_public()
    with connection.cursor() as cursor:
        state = _template_state(template)
        unsupported = _unsupported_objects(cursor, template)
        if unsupported:
            logger.warning("template schema has %s; using the slower full clone", ", ".join(unsupported))
            return ClonePlan(state=state, statements=(), supported=False)
        cursor.execute(
            "SELECT c.relname FROM pg_class c WHERE c.relnamespace = %s::regnamespace"
            " AND c.relkind IN ('r', 'p') ORDER BY c.relname",
            [template],
        )
        tables = [row[0] for row in cursor.fetchall()]
        statements = ["CREATE SCHEMA {schema}"]
        for table in tables:
            statements.append(
                f"CREATE TABLE {{schema}}.{_quote(table)} (LIKE {prefix}{_quote(table)}"
                " INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING GENERATED INCLUDING CONSTRAINTS"
                " INCLUDING STORAGE INCLUDING COMMENTS)"
            )
        # Primary keys, unique and exclusion constraints under their own names, so
        # later migrations that name them find them.
        cursor.execute(
            "SELECT t.relname, c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c"
            " JOIN pg_class t ON t.oid = c.conrelid"
            " WHERE c.connamespace = %s::regnamespace AND c.contype IN ('p', 'u', 'x', 'f')"
            " ORDER BY c.contype = 'f', c.conname",
            [template],
        )
        # Foreign keys come last, once every table they point to exists.
        for table, name, definition in cursor.fetchall():
            statements.append(
                f"ALTER TABLE {{schema}}.{_quote(table)} ADD CONSTRAINT {_quote(name)} {retarget(definition)}"
            )
        # Indexes that no constraint owns.
        cursor.execute(
            "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE c.relnamespace = %s::regnamespace"
            " AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)"
            " ORDER BY c.relname",
            [template],
        )
        statements.extend(retarget(row[0]) for row in cursor.fetchall())
        # Triggers (e.g. agents' append-only events), calling functions of the public schema.
        cursor.execute(
            "SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
            " WHERE c.relnamespace = %s::regnamespace AND NOT t.tgisinternal ORDER BY c.relname, t.tgname",
            [template],
        )
        statements.extend(retarget(row[0]) for row in cursor.fetchall())
        # Rows the template's migrations wrote (django_migrations, content types...).
        for table in tables:
            cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {prefix}{_quote(table)})")  # noqa: S608
            if cursor.fetchone()[0]:
                source = f"{prefix}{_quote(table)}"
                target = f"{{schema}}.{_quote(table)}"
                statements.append(f"INSERT INTO {target} SELECT * FROM {source}")  # noqa: S608
                cursor.execute(
                    "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attidentity <> ''",
                    [source],
                )
                # Copied rows keep their ids; numbering continues after them.
                for (column,) in cursor.fetchall():
                    sequence = f"pg_get_serial_sequence('{target}', '{column}')"
                    next_id = f"(SELECT COALESCE(max({_quote(column)}), 0) + 1 FROM {target})"  # noqa: S608
                    statements.append(f"SELECT setval({sequence}, {next_id}, false)")
    return ClonePlan(state=state, statements=tuple(statements), supported=True)


def clone_plan() -> ClonePlan:
    """The plan for the template as it is now, migrating the template first if it lags.

    Two small queries when nothing changed: the code's migrations are fixed for
    the life of a process, so a template state once found current stays current."""
    global _plan, _verified_state
    template = template_schema_name()
    with _plan_lock:
        tenant_connection().set_schema_to_public()
        state = _template_state(template) if schema_exists(template) else None
        if state is None or state != _verified_state:
            with transaction.atomic(), connection.cursor() as cursor:
                # One process migrates the template; the others wait, then find it current.
                cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [template])
                if not schema_exists(template) or not _template_is_current(template):
                    template_schema_migrate()
            state = _template_state(template)
            _verified_state = state
        if _plan is None or _plan.state != state:
            _plan = _build_plan(template)
        return _plan


def schema_clone_from_template(*, schema_name: str) -> None:
    """Create `schema_name` as a copy of the template, structure and rows."""
    plan = clone_plan()
    tenant_connection().set_schema_to_public()
    if not plan.supported:
        CloneSchema().clone_schema(template_schema_name(), schema_name, "DATA")
        return
    target = _quote(schema_name)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(";\n".join(statement.replace("{schema}", target) for statement in plan.statements))


def schema_drop(*, schema_name: str) -> None:
    tenant_connection().set_schema_to_public()
    with connection.cursor() as cursor:
        cursor.execute(f"DROP SCHEMA IF EXISTS {_quote(schema_name)} CASCADE")


def schema_signature(schema_name: str) -> dict[str, list[tuple[str, ...]]]:
    """The structure of a schema with its own name taken out, to compare copies with the template."""
    queries = {
        "columns": (
            "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull::text,"
            " a.attidentity::text, coalesce(pg_get_expr(d.adbin, d.adrelid), '')"
            " FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
            " LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum"
            " WHERE c.relnamespace = %s::regnamespace AND c.relkind IN ('r', 'p')"
            " AND a.attnum > 0 AND NOT a.attisdropped"
        ),
        "constraints": (
            "SELECT t.relname, c.conname, c.contype::text, pg_get_constraintdef(c.oid) FROM pg_constraint c"
            " JOIN pg_class t ON t.oid = c.conrelid WHERE c.connamespace = %s::regnamespace"
        ),
        "indexes": (
            "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relnamespace = %s::regnamespace"
        ),
        "triggers": (
            "SELECT c.relname, pg_get_triggerdef(t.oid) FROM pg_trigger t"
            " JOIN pg_class c ON c.oid = t.tgrelid"
            " WHERE c.relnamespace = %s::regnamespace AND NOT t.tgisinternal"
        ),
    }
    signature = {}
    tenant_connection().set_schema_to_public()
    with connection.cursor() as cursor:
        for kind, query in queries.items():
            cursor.execute(query, [schema_name])
            rows = [
                tuple(
                    str(value).replace(f"{_quote(schema_name)}.", "~.").replace(f"{schema_name}.", "~.")
                    for value in row
                )
                for row in cursor.fetchall()
            ]
            signature[kind] = sorted(rows)
    return signature
