"""A waiting run's place in line, as the REST API shows it: to its own organization only."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import World, client_for
from tests.scheduling.conftest import Pool, make_runs

pytestmark = pytest.mark.django_db


def test_a_waiting_runs_place_shows_to_its_organization_and_to_no_one_else(
    world: World, pool: Pool, settings: Any
) -> None:
    settings.AGENTS_POOL_SIZE = 1
    running = make_runs(world.beta, 1)
    waiting = make_runs(world.beta, 1)
    pool.submit(world.beta, running + waiting)

    own = client_for(world.ben, world.beta).get(f"/api/v1/agents/runs/{waiting[0]}")
    assert own.status_code == 200
    assert own.json()["queue_position"] == 1
    listed = client_for(world.ben, world.beta).get("/api/v1/agents/runs").json()["results"]
    assert {run["id"]: run["queue_position"] for run in listed} == {
        str(running[0]): None,
        str(waiting[0]): 1,
    }

    for outsider, organization in (
        (world.amy, world.alpha),
        (world.alice, world.alpha),
        (world.olga, world.beta),
    ):
        response = client_for(outsider, organization).get(f"/api/v1/agents/runs/{waiting[0]}")
        assert response.status_code in (401, 403, 404)
        assert "queue_position" not in response.content.decode()
    alpha_list = client_for(world.alice, world.alpha).get("/api/v1/agents/runs").json()["results"]
    assert alpha_list == []
