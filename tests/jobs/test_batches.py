"""Batches: created with their jobs in one transaction, followed as one, settled exactly
once with their callbacks, cancelled, and shown only to their owner (and staff)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection, connections
from django.test import override_settings
from django.utils import timezone
from rest_framework.exceptions import ValidationError

from jobs import batches, followups, sweepers
from jobs.audit import Via
from jobs.batches import batch_summary, cancel_batch, create_batch, settle
from jobs.models import (
    Batch,
    BatchState,
    EventKind,
    FollowUpMark,
    Job,
    OperatorAction,
    Status,
)
from jobs.services import JobSpec
from jobs.store import job_store
from tests import engine
from tests.support import run_in_threads

pytestmark = pytest.mark.django_db

NOOP = JobSpec("system.noop")
SLEEP = "system.sleep"


def sleeps(count: int, **payload) -> list[JobSpec]:
    return [JobSpec(SLEEP, {"seconds": 0, **payload}) for _ in range(count)]


def run_all(batch: Batch, capture) -> list[str]:
    """Run each of the batch's queued jobs to its end, the follow-ups running at each
    commit as in a worker."""
    outcomes = []
    for job in Job.objects.filter(batch=batch, status=Status.QUEUED).order_by("id"):
        with capture(execute=True):
            outcomes += engine.run_to_the_end(job)
    return outcomes


def callbacks_of(batch: Batch) -> list[Job]:
    return list(Job.objects.filter(batch__isnull=True, owner=batch.owner).exclude(type=SLEEP))


def finish_behind_the_follow_ups(job: Job, status: str = Status.SUCCEEDED) -> None:
    """End a job through the store alone, as a worker that died right after recording
    the end would have: no follow-up is offered."""
    now = timezone.now()
    claimed = job_store().claim(job.id, now, due=now)
    assert job_store().finish(claimed, status, now, error="Boom" if status == "failed" else "")


# --- creating ---------------------------------------------------------------------------


def test_a_batch_is_created_with_all_its_jobs_queued_and_linked(user):
    batch = create_batch(sleeps(3), owner=user, on_success=NOOP, description="nightly")

    jobs = Job.objects.filter(batch=batch)
    assert jobs.count() == 3
    assert set(jobs.values_list("status", "owner_id")) == {(Status.QUEUED, user.id)}
    summary = batch_summary(batch)
    assert summary["state"] == BatchState.RUNNING
    assert summary["total"] == 3
    assert summary["counts"][Status.QUEUED] == 3
    assert summary["progress"] == 0
    assert summary["on_success"]["type"] == "system.noop"
    assert summary["callback_jobs"] == {"on_success": None, "on_complete": None}


def test_an_invalid_job_spec_writes_nothing_and_names_its_index(user):
    specs = [*sleeps(2), JobSpec(SLEEP, {"seconds": "long"})]

    with pytest.raises(ValidationError) as raised:
        create_batch(specs, owner=user, on_complete=NOOP)

    assert set(raised.value.detail["jobs"]) == {"2"}
    assert "seconds" in raised.value.detail["jobs"]["2"]["payload"]
    assert not Batch.objects.exists()
    assert not Job.objects.exists()


def test_an_invalid_callback_writes_nothing_and_is_named(user):
    with pytest.raises(ValidationError) as raised:
        create_batch(
            sleeps(2),
            owner=user,
            on_success=JobSpec("no.such.type"),
            on_complete=JobSpec("system.noop", run_at=timezone.now()),
        )

    assert "type" in raised.value.detail["on_success"]
    assert "run_at" in raised.value.detail["on_complete"]
    assert not Batch.objects.exists()
    assert not Job.objects.exists()


def test_an_empty_batch_a_too_large_one_and_unique_or_keyed_jobs_are_refused(user):
    with pytest.raises(ValidationError) as empty:
        create_batch([], owner=user)
    with override_settings(JOBS_BATCH_MAX_JOBS=2), pytest.raises(ValidationError) as large:
        create_batch(sleeps(3), owner=user)
    with pytest.raises(ValidationError) as keyed:
        create_batch([JobSpec("system.noop", idempotency_key="k")], owner=user)

    assert "at least one" in str(empty.value.detail["jobs"][0])
    assert "At most 2 jobs" in str(large.value.detail["jobs"][0])
    assert "idempotency_key" in keyed.value.detail["jobs"]["0"]
    assert not Job.objects.exists()


# --- settling -----------------------------------------------------------------------------


def test_a_batch_whose_jobs_all_succeed_succeeds_and_creates_both_callbacks_once(
    user, django_capture_on_commit_callbacks
):
    finished = []
    batches.batch_finished.connect(receiver := lambda batch, **kw: finished.append(batch.id))
    try:
        batch = create_batch(sleeps(2), owner=user, on_success=NOOP, on_complete=NOOP)
        assert run_all(batch, django_capture_on_commit_callbacks) == ["succeeded"] * 2
    finally:
        batches.batch_finished.disconnect(receiver)

    batch.refresh_from_db()
    assert batch.state == BatchState.SUCCEEDED
    assert batch.finished_at is not None
    callbacks = callbacks_of(batch)
    assert {job.id for job in callbacks} == {batch.success_job_id, batch.complete_job_id}
    assert len(callbacks) == 2
    assert all(job.status == Status.QUEUED for job in callbacks)
    assert batches.batch_of_callback(callbacks[0]) == batch
    assert finished == [batch.id]
    summary = batch_summary(batch)
    assert summary["progress"] == 100
    assert summary["counts"][Status.SUCCEEDED] == 2
    assert summary["failed_jobs"] == []
    # Offered again, nothing more happens.
    assert settle(batch.id) is False
    assert batches.catch_up(timezone.now()).done == 0
    assert len(callbacks_of(batch)) == 2


def test_a_batch_with_a_failed_job_fails_names_it_and_creates_only_on_complete(
    user, django_capture_on_commit_callbacks
):
    specs = [*sleeps(1), JobSpec(SLEEP, {"seconds": 0, "permanent": True})]
    batch = create_batch(specs, owner=user, on_success=NOOP, on_complete=NOOP)
    run_all(batch, django_capture_on_commit_callbacks)

    batch.refresh_from_db()
    failed = Job.objects.get(batch=batch, status=Status.FAILED)
    assert batch.state == BatchState.FAILED
    assert batch.failed_job_ids == [str(failed.id)]
    assert batch.success_job_id is None
    assert [job.id for job in callbacks_of(batch)] == [batch.complete_job_id]
    summary = batch_summary(batch)
    assert summary["failed_jobs"] == [
        {
            "id": str(failed.id),
            "type": SLEEP,
            "status": "failed",
            "error": "Asked to fail permanently",
        }
    ]
    assert summary["counts"][Status.FAILED] == 1
    assert summary["counts"][Status.SUCCEEDED] == 1


def test_a_batch_waits_for_a_job_retrying_and_settles_when_it_ends(
    user, django_capture_on_commit_callbacks
):
    batch = create_batch([JobSpec(SLEEP, {"seconds": 0, "fail_times": 1})], owner=user)
    job = Job.objects.get(batch=batch)

    with django_capture_on_commit_callbacks(execute=True):
        assert engine.run(job) == "retry"
    batch.refresh_from_db()
    assert batch.state == BatchState.RUNNING

    with django_capture_on_commit_callbacks(execute=True):
        assert engine.run_when_due(job) == "succeeded"
    batch.refresh_from_db()
    assert batch.state == BatchState.SUCCEEDED


def test_progress_is_the_mean_of_the_jobs_with_finished_ones_at_100(user):
    batch = create_batch(sleeps(4), owner=user)
    jobs = list(Job.objects.filter(batch=batch).order_by("id"))
    now = timezone.now()
    running = job_store().claim(jobs[0].id, now, due=now)
    job_store().progress(running, 50, "half", None, now)
    finish_behind_the_follow_ups(jobs[1])

    summary = batch_summary(batch)

    assert summary["progress"] == (50 + 100 + 0 + 0) // 4
    assert summary["counts"][Status.RUNNING] == 1
    assert summary["counts"][Status.SUCCEEDED] == 1
    assert summary["counts"][Status.QUEUED] == 2


@pytest.mark.parametrize(
    ("cancel_requested", "ended", "state"),
    [
        (False, {Status.SUCCEEDED: 3}, BatchState.SUCCEEDED),
        (False, {Status.SUCCEEDED: 2, Status.CANCELLED: 1}, BatchState.CANCELLED),
        (True, {Status.SUCCEEDED: 3}, BatchState.CANCELLED),
        (True, {Status.FAILED: 1, Status.CANCELLED: 2}, BatchState.FAILED),
        (False, {Status.SUCCEEDED: 2, Status.EXPIRED: 1}, BatchState.FAILED),
    ],
)
def test_the_end_state_puts_a_failure_first_then_a_cancel(cancel_requested, ended, state):
    counts = dict.fromkeys(Status.values, 0) | ended

    assert batches.end_state(cancel_requested, counts) == state


# --- a crash between a job's end and its follow-up -------------------------------------


def test_the_sweepers_catch_up_settles_a_batch_whose_follow_up_never_ran(user):
    batch = create_batch(sleeps(2), owner=user, on_success=NOOP, on_complete=NOOP)
    for job in Job.objects.filter(batch=batch):
        finish_behind_the_follow_ups(job)
    batch.refresh_from_db()
    assert batch.state == BatchState.RUNNING

    swept = sweepers.sweep()

    assert swept["followed_up"] == 1
    batch.refresh_from_db()
    assert batch.state == BatchState.SUCCEEDED
    assert len(callbacks_of(batch)) == 2
    assert followups.catch_up() == 0
    assert len(callbacks_of(batch)) == 2


def test_the_catch_up_from_its_mark_settles_a_batch_whose_follow_up_was_skipped_since(user):
    followups.catch_up()
    full_pass = FollowUpMark.objects.get(name="batches").full_pass_at
    batch = create_batch(sleeps(2), owner=user, on_complete=NOOP)
    for job in Job.objects.filter(batch=batch):
        finish_behind_the_follow_ups(job)

    assert followups.catch_up() == 1

    batch.refresh_from_db()
    assert batch.state == BatchState.SUCCEEDED
    assert FollowUpMark.objects.get(name="batches").full_pass_at == full_pass
    assert followups.catch_up() == 0
    assert len(callbacks_of(batch)) == 1


def test_a_batch_whose_last_end_is_older_than_the_lag_is_settled_by_the_full_pass(user, settings):
    now = timezone.now()
    followups.catch_up(now)
    batch = create_batch(sleeps(1), owner=user)
    (job,) = Job.objects.filter(batch=batch)
    finish_behind_the_follow_ups(job)
    long_ago = now - timedelta(seconds=settings.JOBS_FOLLOW_UP_LAG * 2)
    Job.objects.filter(id=job.id).update(finished_at=long_ago)

    assert followups.catch_up(now + timedelta(seconds=5)) == 0
    full = now + timedelta(seconds=settings.JOBS_FOLLOW_UP_FULL_PASS_EVERY)
    assert followups.catch_up(full) == 1

    batch.refresh_from_db()
    assert batch.state == BatchState.SUCCEEDED


def test_batches_still_running_do_not_hold_the_catch_ups_mark_back(user, settings):
    settings.JOBS_SWEEP_BATCH = 1
    now = timezone.now()
    followups.catch_up(now)
    running = [create_batch(sleeps(2), owner=user) for _ in range(2)]
    for batch in running:
        finish_behind_the_follow_ups(Job.objects.filter(batch=batch).first())
    ready = create_batch(sleeps(1), owner=user)
    finish_behind_the_follow_ups(Job.objects.get(batch=ready))

    later = now + timedelta(seconds=5)
    assert followups.catch_up(later) == 1

    ready.refresh_from_db()
    assert ready.state == BatchState.SUCCEEDED
    assert all(Batch.objects.get(id=b.id).state == BatchState.RUNNING for b in running)
    assert FollowUpMark.objects.get(name="batches").caught_up_to == later


def test_the_catch_up_leaves_a_batch_with_a_job_still_queued(user):
    batch = create_batch(sleeps(2), owner=user, on_complete=NOOP)
    finish_behind_the_follow_ups(Job.objects.filter(batch=batch).first())

    assert batches.catch_up(timezone.now()).done == 0
    batch.refresh_from_db()
    assert batch.state == BatchState.RUNNING
    assert callbacks_of(batch) == []


@pytest.mark.django_db(transaction=True)
def test_two_settles_at_the_same_moment_create_the_callbacks_once(user):
    if connection.vendor != "postgresql":
        pytest.skip("SQLite runs one writer at a time: there is no race to lose")
    batch = create_batch(sleeps(2), owner=user, on_success=NOOP, on_complete=NOOP)
    for job in Job.objects.filter(batch=batch):
        finish_behind_the_follow_ups(job)

    def settle_in_thread(_: int) -> bool:
        try:
            return settle(batch.id)
        finally:
            connections.close_all()

    outcomes = run_in_threads(2, settle_in_thread)

    assert sorted(outcomes) == [False, True]
    batch.refresh_from_db()
    assert batch.state == BatchState.SUCCEEDED
    assert len(callbacks_of(batch)) == 2


# --- cancelling ---------------------------------------------------------------------------


def test_cancelling_a_batch_cancels_its_queued_jobs_and_settles_it_as_cancelled(
    user, django_capture_on_commit_callbacks
):
    batch = create_batch(sleeps(3), owner=user, on_success=NOOP, on_complete=NOOP)

    with django_capture_on_commit_callbacks(execute=True):
        cancel_batch(batch, by=user, via=Via.API)

    batch.refresh_from_db()
    assert batch.state == BatchState.CANCELLED
    assert batch.cancel_requested
    assert set(Job.objects.filter(batch=batch).values_list("status", flat=True)) == {"cancelled"}
    assert [job.id for job in callbacks_of(batch)] == [batch.complete_job_id]
    action = OperatorAction.objects.get(target_kind="batch")
    assert (action.action, action.target, action.via) == ("cancel", str(batch.id), "api")
    assert action.detail == {"cancelled": 3, "asked_to_stop": 0}
    job = Job.objects.filter(batch=batch).first()
    assert job.events.filter(kind=EventKind.CANCELLED, message="by alice (api)").exists()
    with pytest.raises(batches.BatchNotRunning):
        cancel_batch(batch)


def test_a_cancelled_batch_waits_for_its_running_job_to_stop(
    user, django_capture_on_commit_callbacks
):
    batch = create_batch(sleeps(2), owner=user, on_complete=NOOP)
    running, queued = Job.objects.filter(batch=batch).order_by("id")
    now = timezone.now()
    running = job_store().claim(running.id, now, due=now)

    with django_capture_on_commit_callbacks(execute=True):
        cancel_batch(batch)

    batch.refresh_from_db()
    assert batch.state == BatchState.RUNNING
    assert Job.objects.get(id=queued.id).status == Status.CANCELLED
    assert Job.objects.get(id=running.id).cancel_requested
    assert callbacks_of(batch) == []

    with django_capture_on_commit_callbacks(execute=True):
        assert job_store().finish(running, Status.CANCELLED, timezone.now())
        followups.jobs_ended([Job.objects.get(id=running.id)])

    batch.refresh_from_db()
    assert batch.state == BatchState.CANCELLED
    assert [job.id for job in callbacks_of(batch)] == [batch.complete_job_id]
