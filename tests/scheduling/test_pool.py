"""The agent pool: fair turns between organizations, caps, lanes, queue positions and bad
input. Dispatch order is read from the tickets (`dispatch_number`: the order the pool gave
out its slots)."""

from __future__ import annotations

import random
import uuid
from typing import Any

import pytest
from django_tenants.utils import schema_context

from apps.core.errors import Forbidden, Invalid, NotFound
from apps.scheduling import services
from apps.scheduling.fairness import fair_order
from apps.scheduling.models import RunTicket
from apps.scheduling.selectors import (
    last_served,
    organization_limits,
    organization_pool_status,
    pool_status,
    runs_in_flight,
    waiters_of,
    waiting_tickets,
)
from apps.tenancy.models import Organization
from tests.conftest import World
from tests.scheduling.conftest import Pool, make_runs

pytestmark = pytest.mark.django_db


def _release_oldest_until_all_started(pool: Pool, owners: dict[uuid.UUID, str]) -> list[str]:
    """Finish the longest-running run, again and again; the organizations in start order."""
    order: list[uuid.UUID] = [ticket.run_id for ticket in pool.started()]
    while pool.waiting_ids():
        oldest = pool.started()[0]
        pool.release(oldest.run_id)
        order += [ticket.run_id for ticket in pool.started() if ticket.run_id not in order]
    return [owners[run_id] for run_id in order]


def test_one_organizations_twenty_queued_runs_do_not_hold_back_the_others_first_runs(
    world: World, gamma: Organization, pool: Pool
) -> None:
    alpha_runs = make_runs(world.alpha, 20)
    beta_runs = make_runs(world.beta, 5)
    gamma_runs = make_runs(gamma, 5)
    owners = {
        **dict.fromkeys(alpha_runs, "alpha"),
        **dict.fromkeys(beta_runs, "beta"),
        **dict.fromkeys(gamma_runs, "gamma"),
    }
    pool.submit(world.alpha, alpha_runs)  # all twenty first
    pool.submit(world.beta, beta_runs)
    pool.submit(gamma, gamma_runs)

    order = _release_oldest_until_all_started(pool, owners)

    assert len(order) == 30
    assert order[:3] == ["alpha", "alpha", "alpha"]  # the pool (3) was empty when they came
    # Beta's and Gamma's first runs take the next two slots, not slots 21 and 26.
    assert order.index("beta") == 3
    assert order.index("gamma") == 4
    # While all three have runs waiting, every three consecutive starts serve all three.
    for start in range(3, 18 - 2):
        assert set(order[start : start + 3]) == {"alpha", "beta", "gamma"}, order
    assert order[18:] == ["alpha"] * 12  # then Alpha's backlog alone
    started = [ticket.run_id for ticket in RunTicket.objects.order_by("dispatch_number")]
    for runs in (alpha_runs, beta_runs, gamma_runs):  # each organization's own in its order
        assert [run_id for run_id in started if run_id in runs] == [r for r in runs if r in started]


def test_the_organization_with_fewest_runs_in_flight_goes_first_even_if_it_came_last(
    world: World, gamma: Organization, pool: Pool, settings: Any
) -> None:
    settings.AGENTS_POOL_SIZE = 4
    alpha_runs = make_runs(world.alpha, 5)
    beta_runs = make_runs(world.beta, 3)
    pool.submit(world.alpha, alpha_runs)  # alpha: 3 (its cap) running
    pool.submit(world.beta, beta_runs)  # beta: 1 running, the pool is full
    gamma_runs = make_runs(gamma, 1)
    pool.submit(gamma, gamma_runs)

    pool.release(alpha_runs[0])

    assert gamma_runs[0] in pool.started_ids()  # 0 in flight beats beta's 1 and alpha's 2


def test_no_organization_exceeds_its_own_limit_even_with_free_slots(
    world: World, pool: Pool, settings: Any
) -> None:
    settings.AGENTS_POOL_SIZE = 10
    settings.AGENTS_ORG_CONCURRENCY = 2
    alpha_runs = make_runs(world.alpha, 5)
    beta_runs = make_runs(world.beta, 1)

    pool.submit(world.alpha, alpha_runs)
    pool.submit(world.beta, beta_runs)

    assert pool.started_ids() == {*alpha_runs[:2], beta_runs[0]}
    assert pool.waiting_ids() == set(alpha_runs[2:])
    status = organization_pool_status(organization=world.alpha)
    assert (status.limit, status.in_flight, status.waiting) == (2, 2, 3)
    pool.release(alpha_runs[0])
    assert pool.started_ids() == {alpha_runs[1], alpha_runs[2], beta_runs[0]}


def test_the_pool_never_holds_more_runs_than_its_size_and_the_rest_wait_without_failing(
    world: World, pool: Pool, settings: Any
) -> None:
    settings.AGENTS_ORG_CONCURRENCY = 10
    alpha_runs = make_runs(world.alpha, 5)
    beta_runs = make_runs(world.beta, 2)

    pool.submit(world.alpha, alpha_runs)
    pool.submit(world.beta, beta_runs)
    assert services.pool_dispatch() == []  # nothing free: a dispatch changes nothing

    assert pool.started_ids() == set(alpha_runs[:3])
    status = pool_status()
    assert (status.size, status.in_flight, status.waiting) == (3, 3, 4)


def test_a_released_slot_goes_to_the_next_waiting_run_at_once(
    world: World, pool: Pool, settings: Any
) -> None:
    settings.AGENTS_POOL_SIZE = 1
    first, second = make_runs(world.alpha, 2)
    pool.submit(world.alpha, [first, second])
    assert pool.started_ids() == {first}

    assert pool.release(first) is True

    assert pool.started_ids() == {second}
    assert pool.waiting_ids() == set()
    assert pool.release(first) is False  # released twice: nothing left to free


def test_releasing_a_waiting_run_takes_it_out_of_line(world: World, pool: Pool, settings: Any) -> None:
    settings.AGENTS_POOL_SIZE = 1
    first, cancelled, third = make_runs(world.alpha, 3)
    pool.submit(world.alpha, [first, cancelled, third])

    pool.release(cancelled)
    pool.release(first)

    assert pool.started_ids() == {third}


def test_interactive_runs_start_before_batch_runs_that_waited_longer(
    world: World, pool: Pool, settings: Any
) -> None:
    settings.AGENTS_POOL_SIZE = 1
    running = make_runs(world.alpha, 1)
    batch = make_runs(world.alpha, 2, priority="batch")
    beta_batch = make_runs(world.beta, 1, priority="batch")
    pool.submit(world.alpha, running)
    pool.submit(world.alpha, batch, priority="batch")
    pool.submit(world.beta, beta_batch, priority="batch")
    interactive = make_runs(world.alpha, 1)
    pool.submit(world.alpha, interactive)

    pool.release(running[0])
    assert pool.started_ids() == set(interactive)
    pool.release(interactive[0])
    assert pool.started_ids() == set(beta_batch)  # then batch, fairly: beta has none in flight
    pool.release(beta_batch[0])
    assert pool.started_ids() == {batch[0]}


def test_submitting_a_waiting_run_again_keeps_its_place_and_takes_the_new_lane(
    world: World, pool: Pool, settings: Any
) -> None:
    settings.AGENTS_POOL_SIZE = 1
    running, early, late = make_runs(world.alpha, 3)
    pool.submit(world.alpha, [running])
    pool.submit(world.alpha, [early, late], priority="batch")

    pool.submit(world.alpha, [early], priority="batch")
    pool.submit(world.alpha, [late], priority="interactive")

    assert RunTicket.objects.filter(run_id__in=[early, late]).count() == 2
    assert services.queue_position(run_id=late) == 1
    assert services.queue_position(run_id=early) == 2


def test_queue_positions_follow_the_dispatch_rule(
    world: World, gamma: Organization, pool: Pool, settings: Any
) -> None:
    settings.AGENTS_POOL_SIZE = 1
    running = make_runs(world.alpha, 1)
    alpha_waiting = make_runs(world.alpha, 3)
    beta_waiting = make_runs(world.beta, 2)
    pool.submit(world.alpha, running + alpha_waiting)
    pool.submit(world.beta, beta_waiting)

    # Alpha has one in flight, Beta none: Beta's first, then the oldest waiter on a tie.
    expected = [beta_waiting[0], alpha_waiting[0], beta_waiting[1], alpha_waiting[1], alpha_waiting[2]]
    assert services.queue_positions(run_ids=expected) == {
        run_id: place for place, run_id in enumerate(expected, start=1)
    }
    assert services.queue_position(run_id=running[0]) is None  # running: not in line
    assert services.queue_position(run_id=uuid.uuid4()) is None
    assert services.queue_position(run_id="not-a-run-id") is None

    for run_id in expected:  # and slots go out in exactly that order
        assert services.queue_position(run_id=run_id) == 1
        pool.release(pool.started()[0].run_id)
        assert pool.started_ids() == {run_id}


def test_a_run_of_an_organization_at_its_limit_is_placed_after_the_others(
    world: World, pool: Pool, settings: Any
) -> None:
    settings.AGENTS_POOL_SIZE = 2
    settings.AGENTS_ORG_CONCURRENCY = 1
    alpha_runs = make_runs(world.alpha, 2)
    beta_runs = make_runs(world.beta, 3)
    pool.submit(world.alpha, alpha_runs)
    pool.submit(world.beta, beta_runs)
    # Both at their limit; Alpha's waiter is older, but a slot freeing is one of theirs.
    assert services.queue_positions(run_ids=[alpha_runs[1], *beta_runs[1:]]) == {
        alpha_runs[1]: 1,
        beta_runs[1]: 2,
        beta_runs[2]: 3,
    }
    pool.release(beta_runs[0])
    assert beta_runs[1] in pool.started_ids()


def test_a_run_resumed_while_still_holding_its_slot_keeps_it(world: World, pool: Pool, settings: Any) -> None:
    settings.AGENTS_POOL_SIZE = 1
    paused, other = make_runs(world.alpha, 2)
    pool.submit(world.alpha, [paused, other])

    pool.submit(world.alpha, [paused])  # resumed before its release arrived

    assert pool.started_ids() == {paused}
    assert pool.waiting_ids() == {other}


def test_a_suspended_organizations_runs_wait_and_others_pass(world: World, pool: Pool, settings: Any) -> None:
    settings.AGENTS_POOL_SIZE = 1
    running = make_runs(world.beta, 1)
    pool.submit(world.beta, running)
    alpha_runs = make_runs(world.alpha, 1)
    beta_runs = make_runs(world.beta, 1)
    pool.submit(world.alpha, alpha_runs)
    pool.submit(world.beta, beta_runs)
    Organization.objects.filter(pk=world.alpha.pk).update(status=Organization.Status.SUSPENDED)

    pool.release(running[0])

    assert pool.started_ids() == set(beta_runs)
    assert pool.waiting_ids() == set(alpha_runs)


def test_bad_submissions_are_refused_with_a_clear_error_and_write_nothing(world: World, pool: Pool) -> None:
    (run_id,) = make_runs(world.alpha, 1)

    with pytest.raises(Invalid, match="Unknown priority 'urgent'"):
        services.pool_submit(organization=world.alpha, run_id=run_id, priority="urgent")
    with pytest.raises(Invalid, match="is not a run id"):
        services.pool_submit(organization=world.alpha, run_id="42")
    with pytest.raises(NotFound, match="has no run"):
        services.pool_submit(organization=world.alpha, run_id=uuid.uuid4())
    with pytest.raises(Invalid, match="is not a run id"):
        services.pool_release(run_id="42")

    assert not RunTicket.objects.exists()


def test_a_run_is_submitted_only_to_its_own_organizations_line(world: World, pool: Pool) -> None:
    (alpha_run,) = make_runs(world.alpha, 1)

    with pytest.raises(NotFound):  # Alpha's run is not in Beta's schema
        services.pool_submit(organization=world.beta, run_id=alpha_run)
    with schema_context(world.alpha.schema_name), pytest.raises(Forbidden):
        services.pool_submit(organization=world.beta, run_id=alpha_run)

    assert not RunTicket.objects.exists()
    pool.submit(world.alpha, [alpha_run])
    ticket = RunTicket.objects.get(run_id=alpha_run)
    assert (ticket.organization_id, ticket.schema_name) == (world.alpha.pk, world.alpha.schema_name)


def test_an_organization_cannot_see_or_release_another_organizations_place_in_line(
    world: World, pool: Pool, settings: Any
) -> None:
    settings.AGENTS_POOL_SIZE = 1
    alpha_runs = make_runs(world.alpha, 1)
    beta_runs = make_runs(world.beta, 2)
    pool.submit(world.alpha, alpha_runs)
    pool.submit(world.beta, beta_runs)

    with schema_context(world.beta.schema_name):
        assert services.queue_position(run_id=beta_runs[0]) == 1  # its own
    with schema_context(world.alpha.schema_name):
        assert services.queue_position(run_id=beta_runs[0]) is None
        assert services.queue_positions(run_ids=beta_runs) == {}
        assert services.pool_release(run_id=beta_runs[0]) is False
        assert services.pool_release(run_id=alpha_runs[0]) is True
    assert RunTicket.objects.filter(run_id__in=beta_runs).count() == 2


def test_queue_positions_read_only_the_front_of_the_line_yet_match_the_whole_lines_order(
    world: World, gamma: Organization, pool: Pool, settings: Any
) -> None:
    """Positions come from the part of the line that can be ahead of the runs asked about;
    for every run, alone or with the others, they equal the rule applied to the whole line."""
    settings.AGENTS_POOL_SIZE = 4
    settings.AGENTS_ORG_CONCURRENCY = 2
    shuffle = random.Random(6)
    submissions = [
        (organization, run_id, shuffle.choice(["interactive", "interactive", "batch"]))
        for organization, count in ((world.alpha, 30), (world.beta, 8), (gamma, 6))
        for run_id in make_runs(organization, count)
    ]
    shuffle.shuffle(submissions)
    for organization, run_id, priority in submissions:
        pool.submit(organization, [run_id], priority=priority)
    pool.release(pool.started()[0].run_id)

    waiters = waiters_of(waiting_tickets())
    organization_ids = {waiter.organization_id for waiter in waiters}
    whole_line = fair_order(
        waiters,
        in_flight=runs_in_flight(),
        last_served=last_served(organization_ids),
        limits=organization_limits(organization_ids),
        then_over_limit=True,
    )
    expected = {waiter.run_id: place for place, waiter in enumerate(whole_line, start=1)}
    assert len(expected) == 44 - 1 - 4  # one released, four in flight
    assert services.queue_positions(run_ids=list(expected)) == expected
    for run_id, place in expected.items():
        assert services.queue_position(run_id=run_id) == place
