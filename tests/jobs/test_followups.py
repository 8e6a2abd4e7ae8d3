"""Follow-ups: what the engine does after jobs end is offered every end, wherever the
job ended, once the end is committed, and caught up by the sweeper."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection, connections
from django.utils import timezone

from jobs import followups, runner, services, sweepers
from jobs.batches import create_batch
from jobs.errors import PermanentError
from jobs.models import BatchState, FollowUpMark, Job, JobEvent, Status
from jobs.services import JobSpec
from jobs.store import job_store
from tests.engine import job_type, reloaded, run
from tests.support import run_in_threads

pytestmark = pytest.mark.django_db(transaction=True)


class Recorder:
    def __init__(self) -> None:
        self.ended: list[tuple[str, str]] = []
        self.caught_up: list = []

    def after_end(self, jobs: list[Job]) -> None:
        self.ended += [(str(job.id), job.status) for job in jobs]

    def catch_up(self, now, since) -> int:
        self.caught_up.append((now, since))
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

    followups.register("tests.broken", after_end=broken, catch_up=lambda now, since: 0)
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


# --- the marks: each catch-up reads the ends since its last pass ---------------------------


def test_the_first_catch_up_is_full_and_the_next_starts_at_the_mark_less_the_lag(
    recorder, settings
):
    now = timezone.now()
    lag = timedelta(seconds=settings.JOBS_FOLLOW_UP_LAG)
    full_every = timedelta(seconds=settings.JOBS_FOLLOW_UP_FULL_PASS_EVERY)

    followups.catch_up(now)
    followups.catch_up(now + timedelta(seconds=5))
    followups.catch_up(now + full_every)
    followups.catch_up(now + full_every + timedelta(seconds=5))

    assert [since for _now, since in recorder.caught_up] == [
        None,
        now - lag,
        None,  # a full pass once in a while
        now + full_every - lag,
    ]
    mark = FollowUpMark.objects.get(name="tests.recorder")
    assert mark.caught_up_to == now + full_every + timedelta(seconds=5)
    assert mark.full_pass_at == now + full_every


def test_a_pass_that_did_not_finish_leaves_the_mark_where_it_was(settings):
    seen = []
    outcomes = iter(
        [followups.CaughtUp(0), followups.CaughtUp(500, complete=False), followups.CaughtUp(1)]
    )

    def catch_up(now, since):
        seen.append(since)
        return next(outcomes)

    followups.register("tests.partial", after_end=lambda jobs: None, catch_up=catch_up)
    try:
        now = timezone.now()
        for seconds in (0, 5, 10):
            followups.catch_up(now + timedelta(seconds=seconds))
    finally:
        followups._follow_ups.pop("tests.partial", None)

    lag = timedelta(seconds=settings.JOBS_FOLLOW_UP_LAG)
    assert seen == [None, now - lag, now - lag]
    assert FollowUpMark.objects.get(name="tests.partial").caught_up_to == now + timedelta(
        seconds=10
    )


def test_a_mark_never_moves_back(recorder, settings):
    now = timezone.now()

    followups.catch_up(now)
    followups.catch_up(now - timedelta(seconds=30))  # a slower sweeper's pass, begun earlier
    followups.catch_up(now + timedelta(seconds=5))

    lag = timedelta(seconds=settings.JOBS_FOLLOW_UP_LAG)
    assert recorder.caught_up[-1] == (now + timedelta(seconds=5), now - lag)


# --- the ends since a mark ----------------------------------------------------------------


def ended_ids(since, **kwargs) -> set:
    return {
        job_id
        for ended in followups.ended_since(since, **kwargs)
        for job_id in Job.objects.filter(ended).values_list("id", flat=True)
    }


def test_the_ends_since_are_every_finished_status_from_then_and_nothing_else():
    now = timezone.now()
    since = now - timedelta(minutes=5)
    statuses = [Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.EXPIRED]
    recent = [
        Job.objects.create(
            type="system.noop", status=status, finished_at=since + timedelta(seconds=1)
        )
        for status in statuses
    ]
    on_the_mark = Job.objects.create(type="system.noop", status=Status.FAILED, finished_at=since)
    for status in statuses:
        Job.objects.create(
            type="system.noop", status=status, finished_at=since - timedelta(seconds=1)
        )
    Job.objects.create(type="system.noop", status=Status.QUEUED)
    Job.objects.create(type="system.noop", status=Status.RUNNING, started_at=now)

    assert ended_ids(since) == {job.id for job in [*recent, on_the_mark]}
    assert ended_ids(since, exclude_types=("system.noop",)) == set()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="reads PostgreSQL's query plans")
def test_the_ends_since_are_read_through_the_retention_indexes():
    now = timezone.now()
    statuses = [Status.SUCCEEDED] * 3 + [Status.FAILED, Status.CANCELLED, Status.EXPIRED]
    # A month of ends, so the planner weighs a few minutes against a large table.
    Job.objects.bulk_create(
        Job(
            type="system.noop",
            status=statuses[i % len(statuses)],
            finished_at=now - timedelta(minutes=15 * i),
        )
        for i in range(3000)
    )
    since = now - timedelta(minutes=5)
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Job._meta.db_table}")
        try:
            plans = [
                Job.objects.filter(ended).values_list("id").explain()
                for ended in followups.ended_since(since)
            ]
        finally:
            # ANALYZE's row count outlives the test: leave the next tests' planner an
            # empty table, as it found it.
            Job.objects.all().delete()
            cursor.execute(f"ANALYZE {Job._meta.db_table}")

    for plan, index in zip(plans, ["job_purge_succeeded", "job_purge_failed"], strict=True):
        assert index in plan and "Seq Scan" not in plan, plan


# --- two sweepers at once ------------------------------------------------------------------


@pytest.mark.skipif(connection.vendor != "postgresql", reason="concurrent writers need PostgreSQL")
def test_two_sweepers_catching_up_at_once_follow_each_end_up_once(user):
    followups.catch_up()  # the marks: the passes below read from them
    first = services.enqueue("system.noop", owner=user).job
    waiting = services.enqueue("system.noop", owner=user, depends_on=[first.id]).job
    batch = create_batch(
        [JobSpec("system.noop"), JobSpec("system.noop")],
        owner=user,
        on_complete=JobSpec("system.noop"),
    )
    for job in [first, *Job.objects.filter(batch=batch)]:
        claimed = job_store().claim(job.id, timezone.now(), due=timezone.now())
        assert job_store().finish(claimed, Status.SUCCEEDED, timezone.now())

    def sweep(_i: int) -> int:
        try:
            return followups.catch_up()
        finally:
            connections.close_all()

    done = run_in_threads(2, sweep)

    assert sum(done) == 2  # one release and one settling, between them
    assert reloaded(waiting).held == ""
    assert JobEvent.objects.filter(job=waiting, kind="released").count() == 1
    batch.refresh_from_db()
    assert batch.state == BatchState.SUCCEEDED
    assert Job.objects.filter(id=batch.complete_job_id).count() == 1
    assert Job.objects.filter(owner=user, type="system.noop").count() == 5
    assert followups.catch_up() == 0
