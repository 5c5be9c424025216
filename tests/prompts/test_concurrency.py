"""Two people saving a template at the same moment: both versions are kept, numbered
one after the other, and the newer is current (committed data, real transactions
on two connections)."""

import threading

from django.db import connection
from django_tenants.utils import schema_context

from apps.prompts import services
from apps.prompts.models import PromptTemplate, PromptVersion
from apps.tenancy.audit import Actor
from apps.tenancy.models import AuditEvent
from tests.conftest import World


def test_simultaneous_saves_get_consecutive_versions_and_lose_nothing(live_db: World) -> None:
    world = live_db
    with schema_context(world.alpha.schema_name):
        template = services.template_create(
            actor=Actor(user=world.alice),
            organization=world.alpha,
            name="concurrent-edits",
            body="v1 {{ who }}",
            variables=[{"name": "who", "type": "string"}],
        )
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def save(actor: Actor, body: str) -> None:
        try:
            with schema_context(world.alpha.schema_name):
                barrier.wait(timeout=10)
                services.version_create(actor=actor, organization=world.alpha, template=template, body=body)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [
        threading.Thread(target=save, args=(Actor(user=world.alice), "alice's {{ who }}")),
        threading.Thread(target=save, args=(Actor(user=world.amy), "amy's {{ who }}")),
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert errors == []
        with schema_context(world.alpha.schema_name):
            versions = list(PromptVersion.objects.filter(template=template).order_by("number"))
            assert [version.number for version in versions] == [1, 2, 3]
            assert {version.body for version in versions[1:]} == {"alice's {{ who }}", "amy's {{ who }}"}
            current = PromptTemplate.objects.get(pk=template.pk).current_version
            assert current is not None
            assert current.number == 3
    finally:
        with schema_context(world.alpha.schema_name):
            PromptTemplate.objects.filter(pk=template.pk).delete()
        # The audit log is append-only for the application; the test's own rows go by SQL.
        with connection.cursor() as cursor:
            cursor.execute(
                f"DELETE FROM {AuditEvent._meta.db_table} WHERE target_id = %s AND action LIKE %s",  # noqa: S608 (a model table)
                [str(template.pk), "prompt.%"],
            )
