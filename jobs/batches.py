"""Batches: jobs created together and followed as one, each still a job of its own row.

A batch is created with all its jobs in one transaction (`create_batch`). When none of
its jobs is queued or running any more it settles, exactly once (`settle`): its state
becomes succeeded (every job succeeded), failed (a job failed or expired), or cancelled
(the batch was cancelled, or a job was, and none failed), and its callback jobs are
created in the same transaction: `on_success` only when it succeeded, `on_complete`
however it ended. The batch row's lock and its state make the settling happen once,
whether the ends of its last jobs are offered by two workers at the same moment or by
the sweeper after a crash (the "batches" follow-up, jobs/followups.py).

A callback job gets the payload its spec gave, unchanged; the batch records the ids of
its callback jobs (`success_job`, `complete_job`), and `batch_of_callback(job)` finds
the batch a callback job was created for. Once settled, a batch stays settled: a job of
it retried by hand afterwards runs on its own.

`batch_finished` is sent once a settling is committed, with the batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, Exists, OuterRef, Q, Sum
from django.dispatch import Signal
from django.utils import timezone
from rest_framework import serializers

from . import audit, followups, live, registry, services
from .errors import IdempotencyConflict
from .models import ACTIVE_STATUSES, FINISHED_STATUSES, Batch, BatchState, Job, Priority, Status
from .services import JobSpec
from .store import job_store
from .visibility import one_line_error

log = logging.getLogger(__name__)

# Sent with `batch=` once a batch's settling is committed: for notifications, webhooks.
batch_finished = Signal()

# The failed jobs a summary names; the counts tell how many there are in all.
FAILED_JOBS_SHOWN = 100
# A callback is created when its batch ends: a time or a key of its own means nothing.
NOT_FOR_CALLBACKS = ("idempotency_key", "run_at", "expires_at")
NOT_RUN = (Status.FAILED, Status.EXPIRED)


class BatchNotRunning(Exception):
    """An operation that only a running batch allows."""

    def __init__(self, batch: Batch, action: str):
        super().__init__(f"Cannot {action} a batch that is {batch.state}.")
        self.batch = batch
        self.action = action


class BatchIdempotencyConflict(Exception):
    def __init__(self, batch: Batch):
        super().__init__(
            f"Idempotency key {batch.idempotency_key!r} was already used for a different "
            f"batch ({batch.id})."
        )
        self.batch = batch


@dataclass(frozen=True)
class CreatedBatch:
    batch: Batch
    created: bool


# --- creating ------------------------------------------------------------------------


def create_batch(
    specs: Sequence[JobSpec],
    *,
    owner=None,
    on_success: JobSpec | None = None,
    on_complete: JobSpec | None = None,
    description: str = "",
    idempotency_key: str | None = None,
) -> Batch:
    """Create a batch of `specs` and its jobs in one transaction; their messages are
    sent once it commits. `on_success` and `on_complete` are created when the batch
    ends (see the module). Any invalid part raises a `ValidationError` (the jobs keyed
    by index under "jobs") and nothing is written. With `idempotency_key`, a repeat of
    the same request returns the batch it created; another request with the key raises
    `BatchIdempotencyConflict`."""
    return add_batch(
        specs,
        owner=owner,
        on_success=on_success,
        on_complete=on_complete,
        description=description,
        idempotency_key=idempotency_key,
    ).batch


def add_batch(
    specs: Sequence[JobSpec],
    *,
    owner=None,
    on_success: JobSpec | None = None,
    on_complete: JobSpec | None = None,
    description: str = "",
    idempotency_key: str | None = None,
) -> CreatedBatch:
    """`create_batch`, saying whether the batch is new or an earlier request's."""
    callbacks = _validated(specs, on_success, on_complete, description)
    fingerprint = _fingerprint(specs, callbacks, description)
    if idempotency_key and (existing := _existing(owner, idempotency_key)):
        return _repeat_or_conflict(existing, fingerprint)
    try:
        with transaction.atomic():
            batch = Batch.objects.create(
                owner=owner,
                description=description,
                idempotency_key=idempotency_key or None,
                fingerprint=fingerprint,
                **callbacks,
            )
            services.enqueue_many(specs, owner=owner, batch=batch)
            publish_change(batch, progress=0)
    except IntegrityError:
        # A request with the same key committed first.
        if not idempotency_key or (existing := _existing(owner, idempotency_key)) is None:
            raise
        return _repeat_or_conflict(existing, fingerprint)
    return CreatedBatch(batch, created=True)


def _validated(
    specs: Sequence[JobSpec],
    on_success: JobSpec | None,
    on_complete: JobSpec | None,
    description: str,
) -> dict[str, dict | None]:
    """The callbacks as stored, once everything but the jobs' payloads (which
    `enqueue_many` checks) is known to be valid; else a ValidationError by field."""
    errors: dict[str, Any] = {}
    limit = settings.JOBS_BATCH_MAX_JOBS
    if not specs:
        errors["jobs"] = ["A batch needs at least one job."]
    elif len(specs) > limit:
        errors["jobs"] = [
            f"At most {limit} jobs in a batch (JOBS_BATCH_MAX_JOBS); this one has {len(specs)}."
        ]
    elif spec_errors := {str(i): e for i, spec in enumerate(specs) if (e := _job_errors(spec))}:
        errors["jobs"] = spec_errors
    if len(description) > Batch._meta.get_field("description").max_length:
        errors["description"] = ["At most 200 characters."]
    callbacks: dict[str, dict | None] = {}
    for name, spec in (("on_success", on_success), ("on_complete", on_complete)):
        try:
            callbacks[name] = callback_data(spec) if spec is not None else None
        except serializers.ValidationError as exc:
            errors[name] = exc.detail
    if errors:
        raise serializers.ValidationError(errors)
    return callbacks


def _job_errors(spec: JobSpec) -> dict[str, list[str]]:
    """What a batch refuses in a job spec that `enqueue_many` would take."""
    errors = {}
    if spec.idempotency_key:
        errors["idempotency_key"] = [
            "Not for a job in a batch: give the batch an idempotency key instead."
        ]
    try:
        if registry.get(spec.type).unique is not None:
            errors["type"] = [
                f"Jobs of type {spec.type!r} are unique: an active one would answer for it, "
                "outside the batch. Not for a batch."
            ]
    except registry.UnknownJobType:
        pass  # enqueue_many names it
    return errors


def callback_data(spec: JobSpec) -> dict[str, Any]:
    """A callback spec as the batch stores it, validated as a job of its own would be;
    a ValidationError by field otherwise."""
    errors = {
        name: ["Not for a callback: it is created when the batch ends."]
        for name in NOT_FOR_CALLBACKS
        if getattr(spec, name)
    }
    if errors:
        raise serializers.ValidationError(errors)
    try:
        jt = registry.get(spec.type)
    except registry.UnknownJobType as exc:
        raise serializers.ValidationError({"type": [str(exc)]}) from None
    payload = services.validate_payload(spec.type, spec.payload)
    if spec.priority not in Priority.labels:
        raise serializers.ValidationError(
            {"priority": [f"Must be one of: {', '.join(Priority.labels)}."]}
        )
    if errors := services.override_errors(jt, spec, timezone.now()):
        raise serializers.ValidationError(errors)
    return {
        "type": jt.name,
        "payload": payload,
        "priority": spec.priority,
        "max_attempts": spec.max_attempts,
        "time_limit": spec.time_limit,
    }


def _fingerprint(specs: Sequence[JobSpec], callbacks: dict, description: str) -> str:
    """What tells a repeat of a create from another request with the same key: the
    jobs' types and payloads, and the callbacks' (as a job's key compares them; times
    given relatively, such as expires_in, differ between a request and its repeat)."""
    jobs = [[spec.type, spec.payload] for spec in specs]
    ends = {name: spec and [spec["type"], spec["payload"]] for name, spec in callbacks.items()}
    data = [jobs, ends, description]
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _existing(owner, key: str) -> Batch | None:
    owned = Q(owner=owner) if owner is not None else Q(owner__isnull=True)
    return Batch.objects.filter(owned, idempotency_key=key).first()


def _repeat_or_conflict(existing: Batch, fingerprint: str) -> CreatedBatch:
    if existing.fingerprint != fingerprint:
        raise BatchIdempotencyConflict(existing)
    return CreatedBatch(existing, created=False)


# --- cancelling ----------------------------------------------------------------------


def cancel_batch(batch: Batch, *, by=None, via: str | None = None) -> Batch:
    """Cancel the batch's queued jobs at once and ask its running ones to stop; the
    batch settles as cancelled once they have (unless one failed). With `via`, recorded
    with `by` in the audit log and on each job's timeline, as a job's cancel is.
    Raises BatchNotRunning when the batch has settled already."""
    now = timezone.now()
    note = audit.describe(by, via) if via else ""
    with transaction.atomic():
        locked = Batch.objects.select_for_update().get(id=batch.id)
        if locked.state != BatchState.RUNNING:
            raise BatchNotRunning(locked, "cancel")
        locked.cancel_requested = True
        locked.save(update_fields=["cancel_requested"])
        active = Job.objects.filter(batch=locked, status__in=ACTIVE_STATUSES)
        cancelled, asked = job_store().cancel_many(active.values_list("id", flat=True), now, note)
        if via:
            audit.record(
                by,
                "cancel",
                "batch",
                locked.id,
                via=via,
                cancelled=len(cancelled),
                asked_to_stop=len(asked),
            )
        followups.jobs_ended(cancelled)
        publish_change(locked)
    # With nothing left running it ends now, so the caller sees it cancelled.
    settle(locked.id)
    locked.refresh_from_db()
    return locked


# --- settling ------------------------------------------------------------------------


def settle(batch_id: Any) -> bool:
    """Settle the batch if it is still running and none of its jobs is queued or
    running: its state, its end, its callback jobs, all in one transaction under the
    batch row's lock. True when this call settled it."""
    if Job.objects.filter(batch_id=batch_id, status__in=ACTIVE_STATUSES).exists():
        return False  # the end of those jobs settles it: no need to take the lock
    with transaction.atomic():
        batch = (
            Batch.objects.select_for_update()
            .filter(id=batch_id, state=BatchState.RUNNING)
            .order_by()
            .first()
        )
        if batch is None:
            return False
        counts = tallies([batch.id])[batch.id].counts
        if any(counts[status] for status in ACTIVE_STATUSES):
            return False
        batch.state = end_state(batch.cancel_requested, counts)
        batch.finished_at = timezone.now()
        batch.failed_job_ids = [
            str(job_id)
            for job_id in Job.objects.filter(batch=batch, status__in=NOT_RUN)
            .order_by("finished_at")
            .values_list("id", flat=True)
        ]
        if batch.state == BatchState.SUCCEEDED:
            batch.success_job = _create_callback(batch, "on_success")
        batch.complete_job = _create_callback(batch, "on_complete")
        batch.save(
            update_fields=["state", "finished_at", "failed_job_ids", "success_job", "complete_job"]
        )
        transaction.on_commit(lambda: _announce(batch))
        publish_change(batch, progress=100)
    log.info("Batch %s %s", batch.id, batch.state)
    return True


def end_state(cancel_requested: bool, counts: dict[str, int]) -> str:
    """How a batch whose jobs have all ended ended: failed if one of them failed or
    expired (a failure is never hidden by a cancel), else cancelled if the batch or one
    of its jobs was cancelled, else succeeded."""
    if any(counts[status] for status in NOT_RUN):
        return BatchState.FAILED
    if cancel_requested or counts[Status.CANCELLED]:
        return BatchState.CANCELLED
    return BatchState.SUCCEEDED


def _create_callback(batch: Batch, name: str) -> Job | None:
    """Create the batch's `name` callback job in the settling's transaction. One that
    can no longer be created (its type was removed since) is logged and skipped, so
    that the batch still settles."""
    spec = getattr(batch, name)
    if not spec:
        return None
    try:
        with transaction.atomic():
            (outcome,) = services.enqueue_many([JobSpec(**spec)], owner=batch.owner)
    except (serializers.ValidationError, IdempotencyConflict, IntegrityError) as exc:
        log.error("Batch %s: its %s job could not be created: %s", batch.id, name, exc)
        return None
    return outcome.job


def publish_change(batch: Batch, progress: int | None = None) -> None:
    """Push the batch's state to the clients following it (jobs/live.py), once the
    surrounding transaction commits; its progress counted when not given."""
    if progress is None:
        progress = tallies([batch.id])[batch.id].progress
    live.publish_on_commit([batch_change(batch, progress)], kind="batch")


def batch_change(batch: Batch, progress: int) -> dict[str, Any]:
    """A batch's live-update message (jobs/live.py)."""
    return {
        "id": batch.id,
        "owner_id": batch.owner_id,
        "status": batch.state,
        "cancel_requested": batch.cancel_requested,
        "progress": progress,
        "message": batch.description,
        "updated_at": batch.finished_at or timezone.now(),
    }


def _announce(batch: Batch) -> None:
    for receiver, outcome in batch_finished.send_robust(sender=Batch, batch=batch):
        if isinstance(outcome, Exception):
            log.warning("batch_finished receiver %r failed: %s", receiver, outcome)


def settle_batches_of(jobs: Iterable[Job]) -> None:
    """The follow-up after jobs ended: settle the batches they belong to."""
    for batch_id in {job.batch_id for job in jobs if job.batch_id is not None}:
        settle(batch_id)


def catch_up(now: datetime, since: datetime | None = None) -> followups.CaughtUp:
    """Settle the running batches none of whose jobs is queued or running any more (a
    crash came between their last job's end and its follow-up): with `since`, the
    batches of the jobs that ended since then; without, every running batch."""
    limit = settings.JOBS_SWEEP_BATCH
    if since is None:
        active = Job.objects.filter(batch=OuterRef("pk"), status__in=ACTIVE_STATUSES)
        ready = list(
            Batch.objects.filter(state=BatchState.RUNNING, created_at__lte=now)
            .exclude(Exists(active))
            .order_by("created_at")
            .values_list("id", flat=True)[: limit + 1]
        )
    else:
        # Through the retention indexes alone: the jobs that ended since (a filter on
        # batch_id would draw in job_batch_status, all of whose entries match it).
        batch_ids = {
            batch_id
            for ended in followups.ended_since(since)
            for batch_id in Job.objects.filter(ended).order_by().values_list("batch_id", flat=True)
            if batch_id
        }
        active = Job.objects.filter(batch=OuterRef("pk"), status__in=ACTIVE_STATUSES)
        running = Batch.objects.filter(id__in=batch_ids, state=BatchState.RUNNING)
        # Only the batches ready to settle count towards the limit: the others cannot
        # hold the follow-up's mark back.
        ready = list(
            running.exclude(Exists(active)).order_by().values_list("id", flat=True)[: limit + 1]
        )
    settled = sum(settle(batch_id) for batch_id in ready[:limit])
    return followups.CaughtUp(settled, len(ready) <= limit)


def register_follow_up() -> None:
    followups.register("batches", after_end=settle_batches_of, catch_up=catch_up)


# --- reading -------------------------------------------------------------------------


@dataclass(frozen=True)
class Tally:
    counts: dict[str, int]
    total: int
    progress: int


def tallies(batch_ids: Sequence[Any]) -> dict[Any, Tally]:
    """Each batch's jobs counted by status, and its progress: the mean of its jobs'
    progress, a finished job counting as 100. One query for them all."""
    rows = (
        Job.objects.filter(batch_id__in=list(batch_ids))
        .values("batch_id", "status")
        .annotate(n=Count("id"), progress=Sum("progress"))
        .order_by()
    )
    counts: dict[Any, dict[str, int]] = {i: dict.fromkeys(Status.values, 0) for i in batch_ids}
    done: dict[Any, int] = dict.fromkeys(batch_ids, 0)
    for row in rows:
        counts[row["batch_id"]][row["status"]] = row["n"]
        finished = row["status"] in FINISHED_STATUSES
        done[row["batch_id"]] += 100 * row["n"] if finished else row["progress"] or 0
    result = {}
    for batch_id in batch_ids:
        total = sum(counts[batch_id].values())
        progress = done[batch_id] // total if total else 100
        result[batch_id] = Tally(counts[batch_id], total, progress)
    return result


def batch_data(batch: Batch, tally: Tally) -> dict[str, Any]:
    """The batch as the API lists it."""
    return {
        "id": str(batch.id),
        "description": batch.description,
        "owner": batch.owner.get_username() if batch.owner_id else None,
        "state": batch.state,
        "cancel_requested": batch.cancel_requested,
        "total": tally.total,
        "counts": tally.counts,
        "progress": tally.progress,
        "on_success": batch.on_success,
        "on_complete": batch.on_complete,
        "callback_jobs": {
            "on_success": str(batch.success_job_id) if batch.success_job_id else None,
            "on_complete": str(batch.complete_job_id) if batch.complete_job_id else None,
        },
        "created_at": batch.created_at,
        "finished_at": batch.finished_at,
    }


def batch_summary(batch: Batch) -> dict[str, Any]:
    """The batch, its jobs counted by status, its progress, its state, the failed (and
    expired) jobs named with a one-line error, and its callback jobs' ids."""
    data = batch_data(batch, tallies([batch.id])[batch.id])
    failed = (
        Job.objects.filter(batch=batch, status__in=NOT_RUN)
        .order_by("finished_at", "id")
        .values("id", "type", "status", "error", "message")[:FAILED_JOBS_SHOWN]
    )
    data["failed_jobs"] = [
        {
            "id": str(job["id"]),
            "type": job["type"],
            "status": job["status"],
            "error": one_line_error(job["error"]) or job["message"],
        }
        for job in failed
    ]
    return data


def batch_of_callback(job: Job) -> Batch | None:
    """The batch that created `job` as its on_success or on_complete callback."""
    return Batch.objects.filter(Q(success_job=job) | Q(complete_job=job)).first()
