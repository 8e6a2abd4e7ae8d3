"""Putting jobs back in play after a loss, in the test process: stalled jobs (their
worker stopped beating), jobs of a dead pool process, jobs handed back by a worker
shutting down, and messages never sent or lost."""

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs import job_heartbeats, runner, services, sweepers
from jobs.context import JobContext
from jobs.errors import JobLost
from jobs.models import Job, Priority
from tests.engine import event_kinds, events, reloaded, run

pytestmark = pytest.mark.django_db


def running_job() -> Job:
    """A job claimed by a run that is still going (or whose worker died)."""
    job = services.enqueue("system.noop").job
    claimed = runner.claim(str(job.id), timezone.now())
    assert claimed is not None
    return claimed


def after_the_lock(job: Job, settings, extra: float = 1) -> timezone.datetime:
    return job.heartbeat_at + timedelta(seconds=settings.JOBS_LOCK_DURATION + extra)


# --- recover_stalled -------------------------------------------------------------------


def test_a_job_whose_heartbeat_stopped_goes_back_to_the_queue(settings):
    job = running_job()
    now = after_the_lock(job, settings)

    assert sweepers.recover_stalled(now=now) == 1

    row = reloaded(job)
    assert (row.status, row.attempts, row.stalled_count) == ("queued", 1, 1)
    assert (row.heartbeat_at, row.run_at) == (None, None)
    assert row.message == "Recovered after its worker stopped"
    assert row.dispatched_at == now  # sent again at once
    recovered = row.events.get(kind="recovered")
    assert recovered.attempt == 1
    assert recovered.message.startswith(f"No heartbeat since {job.heartbeat_at.isoformat()}")
    assert run(job) == "succeeded"
    assert reloaded(job).attempts == 2


def test_a_job_within_its_lock_duration_is_left_running(settings):
    job = running_job()

    assert sweepers.recover_stalled(now=after_the_lock(job, settings, extra=-1)) == 0

    assert reloaded(job).status == "running"


def test_a_job_that_stalls_more_than_max_stalled_times_fails(settings):
    settings.JOBS_MAX_STALLED = 2
    job = services.enqueue("system.noop").job

    for attempt in (1, 2, 3):
        claimed = runner.claim(str(job.id), timezone.now())
        assert claimed.attempts == attempt
        assert sweepers.recover_stalled(now=after_the_lock(claimed, settings)) == 1

    job = reloaded(job)
    assert (job.status, job.attempts, job.stalled_count) == ("failed", 3, 2)
    assert job.error == "Stalled 3 times: the worker running it stopped sending heartbeats."
    assert job.finished_at is not None
    assert event_kinds(job).count("recovered") == 2
    assert events(job)[-1] == ("failed", 3)
    assert run(job) == "duplicate"


def test_a_worker_that_heartbeats_keeps_its_job_and_one_that_stopped_loses_it(settings):
    beating, silent = running_job(), running_job()
    long_ago = timezone.now() - timedelta(seconds=settings.JOBS_LOCK_DURATION + 5)
    Job.objects.filter(id__in=[beating.id, silent.id]).update(heartbeat_at=long_ago)
    thread = job_heartbeats._heartbeat_thread()  # the one the runner uses in this process
    thread.add(beating)
    try:
        assert thread.beat() == 1
    finally:
        thread.remove(beating)

    assert sweepers.recover_stalled() == 1

    assert reloaded(beating).status == "running"
    assert reloaded(silent).status == "queued"


def test_progress_counts_as_a_heartbeat(settings):
    job = running_job()
    long_ago = timezone.now() - timedelta(seconds=settings.JOBS_LOCK_DURATION + 5)
    Job.objects.filter(id=job.id).update(heartbeat_at=long_ago)

    JobContext(job).progress(40, "busy")

    assert sweepers.recover_stalled() == 0
    assert reloaded(job).status == "running"


def test_the_old_holders_heartbeat_does_not_keep_the_next_attempt_alive(settings):
    job = running_job()
    sweepers.recover_stalled(now=after_the_lock(job, settings))
    runner.claim(str(job.id), timezone.now())  # attempt 2, elsewhere
    thread = job_heartbeats._heartbeat_thread()
    thread.add(job)  # still attempt 1 here
    try:
        assert thread.beat() == 0
    finally:
        thread.remove(job)


# --- recover_lost ----------------------------------------------------------------------


def test_the_job_of_a_dead_pool_process_goes_back_to_the_queue_at_once():
    job = running_job()

    assert sweepers.recover_lost(str(job.id), 1, "Worker process 1234 died") is True

    row = reloaded(job)
    assert (row.status, row.stalled_count) == ("queued", 1)
    assert row.message == "Recovered after its worker process died"
    assert row.dispatched_at is not None
    assert row.events.get(kind="recovered").message == (
        "Worker process 1234 died; back in the queue"
    )


def test_a_dead_process_whose_attempt_no_longer_holds_the_job_changes_nothing(settings):
    job = running_job()
    sweepers.recover_stalled(now=after_the_lock(job, settings))
    runner.claim(str(job.id), timezone.now())  # attempt 2 runs elsewhere

    assert sweepers.recover_lost(str(job.id), 1, "Worker process 1234 died") is False

    row = reloaded(job)
    assert (row.status, row.attempts, row.stalled_count) == ("running", 2, 1)


def test_a_job_recovered_without_sending_is_sent_by_the_dispatch_sweeper():
    job = running_job()

    assert sweepers.recover_lost(str(job.id), 1, "Worker shutting down", send=False)

    assert reloaded(job).dispatched_at is None
    assert sweepers.dispatch_due(now=timezone.now() + timedelta(seconds=3)) == 1
    assert reloaded(job).dispatched_at is not None


def test_a_job_whose_processes_keep_dying_fails(settings):
    settings.JOBS_MAX_STALLED = 1
    job = services.enqueue("system.noop").job

    for attempt in (1, 2):
        runner.claim(str(job.id), timezone.now())
        assert sweepers.recover_lost(str(job.id), attempt, "killed") is True

    job = reloaded(job)
    assert job.status == "failed"
    assert job.error == "Stalled 2 times: its worker process died."


# --- hand_back -------------------------------------------------------------------------


def test_jobs_handed_back_go_to_the_queue_and_their_old_run_stops_at_a_checkpoint():
    job = running_job()
    finished = services.enqueue("system.noop").job
    run(finished)

    assert sweepers.hand_back([job.id, finished.id], "Worker w1 shutting down") == 1

    row = reloaded(job)
    assert (row.status, row.attempts, row.stalled_count) == ("queued", 1, 0)
    assert row.message == "Handed back by a worker shutting down"
    assert row.dispatched_at is not None
    assert row.events.get(kind="recovered").message == "Worker w1 shutting down"
    with pytest.raises(JobLost):
        JobContext(job).progress(10)
    assert reloaded(finished).status == "succeeded"
    assert run(job) == "succeeded"
    assert reloaded(job).attempts == 2


# --- dispatch_due ----------------------------------------------------------------------


def unsent(job: Job, seconds_ago: float = 5) -> None:
    Job.objects.filter(id=job.id).update(
        dispatched_at=None, updated_at=timezone.now() - timedelta(seconds=seconds_ago)
    )


def test_a_new_job_is_left_to_its_own_commit_for_a_moment():
    job = services.enqueue("system.noop").job
    unsent(job, seconds_ago=0)

    assert sweepers.dispatch_due() == 0
    assert sweepers.dispatch_due(now=timezone.now() + timedelta(seconds=3)) == 1


def test_the_sweeper_sends_the_most_urgent_jobs_first_a_batch_at_a_time(settings):
    settings.JOBS_SWEEP_BATCH = 2
    low = services.enqueue("system.noop", priority="low").job
    normal = services.enqueue("system.noop").job
    high = services.enqueue("system.noop", priority="high").job
    for job in (low, normal, high):
        unsent(job)

    assert sweepers.dispatch_due() == 2

    sent = set(Job.objects.filter(dispatched_at__isnull=False).values_list("priority", flat=True))
    assert sent == {Priority.HIGH, Priority.NORMAL}
    assert sweepers.dispatch_due() == 1
    assert sweepers.dispatch_due() == 0


def test_only_queued_jobs_are_sent_again(settings):
    long_ago = timezone.now() - timedelta(seconds=settings.JOBS_REDISPATCH_AFTER + 10)
    queued = services.enqueue("system.noop").job
    running_job()
    run(services.enqueue("system.noop").job)
    Job.objects.update(dispatched_at=long_ago, updated_at=long_ago)

    assert sweepers.dispatch_due() == 1

    assert reloaded(queued).dispatched_at > long_ago
