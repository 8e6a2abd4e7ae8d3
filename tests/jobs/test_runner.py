"""Running one job in the test process: the claim, the handler's outcome and the job's
timeline, a run that no longer holds its job, and messages that cannot claim theirs.
Retries: test_retries.py; cancel and manual retry: test_cancel_and_retry.py; recovery
and dispatch sweepers: test_sweepers.py."""

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from jobs import runner, services, sweepers
from jobs.models import Job
from tests.engine import event_kinds, events, job_type, reloaded, run

pytestmark = pytest.mark.django_db


# --- the life of a job -----------------------------------------------------------------


def test_a_job_runs_to_success_and_its_timeline_says_so():
    job = services.enqueue("system.noop").job

    assert run(job) == "succeeded"

    job = reloaded(job)
    assert (job.status, job.attempts, job.progress, job.message) == ("succeeded", 1, 100, "Done")
    assert job.started_at <= job.finished_at
    assert job.heartbeat_at is not None and job.error == ""
    assert events(job) == [("created", 0), ("dispatched", 0), ("started", 1), ("succeeded", 1)]


def test_progress_passes_its_milestones_once_each():
    def handler(ctx):
        for percent in (10, 30, 60, 80, 90):
            ctx.progress(percent, f"at {percent}")
        return {"done": True}

    with job_type(handler) as jt:
        job = services.enqueue(jt.name).job
        assert run(job) == "succeeded"

    job = reloaded(job)
    assert job.result == {"done": True}
    milestones = [e.message for e in job.events.filter(kind="progress").order_by("id")]
    assert milestones == ["25% at 30", "50% at 60", "75% at 80"]


# --- a run that no longer holds its job ------------------------------------------------


def test_a_run_whose_job_was_recovered_elsewhere_stops_at_its_next_checkpoint(settings):
    def handler(ctx):
        later = timezone.now() + timedelta(seconds=settings.JOBS_LOCK_DURATION + 1)
        assert sweepers.recover_stalled(now=later) == 1
        ctx.progress(50)
        return "not reached"

    with job_type(handler) as jt:
        job = services.enqueue(jt.name).job
        assert run(job) == "lost"

    job = reloaded(job)
    assert (job.status, job.attempts, job.stalled_count, job.result) == ("queued", 1, 1, None)
    assert event_kinds(job)[-3:] == ["started", "recovered", "dispatched"]


def test_a_run_that_ends_after_its_job_was_handed_back_records_nothing():
    def handler(ctx):
        sweepers.hand_back([ctx.job.id], "Worker shutting down")
        return {"late": True}

    with job_type(handler) as jt:
        job = services.enqueue(jt.name).job
        assert run(job) == "lost"

    job = reloaded(job)
    assert (job.status, job.result, job.finished_at) == ("queued", None, None)
    assert "succeeded" not in event_kinds(job)


# --- messages that cannot claim their job ----------------------------------------------


def test_a_message_for_a_job_that_does_not_exist_is_dropped():
    assert run(uuid.uuid4()) == "missing"


def test_a_second_message_for_a_finished_job_runs_nothing():
    job = services.enqueue("system.noop").job
    run(job)
    before = events(job)

    assert run(job) == "duplicate"

    assert reloaded(job).attempts == 1
    assert events(job) == before


def test_a_second_message_for_a_running_job_runs_nothing():
    job = services.enqueue("system.noop").job
    assert runner.claim(str(job.id), timezone.now()) is not None

    assert run(job) == "duplicate"

    job = reloaded(job)
    assert (job.status, job.attempts) == ("running", 1)
    assert event_kinds(job).count("started") == 1


def test_an_early_message_is_sent_again_for_the_jobs_time(settings):
    now = timezone.now()
    job = services.enqueue("system.noop", run_at=now + timedelta(seconds=30)).job

    assert run(job, now=now) == "early"

    job = reloaded(job)
    assert (job.status, job.attempts) == ("queued", 0)
    assert job.dispatched_at == now  # sent again, with the job's time as its ETA
    assert event_kinds(job) == ["created", "dispatched", "dispatched"]
    assert run(job, now=job.run_at) == "succeeded"


def test_an_early_message_for_a_job_far_ahead_leaves_it_to_the_sweeper(settings):
    now = timezone.now()
    far = now + timedelta(seconds=settings.JOBS_BROKER_DELAY_MAX + 60)
    job = services.enqueue("system.noop", run_at=far).job
    Job.objects.filter(id=job.id).update(dispatched_at=now)  # as if sent when it was near

    assert run(job, now=now) == "early"

    assert reloaded(job).dispatched_at is None
    assert sweepers.dispatch_due(now=far - timedelta(seconds=10)) == 1
