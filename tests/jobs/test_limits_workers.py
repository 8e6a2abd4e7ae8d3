"""Limits and pauses hold with two real workers taking messages at once: never more
running than the cap, never more starts in a window than the rate, nothing started
while paused, and every job run exactly once in the end."""

from datetime import timedelta

import pytest

from jobs import controls, services
from jobs.audit import Via
from jobs.models import Job, JobEvent, Scope, Status
from jobs.registry import Limits
from tests.support import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

SLEEP = "system.sleep"


def two_workers(start_worker) -> None:
    for _ in range(2):
        start_worker(concurrency=3, sweep_interval=0.5)


def all_finished(jobs: list[Job], timeout: float = 90) -> list[Job]:
    ids = [job.id for job in jobs]
    return wait_for(
        lambda: (
            rows
            if len(rows := list(Job.objects.filter(id__in=ids, status=Status.SUCCEEDED)))
            == len(ids)
            else None
        ),
        timeout=timeout,
        what=f"{len(ids)} jobs to succeed",
    )


def most_running_at_once(jobs: list[Job]) -> int:
    """The most jobs running at the same moment, from their start and end times."""
    edges = sorted(
        [(job.started_at, 1) for job in jobs] + [(job.finished_at, -1) for job in jobs],
        key=lambda edge: (edge[0], edge[1]),  # an end before a start at the same moment
    )
    running = most = 0
    for _, change in edges:
        running += change
        most = max(most, running)
    return most


def ran_once_each(jobs: list[Job]) -> bool:
    ids = [job.id for job in jobs]
    started = JobEvent.objects.filter(job_id__in=ids, kind="started").count()
    succeeded = JobEvent.objects.filter(job_id__in=ids, kind="succeeded").count()
    return started == succeeded == len(ids) and all(job.attempts == 1 for job in jobs)


def test_a_concurrency_cap_holds_across_two_workers_with_six_processes(
    start_worker, staff_user, user, other_user
):
    controls.set_limits(SLEEP, Limits(concurrency=2), by=staff_user, via=Via.API)
    two_workers(start_worker)

    jobs = [
        services.enqueue(SLEEP, {"seconds": 0.4}, owner=owner).job
        for owner in [user, other_user] * 6
    ]
    finished = all_finished(jobs)

    assert most_running_at_once(finished) == 2
    assert ran_once_each(finished)
    assert JobEvent.objects.filter(job_id__in=[j.id for j in jobs], kind="held").exists()


def test_a_concurrency_cap_per_owner_holds_for_each_owner(
    start_worker, staff_user, user, other_user
):
    controls.set_limits(SLEEP, Limits(owner_concurrency=1), by=staff_user, via=Via.API)
    two_workers(start_worker)

    jobs = {
        owner: [services.enqueue(SLEEP, {"seconds": 0.4}, owner=owner).job for _ in range(4)]
        for owner in (user, other_user)
    }
    finished = {owner: all_finished(owned) for owner, owned in jobs.items()}

    assert [most_running_at_once(owned) for owned in finished.values()] == [1, 1]
    # The cap is each owner's: the two owners' jobs ran side by side.
    assert most_running_at_once([*finished[user], *finished[other_user]]) == 2
    assert all(ran_once_each(owned) for owned in finished.values())


def test_a_rate_limit_holds_across_two_workers_and_defers_each_job_about_once(
    start_worker, staff_user
):
    period = timedelta(seconds=2)
    controls.set_limits(SLEEP, Limits(rate=3, period=2), by=staff_user, via=Via.API)
    two_workers(start_worker)

    jobs = [services.enqueue(SLEEP, {"seconds": 0}).job for _ in range(9)]
    finished = all_finished(jobs)

    starts = sorted(job.started_at for job in finished)
    # No four starts within any 2 s window, and the nine took three windows.
    fourth_later = zip(starts, starts[3:], strict=False)
    assert all(later - earlier >= period for earlier, later in fourth_later)
    assert starts[-1] - starts[0] >= 2 * period
    assert ran_once_each(finished)
    # Six waited their turn, each deferred once to its reserved start (a deferral is
    # one message; no worker polled).
    held = JobEvent.objects.filter(job_id__in=[j.id for j in jobs], kind="held").count()
    assert 6 <= held <= 9


def test_a_paused_type_starts_nothing_on_any_worker_and_resuming_runs_it_all(
    start_worker, staff_user
):
    controls.pause(Scope.TYPE, SLEEP, by=staff_user, via=Via.API)
    two_workers(start_worker)
    other = services.enqueue("system.noop").job
    jobs = [services.enqueue(SLEEP, {"seconds": 0}).job for _ in range(6)]

    wait_for(
        lambda: Job.objects.filter(id__in=[j.id for j in jobs], held="paused").count() == 6,
        timeout=30,
        what="every message taken and its job held",
    )
    assert all_finished([other])  # the rest of the queue goes on
    assert not JobEvent.objects.filter(job_id__in=[j.id for j in jobs], kind="started").exists()

    controls.resume(Scope.TYPE, SLEEP, by=staff_user, via=Via.API)

    assert ran_once_each(all_finished(jobs))
