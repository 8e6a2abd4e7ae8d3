"""The job store's two implementations leave the same rows and events.

`PostgresJobStore` writes the hot path as single statements with fixed SQL, `JobStore`
through the ORM. Each transition runs through both, on twin jobs in the same state at
the same moment, and the resulting rows and timelines must be identical (ids and the
moments the database itself stamps aside).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from jobs.models import EventKind, Held, Job, JobEvent, LimitState, Priority, Status
from jobs.store import JobStore, PostgresJobStore, job_store

pytestmark = pytest.mark.skipif(
    "postgresql" not in connection.vendor, reason="the PostgreSQL store needs PostgreSQL"
)

STORES = [JobStore(), PostgresJobStore()]
# Stamped by the database or by auto_now at insert time, never by the transition.
STAMPED = {"id", "created_at"}


def snapshot(job_id, *, ignore: frozenset[str] = frozenset()) -> dict:
    row = Job.objects.values().get(id=job_id)
    for name in STAMPED | ignore:
        row.pop(name)
    # In the order written: a twin's "created" event is stamped by the clock, the
    # transitions by the test's `now`, and the two can fall either side of a second.
    row["events"] = list(
        JobEvent.objects.filter(job_id=job_id)
        .order_by("id")
        .values_list("kind", "message", "attempt")
    )
    return row


def twins(**fields) -> list[Job]:
    """Two jobs in the same state, one per store."""
    fields = {"type": "system.noop", "payload": {"n": 1}, "queue": "default", **fields}
    made = []
    for _ in STORES:
        job = Job.objects.create(**fields)
        JobEvent.objects.create(job=job, kind=EventKind.CREATED, message="Created")
        made.append(job)
    # auto_now stamped each at its own moment: make the twins the same age.
    Job.objects.filter(id__in=[job.id for job in made]).update(updated_at=made[0].updated_at)
    return made


def run_on_both(transition: Callable, **fields) -> list:
    """Apply `transition(store, job)` to a twin per store; returns the two results."""
    return [transition(store, job) for store, job in zip(STORES, twins(**fields), strict=True)]


def assert_same_state(*jobs: Job, ignore: frozenset[str] = frozenset()) -> None:
    first, second = (snapshot(job.id, ignore=ignore) for job in jobs)
    assert first == second


def running(now, attempts: int = 1, **fields) -> dict:
    return {
        "status": Status.RUNNING,
        "attempts": attempts,
        "started_at": now,
        "heartbeat_at": now,
        "dispatched_at": now,
        **fields,
    }


@pytest.fixture
def now():
    return timezone.now().replace(microsecond=0) + timedelta(seconds=1)


def test_the_store_for_postgresql_is_the_single_statement_one(db):
    assert type(job_store()) is PostgresJobStore


# --- creating ------------------------------------------------------------------------


@pytest.mark.parametrize("dispatched", [True, False])
def test_insert(db, now, dispatched):
    jobs = []
    for store in STORES:
        job = Job(
            type="system.noop",
            payload={"a": [1, 2]},
            priority=Priority.HIGH,
            idempotency_key=f"key-{uuid.uuid4()}",
            run_at=now + timedelta(minutes=5),
            dispatched_at=now if dispatched else None,
        )
        store.insert(job)
        jobs.append(job)

    first, second = (
        snapshot(j.id, ignore=frozenset({"updated_at", "idempotency_key"})) for j in jobs
    )
    assert first == second
    assert [kind for kind, _, _ in first["events"]] == ["created"] + ["dispatched"] * dispatched
    assert first["events"][0][1] == f"Created, to run at {(now + timedelta(minutes=5)).isoformat()}"


def test_insert_many(db, now):
    batches = []
    for store in STORES:
        jobs = [
            Job(type="system.noop", payload={"i": i}, dispatched_at=now if i % 2 else None)
            for i in range(4)
        ]
        store.insert_many(jobs, now)
        batches.append(jobs)

    for first, second in zip(*batches, strict=True):
        assert_same_state(first, second)
        assert Job.objects.get(id=first.id).updated_at == now


def test_mark_and_unmark_dispatched(db, now):
    jobs = twins()
    for store, job in zip(STORES, jobs, strict=True):
        store.mark_dispatched([job], now)
    assert_same_state(*jobs)
    assert snapshot(jobs[0].id)["dispatched_at"] == now

    for store, job in zip(STORES, jobs, strict=True):
        store.unmark_dispatched([job])
    assert_same_state(*jobs)
    assert snapshot(jobs[0].id)["dispatched_at"] is None


# --- a run ---------------------------------------------------------------------------


def test_claim_of_a_due_job(db, now):
    claimed = run_on_both(lambda store, job: store.claim(job.id, now, now), dispatched_at=now)

    assert all(job is not None and job.attempts == 1 for job in claimed)
    assert_same_state(*claimed)
    assert snapshot(claimed[0].id)["events"][-1] == ("started", "Attempt 1 of 3", 1)


@pytest.mark.parametrize("state", ["not yet due", "running", "finished"])
def test_claim_that_takes_nothing(db, now, state):
    fields = {
        "not yet due": {"run_at": now + timedelta(minutes=1)},
        "running": running(now),
        "finished": {"status": Status.SUCCEEDED, "attempts": 1},
    }[state]
    jobs = twins(**fields)

    results = [store.claim(job.id, now, now) for store, job in zip(STORES, jobs, strict=True)]

    assert results == [None, None]
    assert_same_state(*jobs)


def test_admitted_claim_writes_its_rate_logs(db, now):
    logs = {store: [(f"tests:{type(store).__name__}", [1, 2], [3])] for store in STORES}

    claimed = run_on_both(
        lambda store, job: store.claim_admitted(job.id, now, now, logs[store]),
        held=Held.RATE,
        run_at=now,
    )

    assert all(job is not None and job.held == Held.NO for job in claimed)
    assert_same_state(*claimed)
    written = LimitState.objects.filter(key__startswith="tests:").values_list("starts", "reserved")
    assert list(written) == [([1, 2], [3])] * 2


def test_admitted_claim_of_a_job_no_longer_queued_writes_no_rate_log(db, now):
    jobs = twins(status=Status.CANCELLED)

    results = [
        store.claim_admitted(job.id, now, now, [("tests:log", [1], [])])
        for store, job in zip(STORES, jobs, strict=True)
    ]

    assert results == [None, None]
    assert not LimitState.objects.filter(key="tests:log").exists()


def test_read(db, now):
    job = twins(run_at=now, priority=Priority.HIGH, owner=None)[0]
    fields = [f.attname for f in Job._meta.concrete_fields]
    expected = [getattr(Job.objects.get(id=job.id), f) for f in fields]

    read = [store.read(job.id) for store in STORES]

    assert [[getattr(found, f) for f in fields] for found in read] == [expected] * 2
    assert [store.read(uuid.uuid4()) for store in STORES] == [None, None]


@pytest.mark.parametrize("milestone", [None, 50])
def test_progress(db, now, milestone):
    jobs = twins(**running(now))
    later = now + timedelta(seconds=3)

    results = [
        store.progress(job, 55, "Halfway", milestone, later)
        for store, job in zip(STORES, jobs, strict=True)
    ]

    assert results == [True, True]
    assert_same_state(*jobs)
    assert snapshot(jobs[0].id)["heartbeat_at"] == later


def test_progress_of_a_run_that_no_longer_holds_its_job(db, now):
    jobs = twins(**running(now, attempts=2))
    stale = [Job(id=job.id, attempts=1) for job in jobs]

    results = [
        store.progress(job, 55, "x", 50, now) for store, job in zip(STORES, stale, strict=True)
    ]

    assert results == [False, False]
    assert_same_state(*jobs)


def test_heartbeat(db, now):
    jobs = twins(**running(now))
    later = now + timedelta(seconds=5)

    counts = [
        store.heartbeat([(job.id, 1), (job.id, 7)], later)
        for store, job in zip(STORES, jobs, strict=True)
    ]

    assert counts == [1, 1]
    assert_same_state(*jobs)


@pytest.mark.parametrize(
    "status, fields",
    [
        (Status.SUCCEEDED, {"result": {"ok": True}, "progress": 100, "message": "Done"}),
        (Status.FAILED, {"error": "ValueError: no"}),
        (Status.CANCELLED, {"message": "Cancelled"}),
    ],
)
def test_finish(db, now, status, fields):
    jobs = twins(**running(now, cancel_requested=status == Status.CANCELLED))

    results = [
        store.finish(job, status, now + timedelta(seconds=1), **fields)
        for store, job in zip(STORES, jobs, strict=True)
    ]

    assert results == [True, True]
    assert_same_state(*jobs)
    row = snapshot(jobs[0].id)
    assert row["status"] == status and row["cancel_requested"] is False
    assert row["events"][-1][0] == status


def test_finish_of_a_run_that_no_longer_holds_its_job(db, now):
    jobs = twins(**running(now, attempts=2))
    stale = [Job(id=job.id, attempts=1) for job in jobs]

    results = [
        store.finish(job, Status.SUCCEEDED, now, result=1)
        for store, job in zip(STORES, stale, strict=True)
    ]

    assert results == [False, False]
    assert_same_state(*jobs)
    assert snapshot(jobs[0].id)["status"] == Status.RUNNING


@pytest.mark.parametrize("holds", [True, False])
def test_schedule_retry(db, now, holds):
    jobs = twins(**running(now, attempts=2))
    runs = jobs if holds else [Job(id=job.id, attempts=1) for job in jobs]
    run_at = now + timedelta(seconds=10)

    results = [
        store.schedule_retry(run, now, run_at=run_at, error="OSError: down", delay=10)
        for store, run in zip(STORES, runs, strict=True)
    ]

    assert results == [holds, holds]
    assert_same_state(*jobs)
    if holds:
        row = snapshot(jobs[0].id)
        assert (row["status"], row["run_at"], row["message"]) == (
            Status.QUEUED,
            run_at,
            "Retrying in 10s",
        )
        assert row["events"][-1] == ("retry_scheduled", "OSError: down — retry in 10s", 2)


# --- requeue -------------------------------------------------------------------------


@pytest.mark.parametrize("stalled_count, expected", [(0, Status.QUEUED), (5, Status.FAILED)])
def test_requeue_stalled(db, now, settings, stalled_count, expected):
    settings.JOBS_MAX_STALLED = 1
    jobs = twins(**running(now - timedelta(minutes=5), stalled_count=stalled_count))

    outcomes = [
        store.requeue_stalled(
            job,
            now,
            event="No heartbeat",
            cause="it stopped",
            message="Recovered",
            heartbeat_before=now,
        )
        for store, job in zip(STORES, jobs, strict=True)
    ]

    assert outcomes == [expected, expected]
    assert_same_state(*jobs)


def test_requeue_stalled_leaves_a_job_whose_run_beat_since(db, now):
    jobs = twins(**running(now))

    outcomes = [
        store.requeue_stalled(
            job, now, event="e", cause="c", message="m", heartbeat_before=now - timedelta(1)
        )
        for store, job in zip(STORES, jobs, strict=True)
    ]

    assert outcomes == [None, None]
    assert_same_state(*jobs)
    assert snapshot(jobs[0].id)["status"] == Status.RUNNING


def test_hand_back(db, now):
    jobs = twins(**running(now))

    results = [
        store.hand_back(job, "Worker shutting down", now)
        for store, job in zip(STORES, jobs, strict=True)
    ]

    assert results == [True, True]
    assert_same_state(*jobs)
    assert snapshot(jobs[0].id)["attempts"] == 1  # the old run stays fenced out


# --- operators -----------------------------------------------------------------------


@pytest.mark.parametrize("state", ["queued", "running", "succeeded"])
def test_cancel(db, now, state):
    fields = {
        "queued": {},
        "running": running(now),
        "succeeded": {"status": Status.SUCCEEDED, "attempts": 1},
    }[state]
    jobs = twins(**fields)

    for store, job in zip(STORES, jobs, strict=True):
        store.cancel(job, now)

    assert_same_state(*jobs)


def test_retry(db, now):
    jobs = twins(status=Status.FAILED, attempts=3, error="boom", finished_at=now, progress=40)

    retried = [store.retry([job.id], now) for store, job in zip(STORES, jobs, strict=True)]

    assert [len(r) for r in retried] == [1, 1]
    assert_same_state(*jobs)
    row = snapshot(jobs[0].id)
    assert (row["status"], row["attempts"], row["error"]) == (Status.QUEUED, 0, "")


# --- reading -------------------------------------------------------------------------


def test_status_row_and_active_count(now, user):
    jobs = twins(owner=user, **running(now))

    rows = [store.status_row(job.id) for store, job in zip(STORES, jobs, strict=True)]
    counts = [store.active_count(user, up_to=10) for store in STORES]

    made = {"id": None, "created_at": None}  # each twin's own
    assert rows[0] | made == rows[1] | made
    assert rows[0]["owner_id"] == user.pk
    assert counts == [2, 2]
