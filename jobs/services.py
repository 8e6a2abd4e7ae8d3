"""The job engine's public operations: the one way in (`enqueue`), dispatch, cancel,
retry, and the sweepers that make the database row the source of truth."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, connections, transaction
from django.db.models import Count, Q, QuerySet
from django.utils import timezone
from kombu.exceptions import KombuError
from redis import RedisError
from rest_framework import serializers

from . import broker_loss, messages, registry, sql, worker_loss
from .errors import IdempotencyConflict, InvalidTransition, TooManyActiveJobs
from .models import (
    FINISHED_STATUSES,
    RETRYABLE_STATUSES,
    EventKind,
    Job,
    JobEvent,
    Priority,
    Status,
    WorkerHeartbeat,
)
from .visibility import one_line_error

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Enqueued:
    job: Job
    created: bool


@dataclass
class JobSpec:
    """One job to create: what `enqueue_many` takes, one per job."""

    type: str
    payload: dict[str, Any] | None = None
    idempotency_key: str | None = None
    priority: str = "normal"
    run_at: datetime | None = None


# --- creating jobs -------------------------------------------------------------------


def validate_payload(type_name: str, payload: dict[str, Any] | None) -> dict[str, Any]:
    """Validate `payload` with the type's serializer and return it as plain JSON data.

    Raises `registry.UnknownJobType` or a DRF `ValidationError` naming each bad field.
    """
    jt = registry.get(type_name)
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise serializers.ValidationError({"payload": ["Must be a JSON object."]})
    serializer = jt.serializer(data=payload)
    if not serializer.is_valid():
        raise serializers.ValidationError({"payload": serializer.errors})
    return json.loads(json.dumps(serializer.validated_data, cls=DjangoJSONEncoder))


def enqueue(
    type_name: str,
    payload: dict[str, Any] | None = None,
    *,
    owner=None,
    idempotency_key: str | None = None,
    priority: str = "normal",
    run_at: datetime | None = None,
) -> Enqueued:
    """Create a job and send it to its queue once the surrounding transaction commits.

    With an `idempotency_key`, a repeat of the same request returns the existing job
    (created=False) and a repeat with other data raises `IdempotencyConflict`.
    """
    spec = JobSpec(type_name, payload, idempotency_key, priority, run_at)
    job = _build_job(spec, validate_payload(type_name, payload), owner)
    _mark_for_sending([job], timezone.now())
    if not idempotency_key:
        # One statement writes the row and its events: no transaction of our own needed.
        sql.insert_job(job, _created_message(job))
        transaction.on_commit(lambda: _send_new([job]))
        return Enqueued(job, created=True)
    with transaction.atomic():
        existing = _existing_for_key(owner, idempotency_key)
        if existing:
            return Enqueued(_same_request_or_conflict(existing, job), created=False)
        try:
            with transaction.atomic():
                sql.insert_job(job, _created_message(job))
        except IntegrityError:
            # A concurrent request with the same key committed first.
            existing = _existing_for_key(owner, idempotency_key)
            if existing is None:
                raise
            return Enqueued(_same_request_or_conflict(existing, job), created=False)
        transaction.on_commit(lambda: _send_new([job]))
    return Enqueued(job, created=True)


def enqueue_many(specs: Sequence[JobSpec], *, owner=None) -> list[Enqueued]:
    """Create many jobs in one transaction and dispatch them in broker batches.

    Every spec is validated first; if any is invalid, a `ValidationError` keyed by
    the spec's index is raised and nothing is written.
    """
    errors: dict[str, Any] = {}
    jobs: list[Job] = []
    keys_seen: set[str] = set()
    validated: dict[tuple[str, str], str] = {}
    for index, spec in enumerate(specs):
        try:
            payload = _validate_once(spec, validated)
            if spec.idempotency_key in keys_seen:
                raise serializers.ValidationError(
                    {"idempotency_key": ["Repeated within this request."]}
                )
            if spec.idempotency_key:
                keys_seen.add(spec.idempotency_key)
            jobs.append(_build_job(spec, payload, owner))
        except registry.UnknownJobType as exc:
            errors[str(index)] = {"type": [str(exc)]}
        except serializers.ValidationError as exc:
            errors[str(index)] = exc.detail
    if errors:
        raise serializers.ValidationError({"jobs": errors})

    results: list[Enqueued] = []
    with transaction.atomic():
        keyed = {j.idempotency_key: j for j in jobs if j.idempotency_key}
        existing = _existing_for_keys(owner, list(keyed))
        new_jobs = []
        for job in jobs:
            if job.idempotency_key in existing:
                found = existing[job.idempotency_key]
                results.append(Enqueued(_same_request_or_conflict(found, job), created=False))
            else:
                new_jobs.append(job)
                results.append(Enqueued(job, created=True))
        now = timezone.now()
        _mark_for_sending(new_jobs, now)
        sql.insert_jobs(new_jobs)
        sql.add_events(EventKind.CREATED, [(j.id, _created_message(j), 0) for j in new_jobs], now)
        sent = [job for job in new_jobs if job.dispatched_at]
        sql.add_events(EventKind.DISPATCHED, [(j.id, "", 0) for j in sent], now)
        transaction.on_commit(lambda: _send_new(sent))
    return results


def _validate_once(spec: JobSpec, validated: dict[tuple[str, str], str]) -> dict[str, Any]:
    """validate_payload, run once per distinct (type, payload) of a bulk request."""
    try:
        key = (spec.type, json.dumps(spec.payload, sort_keys=True))
    except (TypeError, ValueError):  # not plain JSON: validate it on its own
        return validate_payload(spec.type, spec.payload)
    if key not in validated:
        validated[key] = json.dumps(validate_payload(spec.type, spec.payload))
    return json.loads(validated[key])


def _build_job(spec: JobSpec, payload: dict[str, Any], owner) -> Job:
    jt = registry.get(spec.type)
    try:
        priority = Priority.from_name(spec.priority)
    except KeyError:
        raise serializers.ValidationError(
            {"priority": [f"Must be one of: {', '.join(p.label for p in Priority)}."]}
        ) from None
    return Job(
        type=jt.name,
        owner=owner,
        payload=payload,
        queue=jt.queue,
        max_attempts=jt.max_attempts,
        priority=priority,
        idempotency_key=spec.idempotency_key or None,
        run_at=spec.run_at,
    )


def _key_filter(owner) -> Q:
    return Q(owner=owner) if owner is not None else Q(owner__isnull=True)


def _existing_for_key(owner, key: str) -> Job | None:
    return Job.objects.filter(_key_filter(owner), idempotency_key=key).first()


def _existing_for_keys(owner, keys: list[str]) -> dict[str, Job]:
    if not keys:
        return {}
    found = Job.objects.filter(_key_filter(owner), idempotency_key__in=keys)
    return {j.idempotency_key: j for j in found}


def _same_request_or_conflict(existing: Job, requested: Job) -> Job:
    if existing.type != requested.type or existing.payload != requested.payload:
        raise IdempotencyConflict(existing)
    return existing


def _created_message(job: Job) -> str:
    if job.run_at:
        return f"Created, to run at {job.run_at.isoformat()}"
    return "Created"


def check_room_for(user, specs: Sequence[JobSpec]) -> None:
    """Raise `TooManyActiveJobs` if creating `specs` would take a non-staff user past
    JOBS_USER_MAX_ACTIVE queued and running jobs. Repeats of earlier requests (same
    idempotency key) create nothing and do not count.

    A soft cap: two requests at the same moment may both pass the check.
    """
    limit = settings.JOBS_USER_MAX_ACTIVE
    if not limit or user.is_staff:
        return
    active = active_job_count(user, up_to=limit)
    if active + len(specs) <= limit:
        return
    keys = [s.idempotency_key for s in specs if s.idempotency_key]
    new = len(specs) - len(_existing_for_keys(user, keys))
    if new and active + new > limit:
        raise TooManyActiveJobs(limit=limit, active=active, requested=new)


# Counted for every job a user creates through the API. An index-only scan of
# job_owner_status (owner_id, status, ...) reads just the owner's active entries, and
# the LIMIT stops it at the cap. Written out once: building it with the ORM took
# longer than running it.
ACTIVE_COUNT_SQL = (
    f'SELECT count(*) FROM (SELECT 1 FROM "{Job._meta.db_table}" '
    "WHERE owner_id = %s AND status IN (%s, %s) LIMIT %s) AS active"
)


def active_job_count(owner, *, up_to: int) -> int:
    """How many of `owner`'s jobs are queued or running, counting no further than `up_to`."""
    with connections[Job.objects.db].cursor() as cursor:
        cursor.execute(ACTIVE_COUNT_SQL, [owner.pk, Status.QUEUED, Status.RUNNING, up_to])
        return cursor.fetchone()[0]


def enqueue_for_schedule(
    schedule_name: str | None,
    type_name: str,
    payload: dict[str, Any] | None = None,
    *,
    priority: str = "normal",
    fired_at: datetime | None = None,
    run_id: str | None = None,
) -> Job:
    """Enqueue the job a schedule asked for.

    A firing of Beat (`fired_at`, when Beat fired it) is keyed by the schedule's window,
    so that two Beats, a restarted Beat or a redelivered message create one job per
    window. Any other run (the admin's "Run selected tasks", a call from code) is keyed
    by `run_id`, the id of its message, so a redelivered message still creates one job
    and the run never suppresses the window's scheduled job.
    """
    key = schedule_key(schedule_name, fired_at, run_id)
    try:
        return enqueue(type_name, payload, idempotency_key=key, priority=priority).job
    except IdempotencyConflict:
        # The schedule's payload changed within the window: the window already has its job.
        return _existing_for_key(None, key)


def schedule_key(
    schedule_name: str | None, fired_at: datetime | None, run_id: str | None
) -> str | None:
    """A firing's window key, else a key of the run's own (None for no schedule)."""
    from . import schedules

    if not schedule_name:
        return None
    timing = schedules.schedule_of(schedule_name) if fired_at else None
    if timing is not None:
        return schedules.window_key(schedule_name, schedules.window_for(timing, fired_at))
    return schedules.manual_run_key(schedule_name, run_id or uuid.uuid4().hex)


def enqueue_startup_jobs(now: datetime | None = None) -> list[Job]:
    """Enqueue the schedules marked to run when a worker starts, unless one is already
    waiting or running; workers starting together share one job per minute."""
    from . import schedules

    if not settings.JOBS_STARTUP_JOBS:
        return []
    now = now or timezone.now()
    jobs = []
    for schedule in schedules.declared():
        if not (schedule.job and schedule.run_at_startup and schedule.is_enabled()):
            continue
        pending = Job.objects.filter(
            type=schedule.job,
            owner__isnull=True,
            status__in=[Status.QUEUED, Status.RUNNING],
            idempotency_key__startswith=f"schedule:{schedule.name}:",
        )
        if pending.exists():
            continue
        key = f"schedule:{schedule.name}:startup:{now.strftime('%Y-%m-%dT%H:%M')}"
        jobs.append(enqueue(schedule.job, schedule.payload, idempotency_key=key).job)
    return jobs


# --- dispatch ------------------------------------------------------------------------


def _mark_for_sending(jobs: Sequence[Job], now: datetime) -> None:
    """Mark new jobs that go to the broker right away as dispatched before they are
    written, so their row and their `dispatched` event are part of the same INSERT: a
    round trip and a commit fewer than marking them once sent. `_send_new` takes the
    mark back if sending fails; if the process dies between commit and send, the
    dispatch sweeper resends them after JOBS_REDISPATCH_AFTER. While the broker's
    breaker is open nothing is marked: the dispatch sweeper sends them."""
    if messages.publishing_paused():
        return
    horizon = now + timedelta(seconds=settings.JOBS_BROKER_DELAY_MAX)
    for job in jobs:
        if job.run_at is None or job.run_at <= horizon:
            job.dispatched_at = now


def _send_new(jobs: Sequence[Job]) -> None:
    """Send the messages of new jobs already marked dispatched (the others wait for
    the dispatch sweeper)."""
    jobs = [job for job in jobs if job.dispatched_at]
    if not jobs:
        return
    try:
        messages.publish(jobs, timezone.now())
    except Exception as exc:  # the broker is down or refused: the sweeper sends them later
        log.warning("Dispatch of %d new job(s) failed, left for the sweeper: %s", len(jobs), exc)
        sql.unmark_dispatched(jobs)
        for job in jobs:
            job.dispatched_at = None


def dispatch(jobs: Iterable[Job], now: datetime | None = None) -> int:
    """Send one message per job, batched into one broker round trip per 1,000 jobs.

    On success the rows are marked dispatched; if the broker cannot be reached they
    stay undispatched and the dispatch sweeper sends them later. Jobs due further
    ahead than `JOBS_BROKER_DELAY_MAX` are not sent: they wait in the database until
    the sweeper finds them due. Returns how many were sent.
    """
    now = now or timezone.now()
    horizon = now + timedelta(seconds=settings.JOBS_BROKER_DELAY_MAX)
    jobs = [j for j in jobs if j.run_at is None or j.run_at <= horizon]
    if not jobs:
        return 0
    try:
        messages.publish(jobs, now)
    except Exception as exc:  # the broker is down or refused: the sweeper sends them later
        log.warning("Dispatch of %d job(s) failed, left for the sweeper: %s", len(jobs), exc)
        return 0
    for job in jobs:
        job.dispatched_at = now
    sql.mark_dispatched(jobs, now)
    return len(jobs)


# --- cancel and retry ----------------------------------------------------------------


def cancel(job: Job) -> Job:
    """Cancel a queued job at once; ask a running one to stop at its next checkpoint."""
    now = timezone.now()
    if Job.objects.filter(id=job.id, status=Status.QUEUED).update(
        status=Status.CANCELLED, finished_at=now, updated_at=now, message="Cancelled"
    ):
        JobEvent.objects.create(job_id=job.id, kind=EventKind.CANCELLED, attempt=job.attempts)
    elif Job.objects.filter(id=job.id, status=Status.RUNNING, cancel_requested=False).update(
        cancel_requested=True, updated_at=now, message="Cancelling"
    ):
        JobEvent.objects.create(
            job_id=job.id, kind=EventKind.CANCEL_REQUESTED, attempt=job.attempts
        )
    job.refresh_from_db()
    if job.status in FINISHED_STATUSES and job.status != Status.CANCELLED:
        raise InvalidTransition(job, "cancel")
    return job


def retry(job: Job) -> Job:
    """Put a failed or cancelled job back in the queue with a fresh round of attempts."""
    with transaction.atomic():
        if not _reset_for_retry(Job.objects.filter(id=job.id)):
            job.refresh_from_db()
            raise InvalidTransition(job, "retry")
        job.refresh_from_db()
        JobEvent.objects.create(job_id=job.id, kind=EventKind.RETRIED, message="Manual retry")
        transaction.on_commit(lambda: dispatch([job]))
    return job


def retry_many(jobs) -> int:
    """Retry every failed or cancelled job in the queryset; returns how many."""
    with transaction.atomic():
        ids = list(jobs.filter(status__in=RETRYABLE_STATUSES).values_list("id", flat=True))
        retried = list(Job.objects.filter(id__in=ids, status__in=RETRYABLE_STATUSES))
        _reset_for_retry(Job.objects.filter(id__in=ids))
        for job in retried:
            job.status = Status.QUEUED
            job.attempts = 0
        JobEvent.objects.bulk_create(
            [JobEvent(job=j, kind=EventKind.RETRIED, message="Manual retry") for j in retried]
        )
        transaction.on_commit(lambda: dispatch(retried))
    return len(retried)


def _reset_for_retry(queryset) -> int:
    return queryset.filter(status__in=RETRYABLE_STATUSES).update(
        status=Status.QUEUED,
        attempts=0,
        stalled_count=0,
        cancel_requested=False,
        error="",
        result=None,
        progress=0,
        message="",
        run_at=None,
        dispatched_at=None,
        heartbeat_at=None,
        started_at=None,
        finished_at=None,
        updated_at=timezone.now(),
    )


# --- sweepers ------------------------------------------------------------------------


def dispatch_due(now: datetime | None = None) -> int:
    """Send queued jobs that have no message in the broker: never dispatched (the
    broker was down), delayed jobs whose time is near, and jobs whose message has
    waited so long it was probably lost."""
    now = now or timezone.now()
    horizon = now + timedelta(seconds=settings.JOBS_BROKER_DELAY_MAX)
    lost_before = now - timedelta(seconds=settings.JOBS_REDISPATCH_AFTER)
    # A fresh row is dispatched by its own commit hook; give that a moment first.
    settled_before = now - timedelta(seconds=2)
    never_sent = Q(dispatched_at__isnull=True, updated_at__lt=settled_before) & (
        Q(run_at__isnull=True) | Q(run_at__lte=horizon)
    )
    lost = Q(dispatched_at__lt=lost_before) & (Q(run_at__isnull=True) | Q(run_at__lt=lost_before))
    due = (
        Job.objects.filter(status=Status.QUEUED)
        .filter(never_sent | lost)
        .order_by("-priority", "created_at")[: settings.JOBS_SWEEP_BATCH]
    )
    return dispatch(due, now=now)


def recover_stalled(now: datetime | None = None) -> int:
    """Return running jobs whose heartbeat stopped (their worker died) to the queue,
    or fail them once they have stalled `JOBS_MAX_STALLED` times. Returns how many
    were recovered or failed."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.JOBS_LOCK_DURATION)
    stalled = Job.objects.filter(status=Status.RUNNING, heartbeat_at__lt=cutoff)[
        : settings.JOBS_SWEEP_BATCH
    ]
    recovered: list[Job] = []
    handled = 0
    for job in stalled:
        # Conditional on the values we read, so a worker that heartbeats or finishes
        # right now keeps its job.
        held = Job.objects.filter(
            id=job.id, status=Status.RUNNING, attempts=job.attempts, heartbeat_at__lt=cutoff
        )
        outcome = _requeue_stalled(
            job,
            held,
            now,
            event=f"No heartbeat since {job.heartbeat_at.isoformat()}; back in the queue",
            cause="the worker running it stopped sending heartbeats",
            message="Recovered after its worker stopped",
        )
        if outcome == Status.QUEUED:
            recovered.append(job)
        handled += outcome is not None
    dispatch(recovered, now=now)
    return handled


def recover_lost(job_id: str, attempt: int, reason: str, *, send: bool = True) -> bool:
    """Requeue a job whose worker process died holding `attempt` of it (counted as a
    stall, as the sweeper does), only if that attempt still holds it, and send its
    message unless `send` is false (the dispatch sweeper then does). True when the
    job went back to the queue or failed after too many stalls."""
    now = timezone.now()
    held = Job.objects.filter(id=job_id, status=Status.RUNNING, attempts=attempt)
    job = held.first()
    if job is None:
        return False
    outcome = _requeue_stalled(
        job,
        held,
        now,
        event=f"{reason}; back in the queue",
        cause="its worker process died",
        message="Recovered after its worker process died",
    )
    if outcome == Status.QUEUED and send:
        dispatch([job], now=now)
    return outcome is not None


def _requeue_stalled(
    job: Job, held: QuerySet[Job], now: datetime, *, event: str, cause: str, message: str
) -> str | None:
    """Put a stalled job back in the queue, or fail it once it has stalled
    `JOBS_MAX_STALLED` times, if `held` still matches it. Returns the new status."""
    if job.stalled_count >= settings.JOBS_MAX_STALLED:
        error = f"Stalled {job.stalled_count + 1} times: {cause}."
        if not held.update(status=Status.FAILED, error=error, finished_at=now, updated_at=now):
            return None
        JobEvent.objects.create(
            job_id=job.id, kind=EventKind.FAILED, message=error, attempt=job.attempts
        )
        return Status.FAILED
    if not held.update(
        status=Status.QUEUED,
        stalled_count=job.stalled_count + 1,
        dispatched_at=None,
        heartbeat_at=None,
        run_at=None,
        message=message,
        updated_at=now,
    ):
        return None
    JobEvent.objects.create(
        job_id=job.id,
        kind=EventKind.RECOVERED,
        message=event[:500],
        attempt=job.attempts,
    )
    job.status, job.run_at = Status.QUEUED, None
    return Status.QUEUED


def hand_back(job_ids: Iterable[str], reason: str) -> int:
    """Return running jobs to the queue at once (their worker is shutting down and will
    not finish them). The attempt number stays, so the old run can no longer write:
    it stops at its next checkpoint. Returns how many went back."""
    now = timezone.now()
    handed: list[Job] = []
    for job in Job.objects.filter(id__in=list(job_ids), status=Status.RUNNING):
        if Job.objects.filter(id=job.id, status=Status.RUNNING, attempts=job.attempts).update(
            status=Status.QUEUED,
            dispatched_at=None,
            heartbeat_at=None,
            run_at=None,
            message="Handed back by a worker shutting down",
            updated_at=now,
        ):
            JobEvent.objects.create(
                job_id=job.id, kind=EventKind.RECOVERED, message=reason, attempt=job.attempts
            )
            job.status, job.run_at = Status.QUEUED, None
            handed.append(job)
    dispatch(handed, now=now)
    return len(handed)


def resend_after_broker_loss(now: datetime | None = None, budget: float | None = None) -> int:
    """Send again the queued jobs dispatched to a broker that has lost its messages
    since (restarted without its data, flushed, failed over: see jobs/broker_loss.py),
    JOBS_SWEEP_BATCH at a time for up to `budget` seconds (one sweep interval); the
    next sweep goes on with what is left. Returns how many were sent."""
    now = now or timezone.now()
    budget = max(1.0, settings.JOBS_SWEEP_INTERVAL) if budget is None else budget
    try:
        with broker_loss.broker_redis() as client:
            if client is None:
                return 0
            resend_before = broker_loss.resend_due(client, now)
            if resend_before is None:
                return 0
            hold_for = max(settings.JOBS_LOCK_DURATION, 2 * budget)
            with broker_loss.resend_turn(client, hold_for) as mine:
                if not mine:
                    return 0
                sent, done = _resend_dispatched_before(resend_before, time.monotonic() + budget)
                if done:
                    broker_loss.finish_resend(client, resend_before)
    except (KombuError, RedisError, OSError) as exc:
        log.warning("Could not check whether the broker lost its messages: %s", exc)
        return 0
    if sent:
        log.warning(
            "Sent %d queued job(s) again: the broker lost its messages or is a new one "
            "(restarted without its data, flushed, failed over)",
            sent,
        )
    return sent


def _resend_dispatched_before(resend_before: datetime, deadline: float) -> tuple[int, bool]:
    """Send the queued jobs dispatched before `resend_before` until none is left (True)
    or `deadline` (time.monotonic) has passed or the broker fails (False)."""
    sent = 0
    while True:
        # Marked dispatched at `resend_before` or later, so no batch is selected again
        # even on a host whose clock is behind the one that noticed the change.
        now = max(timezone.now(), resend_before)
        horizon = now + timedelta(seconds=settings.JOBS_BROKER_DELAY_MAX)
        batch = list(
            Job.objects.filter(status=Status.QUEUED, dispatched_at__lt=resend_before)
            .filter(Q(run_at__isnull=True) | Q(run_at__lte=horizon))
            .order_by("-priority", "created_at")[: settings.JOBS_SWEEP_BATCH]
        )
        if not batch:
            return sent, True
        count = dispatch(batch, now=now)
        sent += count
        if count < len(batch):
            return sent, False
        if len(batch) < settings.JOBS_SWEEP_BATCH:
            return sent, True
        if time.monotonic() >= deadline:
            return sent, False


def restore_from_lost_workers(now: datetime | None = None) -> int:
    """Put back in their queues the messages that workers which stopped writing their
    liveness heartbeat had taken and not finished (see jobs/worker_loss.py), at most
    JOBS_SWEEP_BATCH per worker per sweep. Returns how many were put back."""
    now = now or timezone.now()
    try:
        with worker_loss.broker_channel() as channel:
            if channel is None:
                return 0
            hold_for = max(2.0, 2 * settings.JOBS_SWEEP_INTERVAL)
            with worker_loss.restore_turn(channel, hold_for) as mine:
                if not mine:
                    return 0
                restored = sum(
                    worker_loss.restore(channel, index, before, limit=settings.JOBS_SWEEP_BATCH)
                    for index, before in _indexes_of_lost_workers(channel, now)
                )
    except (KombuError, RedisError, OSError) as exc:
        log.warning("Could not put back the messages of lost workers: %s", exc)
        return 0
    if restored:
        log.warning("Put back %d message(s) taken by workers that stopped", restored)
    return restored


def _indexes_of_lost_workers(channel, now: datetime) -> list[tuple[str, float]]:
    """(index, delivered before) of each worker with no fresh heartbeat: what it took
    before its heartbeat went stale, or, with no heartbeat row (never written, or
    deleted by a clean stop), what is older than the timeout. Deliveries after that are
    a new process's under the same hostname, not yet beating."""
    timeout = timedelta(seconds=settings.WORKER_HEARTBEAT_TIMEOUT)
    hostnames = worker_loss.indexed_workers(channel)
    seen = dict(
        WorkerHeartbeat.objects.filter(hostname__in=hostnames).values_list("hostname", "seen_at")
    )
    lost = []
    for hostname in hostnames:
        seen_at = seen.get(hostname)
        if seen_at is None:
            lost.append((worker_loss.index_key(hostname), (now - timeout).timestamp()))
        elif seen_at < now - timeout:
            lost.append((worker_loss.index_key(hostname), (seen_at + timeout).timestamp()))
    # Workers from before per-worker indexes: what they held longer than the timeout.
    lost.append((worker_loss.SHARED_INDEX, (now - timeout).timestamp()))
    return lost


def sweep() -> dict[str, int]:
    """One pass of the sweepers, as Beat runs it every few seconds. Lost messages are
    resent first: a job the others send now needs no second message; then the
    messages lost workers held go back to their queues."""
    resent = resend_after_broker_loss()
    restored = restore_from_lost_workers()
    return {
        "resent": resent,
        "restored": restored,
        "recovered": recover_stalled(),
        "dispatched": dispatch_due(),
    }


# --- retention -----------------------------------------------------------------------

PURGE_BATCH = 1000


def purge_finished(now: datetime | None = None) -> dict[str, int]:
    """Delete finished jobs past their type's retention: older than its age limit, or
    beyond the newest N. Cancelled jobs follow the failed policy. Returns deletions per
    type; events and effect reservations go with their job."""
    now = now or timezone.now()
    deleted: dict[str, int] = {}
    for job_type in registry.all_types():
        policy = job_type.retention
        count = _purge(
            job_type.name, [Status.SUCCEEDED], now - policy.succeeded_for, policy.succeeded_max
        )
        count += _purge(
            job_type.name,
            [Status.FAILED, Status.CANCELLED],
            now - policy.failed_for,
            policy.failed_max,
        )
        if count:
            deleted[job_type.name] = count
    return deleted


def _purge(type_name: str, statuses: list[str], older_than: datetime, keep: int | None) -> int:
    finished = Job.objects.filter(type=type_name, status__in=statuses)
    if keep is not None:
        # The finished_at of the newest row beyond `keep`: that row and all older ones go.
        beyond_keep = finished.order_by("-finished_at").values_list("finished_at", flat=True)
        cutoff = next(iter(beyond_keep[keep : keep + 1]), None)
        if cutoff is not None and cutoff >= older_than:
            older_than = cutoff + timedelta(microseconds=1)
    total = 0
    while True:
        # Oldest first, the purge index's order: the model's default order (-created_at)
        # would sort every expired row for each batch.
        expired = finished.filter(finished_at__lt=older_than).order_by("finished_at")
        ids = list(expired.values_list("id", flat=True)[:PURGE_BATCH])
        if not ids:
            return total
        JobEvent.objects.filter(job_id__in=ids).delete()
        total += Job.objects.filter(id__in=ids).delete()[1].get(Job._meta.label, 0)


# --- reading -------------------------------------------------------------------------


def stats(jobs) -> dict[str, Any]:
    """Counts by status and by type, and recent throughput, over a queryset of jobs."""
    by_status = Counter({s.value: 0 for s in Status})
    for row in jobs.order_by().values("status").annotate(n=Count("id")):
        by_status[row["status"]] = row["n"]
    by_type: dict[str, dict[str, int]] = {}
    for row in jobs.order_by().values("type", "status").annotate(n=Count("id")):
        by_type.setdefault(row["type"], {})[row["status"]] = row["n"]
    now = timezone.now()
    finished = jobs.filter(status__in=FINISHED_STATUSES)
    return {
        "by_status": dict(by_status),
        "by_type": by_type,
        "throughput": {
            "finished_last_minute": finished.filter(
                finished_at__gte=now - timedelta(minutes=1)
            ).count(),
            "finished_last_hour": finished.filter(
                finished_at__gte=now - timedelta(hours=1)
            ).count(),
        },
    }


@dataclass
class Digest:
    """One user's jobs finished since a moment, for the daily e-mail."""

    user_id: int
    username: str
    email: str
    counts: dict[str, int]
    failures: list[Job]

    def text(self, hours: int) -> str:
        lines = [f"Hello {self.username},", "", f"Your jobs in the last {hours} hours:"]
        lines += [f"  {status}: {n}" for status, n in sorted(self.counts.items())]
        if self.failures:
            lines += ["", "Failed:"]
            lines += [
                f"  {j.type} {j.id}: {one_line_error(j.error) or j.message}" for j in self.failures
            ]
        return "\n".join(lines) + "\n"


def job_digests(since: datetime, failures_listed: int = 20) -> list[Digest]:
    """A digest for each user with an e-mail address whose jobs finished since `since`."""
    finished = Job.objects.filter(finished_at__gte=since, owner__isnull=False).exclude(
        owner__email=""
    )
    per_user: dict[int, Digest] = {}
    rows = (
        finished.order_by()
        .values("owner_id", "owner__username", "owner__email", "status")
        .annotate(n=Count("id"))
    )
    for row in rows:
        digest = per_user.setdefault(
            row["owner_id"],
            Digest(row["owner_id"], row["owner__username"], row["owner__email"], {}, []),
        )
        digest.counts[row["status"]] = row["n"]
    for digest in per_user.values():
        if digest.counts.get(Status.FAILED):
            digest.failures = list(
                finished.filter(owner_id=digest.user_id, status=Status.FAILED).order_by(
                    "-finished_at"
                )[:failures_listed]
            )
    return sorted(per_user.values(), key=lambda d: d.user_id)
