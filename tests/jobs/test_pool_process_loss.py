"""A pool process killed in the middle of a job (OOM killer, SIGKILL): the worker's main
process puts the job back in the queue at once, without waiting for its lock to expire."""

import os
import signal
import time

import psutil
import pytest

from jobs import process_loss, services
from jobs.models import Job, Status
from tests.support import wait_for

# Far longer than the test may take: the stall sweeper cannot be what recovers the job.
LOCK_DURATION = 60.0


def job_is(job: Job, status: str, attempts: int, *, started: bool = False) -> bool:
    job.refresh_from_db()
    return job.status == status and job.attempts == attempts and (not started or job.progress > 0)


@pytest.mark.worker
def test_a_job_whose_pool_process_is_killed_runs_again_at_once_and_succeeds_once(
    transactional_db, start_worker
):
    worker = start_worker(concurrency=1, beat=False, lock_duration=LOCK_DURATION)
    job = services.enqueue("system.sleep", {"seconds": 3}).job
    wait_for(
        lambda: job_is(job, Status.RUNNING, 1, started=True), timeout=20, what="the job to run"
    )
    [pool_process] = psutil.Process(worker.process.pid).children()

    os.kill(pool_process.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: job_is(job, Status.RUNNING, 2), timeout=10, what="the job to run again")
    running_again_after = time.monotonic() - killed_at
    wait_for(lambda: job_is(job, Status.SUCCEEDED, 2), timeout=20, what="the job to succeed")

    assert running_again_after < 5
    assert job.result == {"slept": 3.0, "attempt": 2}
    assert job.stalled_count == 1
    kinds = list(job.events.order_by("created_at", "id").values_list("kind", flat=True))
    assert kinds.count("started") == 2
    assert kinds.count("succeeded") == 1
    recovered = job.events.get(kind="recovered")
    assert recovered.attempt == 1
    assert f"Worker process {pool_process.pid} died" in recovered.message
    assert kinds.index("recovered") < len(kinds) - 1 - kinds[::-1].index("started")


@pytest.fixture
def running_job(db) -> Job:
    job = services.enqueue("system.sleep", {"seconds": 1}).job
    Job.objects.filter(id=job.id).update(status=Status.RUNNING, attempts=1)
    job.refresh_from_db()
    process_loss.hold(job.id, 1)
    yield job
    process_loss.release()


def recover(job: Job) -> bool:
    return process_loss.requeue_job_of_lost_process(os.getpid(), str(job.id), "died")


def test_the_job_a_lost_process_held_goes_back_to_the_queue_as_a_stall(running_job):
    assert recover(running_job)

    running_job.refresh_from_db()
    assert running_job.status == Status.QUEUED
    assert running_job.stalled_count == 1
    assert running_job.dispatched_at is not None
    assert running_job.events.get(kind="recovered").message == "died; back in the queue"


def test_a_worker_shutting_down_leaves_sending_the_job_to_the_dispatch_sweeper(running_job):
    assert process_loss.requeue_job_of_lost_process(
        os.getpid(), str(running_job.id), "died", send=False
    )

    running_job.refresh_from_db()
    assert running_job.status == Status.QUEUED
    assert running_job.dispatched_at is None


def test_a_job_another_attempt_now_holds_is_left_alone(running_job):
    Job.objects.filter(id=running_job.id).update(attempts=2)

    assert not recover(running_job)

    running_job.refresh_from_db()
    assert (running_job.status, running_job.attempts, running_job.stalled_count) == (
        Status.RUNNING,
        2,
        0,
    )
    assert not running_job.events.filter(kind="recovered").exists()


def test_a_job_that_already_ended_is_left_alone(running_job):
    Job.objects.filter(id=running_job.id).update(status=Status.SUCCEEDED)

    assert not recover(running_job)

    running_job.refresh_from_db()
    assert running_job.status == Status.SUCCEEDED
    assert not running_job.events.filter(kind="recovered").exists()


def test_a_process_that_released_its_job_or_held_another_recovers_nothing(running_job):
    assert not process_loss.requeue_job_of_lost_process(os.getpid() + 1, str(running_job.id), "x")
    process_loss.release()
    assert not recover(running_job)

    running_job.refresh_from_db()
    assert running_job.status == Status.RUNNING


def test_a_job_lost_more_than_max_stalled_times_fails(running_job, settings):
    Job.objects.filter(id=running_job.id).update(stalled_count=settings.JOBS_MAX_STALLED)

    assert recover(running_job)

    running_job.refresh_from_db()
    assert running_job.status == Status.FAILED
    assert running_job.error.startswith(f"Stalled {settings.JOBS_MAX_STALLED + 1} times")
