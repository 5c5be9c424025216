"""New organizations are cloned from the template schema by a Celery task."""

import subprocess

import pytest
from django.core.management import call_command
from django.db import connection
from django_tenants.utils import schema_context, schema_exists

from apps.notices.models import Notice
from apps.tenancy import services
from apps.tenancy.models import Organization
from apps.tenancy.provisioning import schema_signature, template_schema_name
from tests.conftest import World, wait_for


def _tables(schema: str) -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", [schema])
        return {row[0] for row in cursor.fetchall()}


def _applied(schema: str) -> set[tuple[str, str]]:
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT app, name FROM "{schema}".django_migrations')  # noqa: S608 (our schema names)
        return {(app, name) for app, name in cursor.fetchall()}


def test_the_worker_provisions_a_new_organization_and_its_status_shows_it(
    live_db: World, celery_worker: subprocess.Popen[bytes]
) -> None:
    organization = services.organization_create(name="Gamma", slug="gamma", created_by=live_db.alice)
    try:
        assert organization.status == Organization.Status.PROVISIONING
        wait_for(
            lambda: Organization.objects.get(pk=organization.pk).status == Organization.Status.ACTIVE,
            timeout=20,
        )
        organization.refresh_from_db()
        assert organization.provisioned_at is not None
        assert _tables(organization.schema_name) == _tables(template_schema_name())
        with schema_context(organization.schema_name):
            assert list(Notice.objects.values_list("title", flat=True)) == ["Welcome to Gamma"]
    finally:
        services.organization_delete(organization=Organization.objects.get(pk=organization.pk))
    assert not schema_exists("org_gamma")


@pytest.mark.django_db
def test_a_copy_has_exactly_the_templates_tables_columns_constraints_and_indexes(world: World) -> None:
    template = schema_signature(template_schema_name())
    assert template["columns"]
    assert schema_signature(world.alpha.schema_name) == template
    assert schema_signature(world.beta.schema_name) == template


@pytest.mark.django_db
def test_a_copy_continues_numbering_after_the_copied_rows(world: World) -> None:
    from django.contrib.contenttypes.models import ContentType

    with schema_context(world.alpha.schema_name):
        copied = ContentType.objects.count()
        assert copied > 0
        created = ContentType.objects.create(app_label="probe", model="probe")
        assert created.pk > max(ContentType.objects.exclude(pk=created.pk).values_list("pk", flat=True))


@pytest.mark.django_db
def test_a_clone_carries_the_templates_migration_history(world: World) -> None:
    assert _applied(world.alpha.schema_name) == _applied(template_schema_name())
    assert ("notices", "0001_initial") in _applied(world.alpha.schema_name)


@pytest.mark.django_db
def test_migrate_schemas_is_a_no_op_for_cloned_organizations(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    call_command("migrate_schemas", interactive=False, verbosity=1)
    out = capsys.readouterr().out
    assert "Applying" not in out
    assert "org_alpha" in out
    assert "org_beta" in out
    assert template_schema_name() in out


@pytest.mark.django_db
def test_a_stale_template_still_gives_a_fully_migrated_organization(world: World) -> None:
    """If the template lags behind the code, it is migrated before it is copied."""
    call_command("migrate_schemas", schema_name=template_schema_name(), app_label="notices",
                 migration_name="zero", interactive=False, verbosity=0)  # fmt: skip
    assert "notices_notice" not in _tables(template_schema_name())

    organization = services.organization_create(
        name="Delta", slug="delta", created_by=None, provision_async=False
    )
    services.organization_provision(organization_id=organization.pk)

    assert "notices_notice" in _tables("org_delta")
    assert "notices_notice" in _tables(template_schema_name())
    with schema_context("org_delta"):
        assert Notice.objects.filter(title="Welcome to Delta").exists()


@pytest.mark.django_db
def test_provisioning_twice_changes_nothing(world: World) -> None:
    before = _tables(world.alpha.schema_name)
    services.organization_provision(organization_id=world.alpha.pk)
    assert _tables(world.alpha.schema_name) == before
    with schema_context(world.alpha.schema_name):
        assert Notice.objects.filter(title="Welcome to Alpha").count() == 1
