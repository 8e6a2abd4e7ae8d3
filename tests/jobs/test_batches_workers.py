"""Batches with real workers: two workers ending a batch's last jobs at the same moment,
and a worker killed in the middle of a batch's job, still settle each batch once, with
one job per callback."""

from __future__ import annotations

import pytest

from jobs.batches import create_batch
from jobs.models import Batch, BatchState, Job, JobEvent, Status
from jobs.services import JobSpec
from tests.support import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

ON_SUCCESS = JobSpec("system.noop")
ON_COMPLETE = JobSpec("system.sleep", {"seconds": 0})


def settled(batch: Batch, timeout: float = 60) -> Batch:
    return wait_for(
        lambda: (b := Batch.objects.get(id=batch.id)).state != BatchState.RUNNING and b,
        timeout=timeout,
        what=f"batch {batch.id} to settle",
    )


def callbacks_ran_once(batch: Batch) -> None:
    """The batch's callbacks exist once each, and each ran once."""
    callbacks = Job.objects.filter(owner=batch.owner, batch__isnull=True)
    created = list(callbacks.filter(id__in=[batch.success_job_id, batch.complete_job_id]))
    assert len(created) == 2
    finished = wait_for(
        lambda: callbacks.filter(status=Status.SUCCEEDED).count() == 2 and list(callbacks),
        timeout=30,
        what="the callbacks to run",
    )
    assert sorted(job.type for job in finished) == ["system.noop", "system.sleep"]
    started = JobEvent.objects.filter(job__in=finished, kind="started").count()
    assert started == 2


def test_two_workers_ending_a_batchs_last_jobs_at_once_create_each_callback_once(
    start_worker, user, other_user
):
    for _ in range(2):
        # One message at a time each, so that each worker takes one job of a batch.
        start_worker(
            concurrency=1, sweep_interval=0.5, env={"CELERY_WORKER_PREFETCH_MULTIPLIER": "1"}
        )
    # Two jobs of the same length per batch, one on each worker: they end together.
    made = [
        create_batch(
            [JobSpec("system.sleep", {"seconds": 1}) for _ in range(2)],
            owner=owner,
            on_success=ON_SUCCESS,
            on_complete=ON_COMPLETE,
        )
        for owner in (user, other_user)
    ]

    overlapped = 0
    for batch in made:
        batch = settled(batch)
        assert batch.state == BatchState.SUCCEEDED
        first, second = Job.objects.filter(batch=batch, status=Status.SUCCEEDED)
        overlapped += (
            first.started_at < second.finished_at and second.started_at < first.finished_at
        )
        callbacks_ran_once(batch)
    # The race this is about took place: a batch's two jobs ran side by side.
    assert overlapped >= 1


def test_a_worker_killed_mid_job_leaves_a_batch_that_still_completes_once(start_worker, user):
    first = start_worker(lock_duration=3.0, sweep_interval=1.0)
    batch = create_batch(
        [JobSpec("system.sleep", {"seconds": 4}), JobSpec("system.sleep", {"seconds": 0})],
        owner=user,
        on_success=ON_SUCCESS,
        on_complete=ON_COMPLETE,
    )
    long_job = Job.objects.get(batch=batch, payload__seconds=4)
    wait_for(
        lambda: Job.objects.get(id=long_job.id).status == Status.RUNNING,
        what="the long job to start",
    )
    first.kill()
    assert Batch.objects.get(id=batch.id).state == BatchState.RUNNING

    start_worker(lock_duration=3.0, sweep_interval=1.0)
    batch = settled(batch, timeout=60)

    assert batch.state == BatchState.SUCCEEDED
    long_job.refresh_from_db()
    assert long_job.status == Status.SUCCEEDED
    assert long_job.attempts == 2
    assert long_job.events.filter(kind="recovered").count() == 1
    callbacks_ran_once(batch)
