"""Follow-ups: what the engine does after jobs end is offered every end, wherever the
job ended, once the end is committed, and caught up by the sweeper."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs import followups, runner, services, sweepers
from jobs.errors import PermanentError
from jobs.models import Job
from tests.engine import job_type, reloaded, run

pytestmark = pytest.mark.django_db(transaction=True)


class Recorder:
    def __init__(self) -> None:
        self.ended: list[tuple[str, str]] = []
        self.caught_up: list = []

    def after_end(self, jobs: list[Job]) -> None:
        self.ended += [(str(job.id), job.status) for job in jobs]

    def catch_up(self, now) -> int:
        self.caught_up.append(now)
        return 2


@pytest.fixture
def recorder():
    recorder = Recorder()
    followups.register("tests.recorder", after_end=recorder.after_end, catch_up=recorder.catch_up)
    yield recorder
    followups._follow_ups.pop("tests.recorder", None)


def test_a_job_a_worker_finishes_is_offered_with_its_end(recorder):
    job = services.enqueue("system.noop").job

    assert run(job) == "succeeded"

    assert recorder.ended == [(str(job.id), "succeeded")]


def test_a_job_that_fails_for_good_is_offered_but_one_that_retries_is_not(recorder):
    def fails_for_good(ctx):
        raise PermanentError("no")

    def fails(ctx):
        raise RuntimeError("again")

    with job_type(fails_for_good) as final, job_type(fails, max_attempts=2) as retried:
        failed = services.enqueue(final.name).job
        retrying = services.enqueue(retried.name).job
        assert run(failed) == "failed"
        assert run(retrying) == "retry"

    assert recorder.ended == [(str(failed.id), "failed")]


def test_cancelling_a_queued_job_offers_it_and_asking_a_running_one_to_stop_does_not(recorder):
    queued = services.enqueue("system.noop").job
    running = services.enqueue("system.noop").job
    runner.claim(str(running.id), timezone.now())

    services.cancel(queued)
    services.cancel(reloaded(running))

    assert recorder.ended == [(str(queued.id), "cancelled")]


def test_jobs_the_sweeper_expires_are_offered(recorder):
    job = services.enqueue("system.noop", expires_at=timezone.now() + timedelta(seconds=30)).job

    assert sweepers.expire_overdue(now=timezone.now() + timedelta(minutes=1)) == 1

    assert recorder.ended == [(str(job.id), "expired")]


def test_a_job_failed_after_too_many_stalls_is_offered(recorder, settings):
    job = services.enqueue("system.noop").job
    Job.objects.filter(id=job.id).update(stalled_count=settings.JOBS_MAX_STALLED)
    claimed = runner.claim(str(job.id), timezone.now())
    later = claimed.heartbeat_at + timedelta(seconds=settings.JOBS_LOCK_DURATION + 1)

    assert sweepers.recover_stalled(now=later) == 1

    assert recorder.ended == [(str(job.id), "failed")]


def test_a_failing_follow_up_leaves_the_end_recorded(recorder):
    def broken(jobs):
        raise RuntimeError("follow-up down")

    followups.register("tests.broken", after_end=broken, catch_up=lambda now: 0)
    try:
        job = services.enqueue("system.noop").job
        assert run(job) == "succeeded"
    finally:
        followups._follow_ups.pop("tests.broken", None)

    assert reloaded(job).status == "succeeded"
    assert recorder.ended == [(str(job.id), "succeeded")]


def test_every_sweep_runs_the_catch_ups(recorder):
    swept = sweepers.sweep()

    assert len(recorder.caught_up) == 1
    assert swept["followed_up"] >= 2
