"""SIGTERM: a worker finishes the job in hand, or hands it back to the queue when it cannot
within the grace period, so another worker finishes it at once. Nothing lost, nothing
run to completion twice."""

import time

import pytest

from jobs import services
from jobs.models import Job, Status
from tests.support import wait_for

pytestmark = pytest.mark.worker


def running(job: Job) -> bool:
    job.refresh_from_db()
    return job.status == Status.RUNNING


def test_a_job_in_hand_is_finished_before_the_worker_exits(transactional_db, start_worker):
    worker = start_worker(env={"WORKER_SHUTDOWN_GRACE": "30"})
    job = services.enqueue("system.sleep", {"seconds": 2}).job
    wait_for(lambda: running(job), timeout=20, what="the job to start")

    worker.terminate()
    wait_for(worker.exited, timeout=30, what="the worker to exit")

    job.refresh_from_db()
    assert job.status == Status.SUCCEEDED
    assert job.attempts == 1
    assert not job.events.filter(kind="recovered").exists()


def test_a_job_that_outlasts_the_grace_period_goes_to_another_worker(
    transactional_db, start_worker
):
    slow_env = {"WORKER_SHUTDOWN_GRACE": "1", "JOBS_LOCK_DURATION": "120"}
    first = start_worker(env=slow_env, lock_duration=120)
    job = services.enqueue("system.sleep", {"seconds": 6}).job
    wait_for(lambda: running(job), timeout=20, what="the job to start")

    stopped_at = time.monotonic()
    first.terminate()
    wait_for(first.exited, timeout=15, what="the worker to exit")
    exit_took = time.monotonic() - stopped_at
    job.refresh_from_db()
    assert job.status == Status.QUEUED
    assert exit_took < 6, "the worker did not wait for the whole job"

    start_worker(env={"JOBS_LOCK_DURATION": "120"}, lock_duration=120)

    def succeeded() -> bool:
        job.refresh_from_db()
        return job.status == Status.SUCCEEDED

    wait_for(succeeded, timeout=40, what="another worker to finish the job")
    assert job.attempts == 2
    assert job.result == {"slept": 6.0, "attempt": 2}
    assert job.events.filter(kind="succeeded").count() == 1
    kinds = list(job.events.order_by("created_at").values_list("kind", flat=True))
    assert kinds.count("started") == 2
    handed = job.events.get(kind="recovered")
    assert "Worker shutting down" in handed.message and handed.attempt == 1
