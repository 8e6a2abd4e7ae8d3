"""Transient errors retry with exponential backoff; permanent ones fail at once. The
jobs run in the test process, each retry at a time the test gives instead of after a
real wait."""

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs import runner, services, sweepers
from jobs.models import Job
from tests.engine import event_kinds, events, job_type, reloaded, run, run_to_the_end

pytestmark = pytest.mark.django_db


def sleep_job(**payload) -> Job:
    return services.enqueue("system.sleep", {"seconds": 0, **payload}).job


def test_it_retries_with_backoff_then_succeeds():
    job = sleep_job(fail_times=2)
    now = timezone.now()

    assert run(job, now=now) == "retry"

    first = reloaded(job)
    assert (first.status, first.attempts, first.message) == ("queued", 1, "Retrying in 1s")
    assert first.run_at == now + timedelta(seconds=1)
    assert first.error == "DemoFailure: Asked to fail attempt 1"
    assert first.heartbeat_at is None
    # A message a moment too early claims nothing; one at the time does.
    too_early = first.run_at - runner.EARLY_TOLERANCE - timedelta(milliseconds=1)
    assert run(job, now=too_early) == "early"
    assert reloaded(job).attempts == 1
    assert run(job, now=first.run_at) == "retry"

    second = reloaded(job)
    assert second.attempts == 2
    assert second.run_at == first.run_at + timedelta(seconds=2)  # twice the first wait
    assert run(job, now=second.run_at - timedelta(seconds=1)) == "succeeded"  # within tolerance

    job = reloaded(job)
    assert (job.status, job.attempts) == ("succeeded", 3)
    assert job.result == {"slept": 0.0, "attempt": 3}
    retries = job.events.filter(kind="retry_scheduled").order_by("id")
    assert [(r.attempt, r.message.split(" — ")[1]) for r in retries] == [
        (1, "retry in 1s"),
        (2, "retry in 2s"),
    ]
    assert events(job) == [
        ("created", 0),
        ("dispatched", 0),
        ("started", 1),
        ("retry_scheduled", 1),
        ("dispatched", 1),  # the retry's message, with its time as the ETA
        ("dispatched", 1),  # sent again by the early message
        ("started", 2),
        ("retry_scheduled", 2),
        ("dispatched", 2),
        ("started", 3),
        ("progress", 3),
        ("succeeded", 3),
    ]


def test_backoff_doubles_up_to_the_types_maximum():
    def handler(ctx):
        raise RuntimeError("down")

    with job_type(handler, max_attempts=10, backoff_base=5, backoff_max=30) as jt:
        job = services.enqueue(jt.name).job
        waits = []
        now = timezone.now()
        for _ in range(5):
            assert run(job, now=now) == "retry"
            scheduled = reloaded(job).run_at
            waits.append((scheduled - now).total_seconds())
            now = scheduled

    assert waits == [5, 10, 20, 30, 30]


def test_a_retry_further_ahead_than_the_broker_holds_waits_for_the_sweeper(settings):
    def handler(ctx):
        raise RuntimeError("down")

    with job_type(handler, backoff_base=settings.JOBS_BROKER_DELAY_MAX * 10) as jt:
        job = services.enqueue(jt.name).job
        now = timezone.now()
        assert run(job, now=now) == "retry"

        run_at = reloaded(job).run_at
        assert run_at == now + timedelta(seconds=settings.JOBS_BROKER_DELAY_MAX * 10)
        assert reloaded(job).dispatched_at is None
        assert sweepers.dispatch_due(now=now + timedelta(seconds=5)) == 0
        assert sweepers.dispatch_due(now=run_at - timedelta(seconds=5)) == 1
        assert reloaded(job).dispatched_at is not None


def test_it_fails_when_retries_are_exhausted():
    job = sleep_job(fail_times=10)

    assert run_to_the_end(job) == ["retry", "retry", "failed"]

    job = reloaded(job)
    assert job.status == "failed" and job.attempts == job.max_attempts == 3
    assert job.error.startswith("DemoFailure: Asked to fail attempt 3\n\n")
    assert "Traceback (most recent call last)" in job.error
    assert event_kinds(job).count("retry_scheduled") == 2
    assert event_kinds(job).count("failed") == 1
    assert job.finished_at is not None


def test_a_permanent_error_fails_after_one_attempt():
    job = sleep_job(permanent=True)

    assert run(job) == "failed"

    job = reloaded(job)
    assert (job.status, job.attempts, job.error) == ("failed", 1, "Asked to fail permanently")
    assert "retry_scheduled" not in event_kinds(job)
