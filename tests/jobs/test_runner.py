"""Running one job, in the test process: the claim, the handler's outcome, retries at
their backoff (on a clock the test gives), cancellation at a checkpoint, and messages
that cannot claim their job."""

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from jobs import runner, services
from jobs.errors import InvalidTransition
from jobs.models import Job, Status
from tests.engine import event_kinds, events, job_type, reloaded, run, run_to_the_end

pytestmark = pytest.mark.django_db


def sleep_job(**payload) -> Job:
    return services.enqueue("system.sleep", {"seconds": 0, **payload}).job


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

    with job_type(handler):
        job = services.enqueue("tests.step").job
        assert run(job) == "succeeded"

    job = reloaded(job)
    assert job.result == {"done": True}
    milestones = [e.message for e in job.events.filter(kind="progress").order_by("id")]
    assert milestones == ["25% at 30", "50% at 60", "75% at 80"]


# --- retries and backoff ---------------------------------------------------------------


def test_a_failed_attempt_is_retried_once_its_backoff_has_passed():
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

    with job_type(handler, max_attempts=10, backoff_base=5, backoff_max=30):
        job = services.enqueue("tests.step").job
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

    with job_type(handler, backoff_base=settings.JOBS_BROKER_DELAY_MAX * 10):
        job = services.enqueue("tests.step").job
        now = timezone.now()
        assert run(job, now=now) == "retry"

    run_at = reloaded(job).run_at
    assert run_at == now + timedelta(seconds=settings.JOBS_BROKER_DELAY_MAX * 10)
    assert reloaded(job).dispatched_at is None
    assert services.dispatch_due(now=now + timedelta(seconds=5)) == 0
    assert services.dispatch_due(now=run_at - timedelta(seconds=5)) == 1
    assert reloaded(job).dispatched_at is not None


def test_a_job_fails_with_its_traceback_once_its_attempts_are_spent():
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


# --- cancel and manual retry -----------------------------------------------------------


def test_a_queued_job_is_cancelled_at_once_and_its_message_runs_nothing():
    job = sleep_job()

    services.cancel(job)

    assert (job.status, job.message) == ("cancelled", "Cancelled")
    assert job.finished_at is not None
    assert run(job) == "duplicate"
    assert event_kinds(job) == ["created", "dispatched", "cancelled"]


def test_a_running_job_stops_at_its_next_checkpoint():
    def handler(ctx):
        services.cancel(Job.objects.get(id=ctx.job.id))  # as the API does meanwhile
        assert Job.objects.get(id=ctx.job.id).status == Status.RUNNING
        ctx.progress(50, "halfway")
        return "not reached"

    with job_type(handler):
        job = services.enqueue("tests.step").job
        assert run(job) == "cancelled"

    job = reloaded(job)
    assert (job.status, job.attempts, job.progress) == ("cancelled", 1, 0)
    assert job.result is None and job.cancel_requested is False
    assert event_kinds(job)[-2:] == ["cancel_requested", "cancelled"]


def test_a_checkpoint_without_progress_stops_a_cancelled_job_too():
    def handler(ctx):
        services.cancel(Job.objects.get(id=ctx.job.id))
        ctx.check_cancelled()

    with job_type(handler):
        job = services.enqueue("tests.step").job
        assert run(job) == "cancelled"


def test_cancelling_a_finished_job_is_refused():
    job = services.enqueue("system.noop").job
    run(job)

    with pytest.raises(InvalidTransition):
        services.cancel(reloaded(job))
    assert reloaded(job).status == "succeeded"


def test_a_failed_job_is_retried_with_a_fresh_round_of_attempts():
    job = sleep_job(fail_times=3)
    assert run_to_the_end(job)[-1] == "failed"
    # With the count reset, attempt 1 fails again and attempt 2 succeeds; a count
    # carried over would start at 4 and succeed at once.
    Job.objects.filter(id=job.id).update(payload={"seconds": 0, "fail_times": 1})

    retried = services.retry(reloaded(job))

    assert (retried.status, retried.attempts, retried.error) == ("queued", 0, "")
    assert retried.run_at is None and retried.finished_at is None
    assert run_to_the_end(job) == ["retry", "succeeded"]
    assert reloaded(job).attempts == 2
    assert "retried" in event_kinds(job)


def test_a_cancelled_job_can_be_retried():
    job = sleep_job()
    services.cancel(job)

    services.retry(reloaded(job))

    assert run(job) == "succeeded"
    assert reloaded(job).attempts == 1


def test_retrying_a_queued_job_is_refused():
    job = sleep_job()

    with pytest.raises(InvalidTransition):
        services.retry(job)


# --- a run that no longer holds its job ------------------------------------------------


def test_a_run_whose_job_was_recovered_elsewhere_stops_at_its_next_checkpoint(settings):
    def handler(ctx):
        later = timezone.now() + timedelta(seconds=settings.JOBS_LOCK_DURATION + 1)
        assert services.recover_stalled(now=later) == 1
        ctx.progress(50)
        return "not reached"

    with job_type(handler):
        job = services.enqueue("tests.step").job
        assert run(job) == "lost"

    job = reloaded(job)
    assert (job.status, job.attempts, job.stalled_count, job.result) == ("queued", 1, 1, None)
    assert event_kinds(job)[-3:] == ["started", "recovered", "dispatched"]


def test_a_run_that_ends_after_its_job_was_handed_back_records_nothing():
    def handler(ctx):
        services.hand_back([ctx.job.id], "Worker shutting down")
        return {"late": True}

    with job_type(handler):
        job = services.enqueue("tests.step").job
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
    assert runner.claim(str(job.id)) is not None

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
    assert services.dispatch_due(now=far - timedelta(seconds=10)) == 1
