"""A run's events are append-only in the database itself: no UPDATE, no DELETE of
single events, whoever asks; deleting the run takes its events with it."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction
from django_tenants.utils import schema_context

from apps.agents.events import event_append
from apps.agents.models import AgentRun, Event
from tests.conftest import World


def _run_with_events(world: World) -> AgentRun:
    run = AgentRun.objects.create(task="Look around.")
    for number in range(3):
        event_append(run=run, kind=Event.Kind.MESSAGE, payload={"role": "user", "text": f"note {number}"})
    return run


def test_an_event_cannot_be_changed(live_db: World) -> None:
    with schema_context(live_db.alpha.schema_name):
        run = _run_with_events(live_db)
        try:
            with pytest.raises(IntegrityError, match="append-only"), transaction.atomic():
                Event.objects.filter(run=run, seq=2).update(payload={"role": "user", "text": "rewritten"})
            assert Event.objects.get(run=run, seq=2).payload["text"] == "note 1"
        finally:
            run.delete()


def test_a_single_event_cannot_be_deleted_but_a_run_goes_with_its_events(live_db: World) -> None:
    with schema_context(live_db.alpha.schema_name):
        run = _run_with_events(live_db)
        with pytest.raises(IntegrityError, match="can only go with its run"), transaction.atomic():
            Event.objects.filter(run=run, seq=3).delete()
        assert Event.objects.filter(run=run).count() == 3

        run.delete()

        assert not Event.objects.filter(run_id=run.pk).exists()
        assert not AgentRun.objects.filter(pk=run.pk).exists()


def test_every_organizations_events_are_append_only(live_db: World) -> None:
    with schema_context(live_db.beta.schema_name):
        run = _run_with_events(live_db)
        try:
            with pytest.raises(IntegrityError, match="append-only"), transaction.atomic():
                Event.objects.filter(run=run).update(seq=99)
        finally:
            run.delete()
