"""The one writer of a job's state.

Every status change of a job (created, claimed, progress and heartbeats, finished, a
retry scheduled, snoozed, requeued after a stall, a lost process or a hand-back, expired,
cancelled, retried by hand) and the marks that say its message was sent are written
here, each with its timeline event in the same statement or transaction. Nothing else
writes `Job.status`.

A run holds its job while the row is `running` with `attempts` equal to the attempt the
run claimed: that is the fence every write of a run goes through (`held`, and `HELD`
in SQL). A job recovered and claimed again has a higher attempt, so its old run can
no longer write anything.

`JobStore` writes through the ORM, on any database. `PostgresJobStore` writes the hot
path (create, claim, finish, a retry, the dispatch mark) as single statements with fixed
SQL: the UPDATE and the event's INSERT as one data-modifying `WITH` statement, many ids
as one string. Building those statements through the ORM for every job cost more CPU
than the job itself (bench/). `job_store()` picks one for the database, once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import cache
from typing import Any

import psycopg
from django.conf import settings
from django.db import connections, transaction
from django.db.backends.utils import CursorWrapper
from django.db.models import Case, Exists, F, JSONField, OuterRef, Q, QuerySet, Value, When
from django.utils import timezone

from . import live
from .models import (
    ACTIVE_STATUSES,
    RETRYABLE_STATUSES,
    Control,
    EventKind,
    Held,
    Job,
    JobDependency,
    JobEvent,
    LimitState,
    Scope,
    Status,
)

ENDED_BY = {
    Status.SUCCEEDED: EventKind.SUCCEEDED,
    Status.FAILED: EventKind.FAILED,
    Status.CANCELLED: EventKind.CANCELLED,
}
# The fields a job polled for its status shows (GET /api/jobs/<id>/status/).
STATUS_FIELDS = ["id", "status", "progress", "message", "updated_at", "expires_at"]
# Read with them: what a queued job's place in line is computed from (jobs.line.Waiting).
WAITING_FIELDS = ["type", "queue", "priority", "created_at", "held", "run_at"]
POLLED_FIELDS = ["owner_id", *STATUS_FIELDS, *WAITING_FIELDS]
# A rate limit's window log as the limits gate leaves it: key, starts, reserved starts.
RateLog = tuple[str, list[int], list[int]]


def held(job_id: Any, attempt: int) -> QuerySet[Job]:
    """The job, only while the run that claimed `attempt` of it still holds it."""
    return Job.objects.filter(id=job_id, status=Status.RUNNING, attempts=attempt)


# What goes with a job's return to the queue: its message is gone, it runs now.
_REQUEUED = {"dispatched_at": None, "heartbeat_at": None, "run_at": None, "held": Held.NO}


def _gating_controls() -> QuerySet[Control]:
    """The controls that send the outer job through the limits gate."""
    return Control.objects.filter(gates=True).filter(
        Q(scope=Scope.TYPE, name=OuterRef("type")) | Q(scope=Scope.QUEUE, name=OuterRef("queue"))
    )


def _active_with_same_key() -> QuerySet[Job]:
    """Queued or running jobs holding the outer job's unique key."""
    return Job.objects.filter(
        type=OuterRef("type"), unique_key=OuterRef("unique_key"), status__in=ACTIVE_STATUSES
    )


def _one_per_unique_key(rows: Iterable[tuple[Any, str, str | None]]) -> list[Any]:
    """The ids of (id, type, unique key) rows, keeping one job per unique key: only one
    may be active."""
    ids, keys = [], set()
    for job_id, type_name, unique_key in rows:
        if unique_key is not None:
            if (type_name, unique_key) in keys:
                continue
            keys.add((type_name, unique_key))
        ids.append(job_id)
    return ids


def _startable(queue: str, now: datetime) -> QuerySet[Job]:
    # The conditions of job_queued_line's predicate, so the planner can use it, and only
    # its columns, so the count reads the index alone.
    return (
        Job.objects.filter(status=Status.QUEUED, held=Held.NO, queue=queue)
        .filter(Q(run_at__isnull=True) | Q(run_at__lte=now))
        .values("created_at")
    )


def _waits_in_line(row: dict, now: datetime) -> bool:
    """Queued, not held and due: a job with a place in line (jobs/line.py)."""
    if row["status"] != Status.QUEUED or row["held"] != Held.NO:
        return False
    return row["run_at"] is None or row["run_at"] <= now


def _expired_message(expires_at: datetime | None) -> str:
    at = expires_at.isoformat() if expires_at else "its expiry"
    return f"Not started by {at}"


def created_message(job: Job) -> str:
    if job.run_at:
        return f"Created, to run at {job.run_at.isoformat()}"
    return "Created"


class JobStore:
    """Status changes through the ORM: the row and its event in one transaction."""

    # --- creating ------------------------------------------------------------------

    def insert(self, job: Job) -> None:
        """Insert a new job with its `created` event and, when it is already marked
        dispatched, its `dispatched` event."""
        with transaction.atomic():
            job.save(force_insert=True)
            self._add_events(EventKind.CREATED, [(job.id, created_message(job), 0)], job.created_at)
            if job.dispatched_at:
                self._add_events(EventKind.DISPATCHED, [(job.id, "", 0)], job.created_at)
            live.changed([job])

    def insert_many(self, jobs: Sequence[Job], now: datetime) -> None:
        """Insert new jobs with their `created` (and `dispatched`) events. Runs inside
        the caller's transaction."""
        if not jobs:
            return
        with transaction.atomic():
            Job.objects.bulk_create(jobs, batch_size=1000)
            # bulk_create stamps auto_now fields with its own moment.
            Job.objects.filter(id__in=[j.id for j in jobs]).update(created_at=now, updated_at=now)
            for job in jobs:
                job.created_at = job.updated_at = now
            self._add_events(EventKind.CREATED, [(j.id, created_message(j), 0) for j in jobs], now)
            sent = [j for j in jobs if j.dispatched_at]
            self._add_events(EventKind.DISPATCHED, [(j.id, "", 0) for j in sent], now)
            live.changed(jobs)

    # --- unique jobs (jobs/services.py) ------------------------------------------------

    def active_with_key(self, type_name: str, unique_key: str, owner_id: Any) -> Job | None:
        """The queued or running job of the type holding `unique_key`, if any."""
        return Job.objects.filter(
            type=type_name, unique_key=unique_key, owner_id=owner_id, status__in=ACTIVE_STATUSES
        ).first()

    def debounce(self, job: Job, payload: dict[str, Any], now: datetime) -> bool:
        """Replace the payload of `job` with a newer create's while it is still queued,
        with a `debounced` event. False when it is no longer queued (it started)."""
        with transaction.atomic():
            if not Job.objects.filter(id=job.id, status=Status.QUEUED).update(
                payload=payload, updated_at=now
            ):
                return False
            self._add_event(job, EventKind.DEBOUNCED, now, "Payload replaced by a newer create")
        job.payload, job.updated_at = payload, now
        return True

    def give_up_unique_key(self, job: Job) -> bool:
        """Let a running job's key go, so that a new job with the key may be queued while
        it runs. False when the job no longer runs with that key."""
        return bool(
            Job.objects.filter(id=job.id, status=Status.RUNNING, unique_key=job.unique_key).update(
                unique_key=None
            )
        )

    # --- dispatch marks --------------------------------------------------------------

    def mark_dispatched(self, jobs: Sequence[Job], now: datetime) -> None:
        """Record that the jobs' messages were sent at `now`."""
        with transaction.atomic():
            Job.objects.filter(id__in=[job.id for job in jobs]).update(dispatched_at=now)
            self._add_events(EventKind.DISPATCHED, [(j.id, "", j.attempts) for j in jobs], now)

    def unmark_dispatched(self, jobs: Sequence[Job]) -> None:
        """Take back the dispatch mark of new jobs whose messages could not be sent."""
        ids = [job.id for job in jobs]
        with transaction.atomic():
            Job.objects.filter(id__in=ids).update(dispatched_at=None)
            JobEvent.objects.filter(job_id__in=ids, kind=EventKind.DISPATCHED).delete()

    def forget_message(self, job_id: Any) -> None:
        """The job's message is gone (it came too early and was dropped): the job waits
        for a new one."""
        Job.objects.filter(id=job_id, status=Status.QUEUED).update(dispatched_at=None)

    # --- a run -----------------------------------------------------------------------

    def claim(
        self, job_id: Any, now: datetime, due: datetime, *, gate_passed: bool = False
    ) -> Job | None:
        """Move a queued job whose time (`run_at`, compared with `due`) has come to
        running, add its `started` event and return it; None when it is not claimable.

        Unless `gate_passed` (jobs/limits.py admitted it under its type's lock), a job
        that is held, expired, or that a `Control` row gates (paused, limited by staff)
        is not claimable here either: it goes through the gate."""
        claimable = Job.objects.filter(id=job_id, status=Status.QUEUED).filter(
            Q(run_at__isnull=True) | Q(run_at__lte=due)
        )
        if not gate_passed:
            claimable = claimable.filter(
                Q(expires_at__isnull=True) | Q(expires_at__gt=now), held=Held.NO
            ).exclude(Exists(_gating_controls()))
        with transaction.atomic():
            claimed = claimable.update(
                held=Held.NO,
                status=Status.RUNNING,
                attempts=F("attempts") + 1,
                started_at=now,
                heartbeat_at=now,
                finished_at=None,
                progress=0,
                message="Running",
                updated_at=now,
            )
            if not claimed:
                return None
            job = Job.objects.get(id=job_id)
            self._add_event(
                job, EventKind.STARTED, now, f"Attempt {job.attempts_used} of {job.max_attempts}"
            )
        return job

    def claim_admitted(
        self, job_id: Any, now: datetime, due: datetime, rate_logs: Sequence[RateLog] = ()
    ) -> Job | None:
        """Claim a job the limits gate admitted (as `claim(gate_passed=True)`) and write
        the window logs of the rate limits it took its start in (`LimitState` rows),
        only if it was claimed."""
        with transaction.atomic():
            job = self.claim(job_id, now, due, gate_passed=True)
            if job is not None and rate_logs:
                LimitState.objects.bulk_create(
                    [LimitState(key=k, starts=s, reserved=r) for k, s, r in rate_logs],
                    update_conflicts=True,
                    unique_fields=["key"],
                    update_fields=["starts", "reserved"],
                )
        return job

    def read(self, job_id: Any) -> Job | None:
        """The job, as it is now; None if there is no such job."""
        return Job.objects.filter(id=job_id).first()

    def claimed_at(self, job_id: Any, started_at: datetime) -> Job | None:
        """The job if a claim made at `started_at` holds it (that claim's answer may
        have been lost with its connection)."""
        return Job.objects.filter(id=job_id, status=Status.RUNNING, started_at=started_at).first()

    def progress(
        self, job: Job, percent: int, message: str, milestone: int | None, now: datetime
    ) -> bool:
        """Record a held, not cancelling, run's progress (and a `progress` event when it
        passed a `milestone`); the write refreshes its heartbeat. False when the run no
        longer holds the job or its cancellation was requested."""
        running = held(job.id, job.attempts).filter(cancel_requested=False)
        changes = {"progress": percent, "message": message[:255], "heartbeat_at": now}
        if milestone is None:
            if not running.update(**changes, updated_at=now):
                return False
            live.changed(
                [job],
                status=Status.RUNNING,
                progress=percent,
                message=message[:255],
                updated_at=now,
            )
            return True
        with transaction.atomic():
            if not running.update(**changes, updated_at=now):
                return False
            text = f"{milestone}% {message}".strip()
            self._add_event(job, EventKind.PROGRESS, now, text)
        return True

    def is_held(self, job: Job) -> bool:
        """Whether the run still holds the job and no cancellation was requested."""
        return held(job.id, job.attempts).filter(cancel_requested=False).exists()

    def is_cancelling(self, job: Job) -> bool:
        """Whether the run still holds the job and its cancellation was requested."""
        return held(job.id, job.attempts).filter(cancel_requested=True).exists()

    def heartbeat(self, runs: Iterable[tuple[Any, int]], now: datetime) -> int:
        """Refresh the heartbeat of each (job id, attempt) run still holding its job."""
        still_held = Q()
        for job_id, attempt in runs:
            still_held |= Q(id=job_id, attempts=attempt)
        if not still_held:
            return 0
        return (
            Job.objects.filter(still_held, status=Status.RUNNING)
            .order_by()
            .update(heartbeat_at=now)
        )

    def finish(
        self,
        job: Job,
        status: str,
        now: datetime,
        *,
        result: Any = None,
        error: str = "",
        progress: int | None = None,
        message: str | None = None,
    ) -> bool:
        """End the held run of `job` with `status` and its event. False when the run
        no longer holds the job."""
        changes: dict[str, Any] = {
            "status": status,
            "result": result,
            "error": error,
            "finished_at": now,
            "updated_at": now,
            "cancel_requested": False,
        }
        if progress is not None:
            changes["progress"] = progress
        if message is not None:
            changes["message"] = message
        with transaction.atomic():
            if not held(job.id, job.attempts).update(**changes):
                return False
            self._add_event(job, ENDED_BY[status], now, error)
        return True

    def ended_as(self, job: Job, status: str) -> bool:
        """Whether the run's attempt ended the job with `status`."""
        return Job.objects.filter(id=job.id, attempts=job.attempts, status=status).exists()

    def schedule_retry(
        self, job: Job, now: datetime, *, run_at: datetime, error: str, delay: float
    ) -> bool:
        """Put the held run's job back in the queue to run again at `run_at` after its
        attempt failed with `error`. False when the run no longer holds the job."""
        with transaction.atomic():
            if not held(job.id, job.attempts).update(
                status=Status.QUEUED,
                run_at=run_at,
                dispatched_at=None,
                heartbeat_at=None,
                error=error,
                message=f"Retrying in {delay:g}s",
                updated_at=now,
            ):
                return False
            self._add_event(
                job, EventKind.RETRY_SCHEDULED, now, f"{error[:400]} — retry in {delay:g}s"
            )
        return True

    def snooze(
        self, job: Job, now: datetime, *, run_at: datetime, reason: str, delay: float
    ) -> bool:
        """Put the held run's job back in the queue to run again at `run_at`, as its
        handler asked, without counting the run against its attempts. The claim counted
        it in `attempts`, the fence, which stays: the next run's claim moves the fence
        on, so nothing of this run can write to the next one. False when the run no
        longer holds the job."""
        message = f"Snoozed for {delay:g}s" + (f": {reason}" if reason else "")
        with transaction.atomic():
            if not held(job.id, job.attempts).update(
                status=Status.QUEUED,
                snoozes=F("snoozes") + 1,
                run_at=run_at,
                dispatched_at=None,
                heartbeat_at=None,
                message=message[:255],
                updated_at=now,
            ):
                return False
            self._add_event(job, EventKind.SNOOZED, now, message)
        job.snoozes += 1
        return True

    # --- requeue after a loss ----------------------------------------------------------

    def requeue_stalled(
        self,
        job: Job,
        now: datetime,
        *,
        event: str,
        cause: str,
        message: str,
        heartbeat_before: datetime | None = None,
    ) -> str | None:
        """Put the job `job`'s run held back in the queue (its worker or process died),
        or fail it once it has stalled JOBS_MAX_STALLED times; only while that run
        still holds it and, with `heartbeat_before`, has not beaten since. Returns the
        new status, None when the run no longer held the job."""
        still_held = held(job.id, job.attempts)
        if heartbeat_before is not None:
            still_held = still_held.filter(heartbeat_at__lt=heartbeat_before)
        with transaction.atomic():
            if job.stalled_count >= settings.JOBS_MAX_STALLED:
                error = f"Stalled {job.stalled_count + 1} times: {cause}."
                if not still_held.update(
                    status=Status.FAILED, error=error, finished_at=now, updated_at=now
                ):
                    return None
                self._add_event(job, EventKind.FAILED, now, error)
                return Status.FAILED
            if not still_held.update(
                status=Status.QUEUED,
                stalled_count=job.stalled_count + 1,
                message=message,
                updated_at=now,
                **_REQUEUED,
            ):
                return None
            self._add_event(job, EventKind.RECOVERED, now, event)
        job.status, job.run_at, job.dispatched_at = Status.QUEUED, None, None
        return Status.QUEUED

    def hand_back(self, job: Job, reason: str, now: datetime) -> bool:
        """Put the job back in the queue at once: its worker is shutting down and will
        not finish it. The attempt stays, so the old run can no longer write."""
        with transaction.atomic():
            if not held(job.id, job.attempts).update(
                status=Status.QUEUED,
                message="Handed back by a worker shutting down",
                updated_at=now,
                **_REQUEUED,
            ):
                return False
            self._add_event(job, EventKind.RECOVERED, now, reason)
        job.status, job.run_at, job.dispatched_at = Status.QUEUED, None, None
        return True

    # --- limits and pauses (jobs/limits.py) ---------------------------------------------

    def hold(self, job: Job, held: str, message: str, now: datetime) -> bool:
        """Keep a queued job waiting without a message until a pause ends or its limit
        frees a slot (`held`: Held.PAUSED or Held.CONCURRENCY)."""
        with transaction.atomic():
            if not Job.objects.filter(id=job.id, status=Status.QUEUED).update(
                held=held, dispatched_at=None, message=message[:255], updated_at=now
            ):
                return False
            if job.held != held:
                self._add_event(job, EventKind.HELD, now, message)
        job.held, job.dispatched_at = held, None
        return True

    def defer(self, job: Job, run_at: datetime, message: str, now: datetime) -> bool:
        """Keep a queued job until `run_at`, the start its rate limit reserved for it."""
        with transaction.atomic():
            if not Job.objects.filter(id=job.id, status=Status.QUEUED).update(
                held=Held.RATE,
                run_at=run_at,
                dispatched_at=None,
                message=message[:255],
                updated_at=now,
            ):
                return False
            self._add_event(job, EventKind.HELD, now, message)
        job.held, job.run_at, job.dispatched_at = Held.RATE, run_at, None
        return True

    def release(self, job_ids: Iterable[Any], reason: str, now: datetime) -> list[Job]:
        """Let held jobs start again (their pause ended or their limit has room): they
        wait for a new message. Returns the jobs released."""
        with transaction.atomic():
            rows = list(
                Job.objects.select_for_update()
                .filter(id__in=list(job_ids), status=Status.QUEUED)
                .exclude(held=Held.NO)
                .values_list("id", "attempts")
            )
            if not rows:
                return []
            ids = [job_id for job_id, _ in rows]
            Job.objects.filter(id__in=ids).update(
                held=Held.NO, run_at=None, dispatched_at=None, message="", updated_at=now
            )
            events = [(job_id, reason, attempt) for job_id, attempt in rows]
            self._add_events(EventKind.RELEASED, events, now)
        return list(Job.objects.filter(id__in=ids))

    # --- dependencies (jobs/dependencies.py) -------------------------------------------

    def add_dependencies(self, links: Sequence[tuple[Job, Sequence[Any]]], now: datetime) -> None:
        """Record that each new job waits for the job ids paired with it, with a `held`
        event on the timeline of each one written held for them. Runs inside the
        caller's transaction, the one that inserted the jobs."""
        with transaction.atomic():
            rows = [JobDependency(job_id=j.id, depends_on_id=d) for j, deps in links for d in deps]
            JobDependency.objects.bulk_create(rows, batch_size=1000)
            by_moment: dict[datetime, list[tuple[Any, str, int]]] = {}
            for job, deps in links:
                if job.held == Held.DEPENDENCIES:
                    # Not before its `created` event, which is at the row's created_at.
                    at = max(now, job.created_at or now)
                    text = "Waiting for " + ", ".join(str(d) for d in deps)
                    by_moment.setdefault(at, []).append((job.id, text, 0))
            for at, events in by_moment.items():
                self._add_events(EventKind.HELD, events, at)

    def release_waiting(self, job: Job, reason: str, now: datetime) -> bool:
        """Let a job waiting for its dependencies start: it waits for a message (its
        `run_at` stays). False when it no longer waits for them."""
        with transaction.atomic():
            if not Job.objects.filter(
                id=job.id, status=Status.QUEUED, held=Held.DEPENDENCIES
            ).update(held=Held.NO, dispatched_at=None, message="", updated_at=now):
                return False
            self._add_event(job, EventKind.RELEASED, now, reason)
        job.held, job.dispatched_at, job.message = Held.NO, None, ""
        return True

    def cancel_waiting(self, job: Job, reason: str, now: datetime) -> bool:
        """End as cancelled a job waiting for its dependencies (one of them did not
        succeed), `reason` in its message and on its timeline. False when it no longer
        waits for them."""
        with transaction.atomic():
            if not Job.objects.filter(
                id=job.id, status=Status.QUEUED, held=Held.DEPENDENCIES
            ).update(
                status=Status.CANCELLED,
                held=Held.NO,
                finished_at=now,
                updated_at=now,
                message=reason[:255],
            ):
                return False
            self._add_event(job, EventKind.CANCELLED, now, reason)
        job.status, job.held, job.finished_at, job.message = (
            Status.CANCELLED,
            Held.NO,
            now,
            reason[:255],
        )
        return True

    # --- expiry ----------------------------------------------------------------------

    def expire(self, job: Job, now: datetime) -> bool:
        """End a queued job whose expiry passed before it could start. False when it is
        no longer queued or its expiry has not passed."""
        with transaction.atomic():
            if not Job.objects.filter(id=job.id, status=Status.QUEUED, expires_at__lte=now).update(
                status=Status.EXPIRED,
                held=Held.NO,
                finished_at=now,
                updated_at=now,
                message="Expired before it could start",
            ):
                return False
            self._add_event(job, EventKind.EXPIRED, now, _expired_message(job.expires_at))
        job.status, job.finished_at = Status.EXPIRED, now
        return True

    def expire_overdue(self, now: datetime, limit: int) -> list[Job]:
        """Expire up to `limit` queued jobs whose expiry has passed, the most overdue
        first; returns them as they were (still showing what held them)."""
        with transaction.atomic():
            jobs = list(
                Job.objects.select_for_update()
                .filter(status=Status.QUEUED, expires_at__lte=now)
                .order_by("expires_at")[:limit]
            )
            if not jobs:
                return []
            Job.objects.filter(id__in=[job.id for job in jobs]).update(
                status=Status.EXPIRED,
                held=Held.NO,
                finished_at=now,
                updated_at=now,
                message="Expired before it could start",
            )
            events = [(j.id, _expired_message(j.expires_at), j.attempts) for j in jobs]
            self._add_events(EventKind.EXPIRED, events, now)
        return jobs

    # --- operators ---------------------------------------------------------------------

    def cancel(self, job: Job, now: datetime, note: str = "") -> str | None:
        """Cancel a queued job; ask a running one to stop at its next checkpoint. Returns
        the event it added (`note` is its message), None when there was nothing to do."""
        with transaction.atomic():
            if Job.objects.filter(id=job.id, status=Status.QUEUED).update(
                status=Status.CANCELLED,
                finished_at=now,
                updated_at=now,
                message="Cancelled",
                held=Held.NO,
            ):
                self._add_event(job, EventKind.CANCELLED, now, note)
                return EventKind.CANCELLED
            if Job.objects.filter(id=job.id, status=Status.RUNNING, cancel_requested=False).update(
                cancel_requested=True, updated_at=now, message="Cancelling"
            ):
                self._add_event(job, EventKind.CANCEL_REQUESTED, now, note)
                return EventKind.CANCEL_REQUESTED
        return None

    def cancel_many(
        self, job_ids: Iterable[Any], now: datetime, note: str = ""
    ) -> tuple[list[Job], list[Any]]:
        """`cancel` for many jobs in one transaction (a batch's): the queued ones are
        cancelled, the running ones asked to stop. Returns the jobs cancelled, as they
        now are, and the ids of those asked to stop."""
        with transaction.atomic():
            rows = list(
                Job.objects.select_for_update()
                .filter(id__in=list(job_ids), status__in=ACTIVE_STATUSES)
                .order_by("id")
                .values_list("id", "status", "attempts", "cancel_requested")
            )
            queued = [(i, note, a) for i, status, a, _ in rows if status == Status.QUEUED]
            running = [
                (i, note, a)
                for i, status, a, asking in rows
                if status == Status.RUNNING
                if not asking
            ]
            Job.objects.filter(id__in=[i for i, _, _ in queued]).update(
                status=Status.CANCELLED,
                finished_at=now,
                updated_at=now,
                message="Cancelled",
                held=Held.NO,
            )
            Job.objects.filter(id__in=[i for i, _, _ in running]).update(
                cancel_requested=True, updated_at=now, message="Cancelling"
            )
            self._add_events(EventKind.CANCELLED, queued, now)
            self._add_events(EventKind.CANCEL_REQUESTED, running, now)
        cancelled = list(Job.objects.filter(id__in=[i for i, _, _ in queued]))
        return cancelled, [i for i, _, _ in running]

    def retry(self, job_ids: Iterable[Any], now: datetime, note: str = "") -> list[Job]:
        """Put the failed, cancelled or expired jobs among `job_ids` back in the queue
        with a fresh round of attempts; returns them as they now are. An expiry that has
        passed (or expired the job) is dropped: retrying the job asks for it to run. A
        unique job whose key another queued or running job holds stays as it is. `note`
        is appended to their timeline's "Manual retry"."""
        with transaction.atomic():
            rows = (
                Job.objects.select_for_update()
                .filter(id__in=list(job_ids), status__in=RETRYABLE_STATUSES)
                .exclude(Exists(_active_with_same_key()))
                .values_list("id", "type", "unique_key")
            )
            ids = _one_per_unique_key(rows)
            Job.objects.filter(id__in=ids, status__in=RETRYABLE_STATUSES).update(
                status=Status.QUEUED,
                attempts=0,
                snoozes=0,
                stalled_count=0,
                expires_at=Case(
                    When(Q(status=Status.EXPIRED) | Q(expires_at__lte=now), then=Value(None)),
                    default=F("expires_at"),
                ),
                cancel_requested=False,
                error="",
                result=None,
                progress=0,
                message="",
                started_at=None,
                finished_at=None,
                updated_at=now,
                **_REQUEUED,
            )
            self._add_events(
                EventKind.RETRIED,
                [(job_id, " ".join(filter(None, ["Manual retry", note])), 0) for job_id in ids],
                now,
            )
        return list(Job.objects.filter(id__in=ids))

    # --- reading -----------------------------------------------------------------------

    def status_row(
        self, job_id: Any, *, now: datetime | None = None, ahead_up_to: int | None = None
    ) -> dict | None:
        """The polled fields of a job, its owner_id and what its place in line is computed
        from, or None if there is no such job. With `ahead_up_to`, also `ahead`: the jobs
        ahead of it in its line as `count_ahead` counts them, when it is queued, not held
        and due at `now`; None otherwise."""
        row = Job.objects.filter(id=job_id).values(*POLLED_FIELDS).first()
        if row is not None and ahead_up_to is not None:
            now = now or timezone.now()
            row["ahead"] = None
            if _waits_in_line(row, now):
                row["ahead"] = self.count_ahead(
                    row["queue"], row["priority"], row["created_at"], now, up_to=ahead_up_to
                )
        return row

    def count_ahead(
        self, queue: str, priority: int, created_at: datetime, now: datetime, *, up_to: int
    ) -> int:
        """How many queued jobs of `queue` a worker takes before a job of `priority`
        created at `created_at` (higher priorities, then older ones), not held and due,
        counting no further than `up_to` (jobs/line.py)."""
        higher = _startable(queue, now).filter(priority__gt=priority)
        found = higher.order_by()[:up_to].count()
        if found >= up_to:
            return found
        same = _startable(queue, now).filter(priority=priority, created_at__lt=created_at)
        return found + same.order_by()[: up_to - found].count()

    def active_count(self, owner, *, up_to: int) -> int:
        """How many of `owner`'s jobs are queued or running, counting no further than `up_to`."""
        return len(
            Job.objects.filter(owner=owner, status__in=[Status.QUEUED, Status.RUNNING])
            .order_by()
            .values_list("id", flat=True)[:up_to]
        )

    # --- events ------------------------------------------------------------------------

    def _add_event(self, job: Job, kind: str, now: datetime, message: str = "") -> None:
        JobEvent.objects.create(
            job_id=job.id, kind=kind, message=message[:500], attempt=job.attempts, created_at=now
        )
        self._publish_change(kind, [job.id])

    def _add_events(self, kind: str, rows: list[tuple[Any, str, int]], now: datetime) -> None:
        """One `kind` event per (job id, message, attempt) row."""
        JobEvent.objects.bulk_create(
            [
                JobEvent(
                    job_id=job_id, kind=kind, message=message[:500], attempt=attempt, created_at=now
                )
                for job_id, message, attempt in rows
            ],
            batch_size=1000,
        )
        self._publish_change(kind, [job_id for job_id, _, _ in rows])

    @staticmethod
    def _publish_change(kind: str, job_ids: list[Any]) -> None:
        """Tell live clients (jobs/live.py) about the jobs an event was added for, once
        committed. New jobs are told by their creator, which holds them; a dispatch
        mark changes nothing a client sees."""
        if kind not in _UNSEEN_EVENTS:
            live.changed_ids(job_ids)


# Events whose change live clients are told about otherwise, or not at all.
_UNSEEN_EVENTS = {EventKind.CREATED, EventKind.DISPATCHED}


# --- PostgreSQL ---------------------------------------------------------------------------

JOBS = Job._meta.db_table
EVENTS = JobEvent._meta.db_table
DEPENDENCIES = JobDependency._meta.db_table
_FIELDS = Job._meta.concrete_fields
_COLUMNS = ", ".join(f'"{f.column}"' for f in _FIELDS)
_JOB_COLUMNS = ", ".join(f'job."{f.column}"' for f in _FIELDS)
ADD_EVENT = f'INSERT INTO "{EVENTS}" (job_id, kind, message, attempt, created_at) '
# Many ids go to PostgreSQL as one comma-separated string: quoting one string is far
# cheaper than quoting an array literal of thousands of UUIDs.
UUIDS = "string_to_array(%s, ',')::uuid[]"
# The fence, on the locked row of a `target` CTE.
HELD = "target.status = 'running' AND target.attempts = %(attempt)s"

# The row is found by primary key alone and locked first; its state is checked on the
# locked row. Written as `WHERE id = ? AND status = 'queued'`, the planner may instead
# walk an index of all queued rows whenever its statistics underestimate them (right
# after a burst of new jobs, before the next ANALYZE), making each claim cost as much as
# the whole backlog. The finish and the retry do the same for the running rows.
_TARGET = f"""target AS (
    SELECT id, status, run_at, attempts, type, queue, held, expires_at
    FROM "{JOBS}" WHERE id = %(id)s FOR NO KEY UPDATE
)"""

# A job the claim leaves to the limits gate (jobs/limits.py): held, expired, or gated by
# a control (paused, or limited by staff). The controls table holds a row per queue or
# type an operator touched: an index lookup in it costs the claim next to nothing.
NOT_GATED = f"""target.held = '' AND (target.expires_at IS NULL OR target.expires_at > %(now)s)
        AND NOT EXISTS (
            SELECT 1 FROM "{Control._meta.db_table}" AS control
            WHERE control.gates AND (
                (control.scope = 'type' AND control.name = target.type)
                OR (control.scope = 'queue' AND control.name = target.queue)))"""

_CLAIM_SQL = f"""
WITH {_TARGET}, claimed AS (
    UPDATE "{JOBS}" AS job
    SET status = 'running', attempts = job.attempts + 1, started_at = %(now)s,
        heartbeat_at = %(now)s, finished_at = NULL, progress = 0, message = 'Running',
        updated_at = %(now)s, held = ''
    FROM target
    WHERE job.id = target.id AND target.status = 'queued'
        AND (target.run_at IS NULL OR target.run_at <= %(due)s){{gate}}
    RETURNING {_JOB_COLUMNS}
), started AS (
    {ADD_EVENT}
    SELECT id, 'started', 'Attempt ' || (attempts - snoozes) || ' of ' || max_attempts,
        attempts, %(now)s
    FROM claimed
){{logged}}
SELECT {_COLUMNS} FROM claimed
"""
CLAIM_SQL = _CLAIM_SQL.replace("{gate}", f"\n        AND {NOT_GATED}").replace("{logged}", "")
GATE_PASSED_CLAIM_SQL = _CLAIM_SQL.replace("{gate}", "").replace("{logged}", "")
# An admitted claim that took a start within rate limits writes their window logs in
# the same statement, only if it claimed the job.
ADMITTED_CLAIM_SQL = _CLAIM_SQL.replace("{gate}", "").replace(
    "{logged}",
    f""", logged AS (
    INSERT INTO "{LimitState._meta.db_table}" AS state (key, starts, reserved)
    SELECT log.key, log.starts, log.reserved
    FROM jsonb_to_recordset(%(rate_logs)s::jsonb) AS log(key text, starts jsonb, reserved jsonb)
    WHERE EXISTS (SELECT 1 FROM claimed)
    ON CONFLICT (key) DO UPDATE SET starts = EXCLUDED.starts, reserved = EXCLUDED.reserved
)""",
)

FINISH_SQL = f"""
WITH {_TARGET}, ended AS (
    UPDATE "{JOBS}" AS job
    SET status = %(status)s, result = %(result)s, error = %(error)s,
        progress = COALESCE(%(progress)s, job.progress),
        message = COALESCE(%(message)s, job.message),
        finished_at = %(now)s, updated_at = %(now)s, cancel_requested = false
    FROM target
    WHERE job.id = target.id AND {HELD}
    RETURNING job.id, job.attempts
)
{ADD_EVENT} SELECT id, %(kind)s, %(event_message)s, attempts, %(now)s FROM ended
RETURNING EXISTS (
    SELECT 1 FROM "{DEPENDENCIES}" AS dependency WHERE dependency.depends_on_id = "{EVENTS}".job_id
)
"""

# The jobs ahead in a queue's line, through job_queued_line: its predicate's conditions
# and only its columns, each count stopping at the cap.
_STARTABLE = f"""FROM "{JOBS}" WHERE status = 'queued' AND held = '' AND queue = %(queue)s
        AND (run_at IS NULL OR run_at <= %(now)s)"""
COUNT_AHEAD_SQL = f"""
SELECT
    (SELECT count(*) FROM (SELECT created_at {_STARTABLE} AND priority > %(priority)s
        LIMIT %(up_to)s) AS higher),
    (SELECT count(*) FROM (SELECT created_at {_STARTABLE} AND priority = %(priority)s
        AND created_at < %(created_at)s LIMIT %(up_to)s) AS same)
"""

RETRY_SQL = f"""
WITH {_TARGET}, rescheduled AS (
    UPDATE "{JOBS}" AS job
    SET status = 'queued', run_at = %(run_at)s, dispatched_at = NULL, heartbeat_at = NULL,
        error = %(error)s, message = %(message)s, updated_at = %(now)s
    FROM target
    WHERE job.id = target.id AND {HELD}
    RETURNING job.id, job.attempts
)
{ADD_EVENT} SELECT id, 'retry_scheduled', %(event_message)s, attempts, %(now)s FROM rescheduled
"""

INSERT_SQL = f"""
WITH created AS (
    INSERT INTO "{JOBS}" ({_COLUMNS}) VALUES ({", ".join(["%s"] * len(_FIELDS))})
    RETURNING id, created_at, dispatched_at
)
{ADD_EVENT} SELECT id, 'created', %s, 0, created_at FROM created
UNION ALL SELECT id, 'dispatched', '', 0, created_at FROM created WHERE dispatched_at IS NOT NULL
"""

MARK_DISPATCHED_SQL = f"""
WITH sent AS (
    UPDATE "{JOBS}" SET dispatched_at = %s WHERE id = ANY({UUIDS}) RETURNING id, attempts
)
{ADD_EVENT} SELECT id, 'dispatched', '', attempts, %s FROM sent
"""

# Read by the limits gate for every message of a gated type.
READ_SQL = f'SELECT {_COLUMNS} FROM "{JOBS}" WHERE id = %s'

# Polled by clients about once a second per job they watch. Looked up by primary key
# alone, the owner checked afterwards: with `owner_id = %s` in the WHERE clause too,
# PostgreSQL may walk the owner's index through all their jobs (it did in benchmark 3,
# until the table's statistics caught up with a burst of new jobs).
STATUS_SQL = f'SELECT {", ".join(POLLED_FIELDS)} FROM "{JOBS}" WHERE id = %s'

# The status read of a job with, when it waits in line (queued, not held, due), the two
# counts of COUNT_AHEAD_SQL: one prepared statement, one round trip. CASE runs a count's
# subquery only for a job that waits.
_WAITS_IN_LINE = (
    "job.status = 'queued' AND job.held = '' AND (job.run_at IS NULL OR job.run_at <= %(now)s)"
)
_AHEAD_OF_JOB = f"""FROM "{JOBS}" AS other WHERE other.status = 'queued' AND other.held = ''
        AND other.queue = job.queue AND (other.run_at IS NULL OR other.run_at <= %(now)s)"""
STATUS_LINE_SQL = f"""
SELECT {", ".join(f"job.{field}" for field in POLLED_FIELDS)},
    CASE WHEN {_WAITS_IN_LINE} THEN (SELECT count(*) FROM (SELECT other.created_at
        {_AHEAD_OF_JOB} AND other.priority > job.priority LIMIT %(up_to)s) AS higher) END,
    CASE WHEN {_WAITS_IN_LINE} THEN (SELECT count(*) FROM (SELECT other.created_at
        {_AHEAD_OF_JOB} AND other.priority = job.priority AND other.created_at < job.created_at
        LIMIT %(up_to)s) AS same) END
FROM "{JOBS}" AS job WHERE job.id = %(id)s
"""

# Counted for every job a user creates through the API. An index-only scan of
# job_owner_status (owner_id, status, ...) reads just the owner's active entries, and
# the LIMIT stops it at the cap.
ACTIVE_COUNT_SQL = (
    f'SELECT count(*) FROM (SELECT 1 FROM "{JOBS}" '
    "WHERE owner_id = %s AND status IN (%s, %s) LIMIT %s) AS active"
)


class PostgresJobStore(JobStore):
    """The hot path as single statements with fixed SQL; the rest as `JobStore`."""

    def insert(self, job: Job) -> None:
        connection = _connection()
        values = [f.get_db_prep_save(f.pre_save(job, True), connection) for f in _FIELDS]
        with connection.cursor() as cursor:
            cursor.execute(INSERT_SQL, (*values, created_message(job)))
        job._state.adding = False
        job._state.db = Job.objects.db
        live.changed([job])

    def insert_many(self, jobs: Sequence[Job], now: datetime) -> None:
        """Through COPY, which takes the values as they are instead of preparing every
        field of every row in Python (a fifth of the time for a large batch)."""
        if not jobs:
            return
        for job in jobs:
            job.created_at = job.updated_at = now
        with transaction.atomic(), _connection().cursor() as cursor:
            with cursor.copy(f'COPY "{JOBS}" ({_COLUMNS}) FROM STDIN') as copy:
                for job in jobs:
                    copy.write_row([_copy_value(field, job) for field in _FIELDS])
            for job in jobs:
                job._state.adding = False
                job._state.db = Job.objects.db
            self._add_events_at(
                cursor, EventKind.CREATED, [(j.id, created_message(j), 0) for j in jobs], now
            )
            sent = [(j.id, "", 0) for j in jobs if j.dispatched_at]
            self._add_events_at(cursor, EventKind.DISPATCHED, sent, now)
            live.changed(jobs)

    def mark_dispatched(self, jobs: Sequence[Job], now: datetime) -> None:
        with _connection().cursor() as cursor:
            cursor.execute(MARK_DISPATCHED_SQL, (now, _joined(job.id for job in jobs), now))

    def claim(
        self, job_id: Any, now: datetime, due: datetime, *, gate_passed: bool = False
    ) -> Job | None:
        sql = GATE_PASSED_CLAIM_SQL if gate_passed else CLAIM_SQL
        return self._claim(sql, {"id": job_id, "now": now, "due": due})

    def claim_admitted(
        self, job_id: Any, now: datetime, due: datetime, rate_logs: Sequence[RateLog] = ()
    ) -> Job | None:
        if not rate_logs:
            return self.claim(job_id, now, due, gate_passed=True)
        logs = json.dumps([{"key": k, "starts": s, "reserved": r} for k, s, r in rate_logs])
        return self._claim(
            ADMITTED_CLAIM_SQL, {"id": job_id, "now": now, "due": due, "rate_logs": logs}
        )

    def read(self, job_id: Any) -> Job | None:
        connection = _connection()
        with prepared_cursor(connection) as cursor:
            cursor.execute(READ_SQL, [job_id])
            row = cursor.fetchone()
        return None if row is None else _job_from_row(row, connection)

    def _claim(self, sql: str, params: dict[str, Any]) -> Job | None:
        connection = _connection()
        with prepared_cursor(connection) as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
        if row is None:
            return None
        job = _job_from_row(row, connection)
        live.changed([job])
        return job

    def finish(
        self,
        job: Job,
        status: str,
        now: datetime,
        *,
        result: Any = None,
        error: str = "",
        progress: int | None = None,
        message: str | None = None,
    ) -> bool:
        connection = _connection()
        params = {
            "id": job.id,
            "attempt": job.attempts,
            "status": status,
            "result": _RESULT.get_db_prep_save(result, connection),
            "error": error,
            "progress": progress,
            "message": message,
            "now": now,
            "kind": ENDED_BY[status],
            "event_message": error[:500],
        }
        with prepared_cursor(connection) as cursor:
            cursor.execute(FINISH_SQL, params)
            ended = cursor.fetchone()
            if ended is None:
                return False
        # Whether jobs wait on it, told by the statement that ended it: the follow-up
        # looks for them only then (jobs/dependencies.py).
        job.has_dependents = ended[0]
        if progress is None or message is None:
            live.changed_ids([job.id])  # the row keeps values this run does not hold
        else:
            live.changed([job], status=status, progress=progress, message=message, updated_at=now)
        return True

    def schedule_retry(
        self, job: Job, now: datetime, *, run_at: datetime, error: str, delay: float
    ) -> bool:
        params = {
            "id": job.id,
            "attempt": job.attempts,
            "run_at": run_at,
            "error": error,
            "message": f"Retrying in {delay:g}s",
            "now": now,
            "event_message": f"{error[:400]} — retry in {delay:g}s"[:500],
        }
        with prepared_cursor(_connection()) as cursor:
            cursor.execute(RETRY_SQL, params)
            if cursor.rowcount <= 0:
                return False
        live.changed_ids([job.id])
        return True

    def status_row(
        self, job_id: Any, *, now: datetime | None = None, ahead_up_to: int | None = None
    ) -> dict | None:
        # psycopg returns the values as Python types: no ORM needed to read them.
        if ahead_up_to is None:
            with _connection().cursor() as cursor:
                cursor.execute(STATUS_SQL, [job_id])
                found = cursor.fetchone()
            return dict(zip(POLLED_FIELDS, found, strict=True)) if found else None
        params = {"id": job_id, "now": now or timezone.now(), "up_to": ahead_up_to}
        with prepared_cursor(_connection()) as cursor:
            cursor.execute(STATUS_LINE_SQL, params)
            found = cursor.fetchone()
        if not found:
            return None
        *fields, higher, same = found
        row = dict(zip(POLLED_FIELDS, fields, strict=True))
        row["ahead"] = None if higher is None else min(higher + same, ahead_up_to)
        return row

    def count_ahead(
        self, queue: str, priority: int, created_at: datetime, now: datetime, *, up_to: int
    ) -> int:
        # One prepared statement: the status read of a queued job pays no planning.
        params = {
            "queue": queue,
            "priority": priority,
            "created_at": created_at,
            "now": now,
            "up_to": up_to,
        }
        with prepared_cursor(_connection()) as cursor:
            cursor.execute(COUNT_AHEAD_SQL, params)
            higher, same = cursor.fetchone()
        return min(higher + same, up_to)

    def active_count(self, owner, *, up_to: int) -> int:
        with _connection().cursor() as cursor:
            cursor.execute(ACTIVE_COUNT_SQL, [owner.pk, Status.QUEUED, Status.RUNNING, up_to])
            return cursor.fetchone()[0]

    def _add_events_at(
        self, cursor, kind: str, rows: list[tuple[Any, str, int]], now: datetime
    ) -> None:
        if not rows:
            return
        self._publish_change(kind, [job_id for job_id, _, _ in rows])
        ids, texts, attempts = zip(*rows, strict=True)
        if len(set(texts)) == 1 and len(set(attempts)) == 1:
            cursor.execute(
                ADD_EVENT + f"SELECT id, %s, %s, %s, %s FROM unnest({UUIDS}) AS id",
                (kind, texts[0], attempts[0], now, _joined(ids)),
            )
            return
        cursor.execute(
            ADD_EVENT + "SELECT job_id, %s, message, attempt, %s "
            f"FROM unnest({UUIDS}, %s::text[], %s::int[]) AS e(job_id, message, attempt)",
            (kind, now, _joined(ids), list(texts), list(attempts)),
        )


_RESULT = Job._meta.get_field("result")


def _connection():
    return connections[Job.objects.db]


class _PreparingCursor(psycopg.Cursor):
    """Binds parameters on the server and has PostgreSQL plan each statement once per
    connection (Django's own cursors bind on the client, so every run is parsed and
    planned anew)."""

    def execute(self, query, params=None, *, prepare=None, binary=None):
        return super().execute(query, params, prepare=True, binary=binary)


NEVER_AUTOMATICALLY = 2**31


def prepared_cursor(connection) -> CursorWrapper:
    """A cursor for the statements every job runs: as prepared statements they cost
    PostgreSQL half the CPU (bench/). JOBS_PREPARED_STATEMENTS=0 turns them off for
    connection poolers that cannot keep prepared statements (PgBouncer before 1.21 in
    transaction mode). Any other database: its own cursor."""
    if connection.vendor != "postgresql" or not settings.JOBS_PREPARED_STATEMENTS:
        return connection.cursor()
    connection.ensure_connection()
    if connection.connection.prepare_threshold is None:
        # Django turns psycopg's automatic preparing off; a threshold is needed for any
        # preparing at all. Django's own cursors bind on the client and never prepare,
        # so this prepares just what a _PreparingCursor runs.
        connection.connection.prepare_threshold = NEVER_AUTOMATICALLY
    cursor = _PreparingCursor(connection.connection)
    if connection.queries_logged:
        return connection.make_debug_cursor(cursor)
    return connection.make_cursor(cursor)


def _job_from_row(row, connection) -> Job:
    values = [
        f.from_db_value(value, None, connection) if hasattr(f, "from_db_value") else value
        for f, value in zip(_FIELDS, row, strict=True)
    ]
    return Job.from_db(Job.objects.db, [f.attname for f in _FIELDS], values)


def _copy_value(field, job: Job) -> Any:
    value = getattr(job, field.attname)
    if value is not None and isinstance(field, JSONField):
        return json.dumps(value, cls=field.encoder)
    return value


def _joined(ids) -> str:
    return ",".join(str(i) for i in ids)


@cache
def job_store() -> JobStore:
    """The store for the jobs' database."""
    if _connection().vendor == "postgresql":
        return PostgresJobStore()
    return JobStore()
