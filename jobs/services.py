"""The engine's public operations on jobs: creating them (`enqueue`, the one way in, and
`enqueue_many`), cancelling and retrying them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from rest_framework import serializers

from . import audit, registry
from .dispatch import dispatch, dispatch_new, mark_new
from .errors import IdempotencyConflict, InvalidTransition, TooManyActiveJobs
from .models import FINISHED_STATUSES, RETRYABLE_STATUSES, Job, Priority, Status
from .store import job_store


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
    mark_new([job], timezone.now())
    if not idempotency_key:
        # The store writes the row and its events atomically: no transaction needed here.
        job_store().insert(job)
        transaction.on_commit(lambda: dispatch_new([job]))
        return Enqueued(job, created=True)
    with transaction.atomic():
        existing = existing_for_key(owner, idempotency_key)
        if existing:
            return Enqueued(_same_request_or_conflict(existing, job), created=False)
        try:
            with transaction.atomic():
                job_store().insert(job)
        except IntegrityError:
            # A concurrent request with the same key committed first.
            existing = existing_for_key(owner, idempotency_key)
            if existing is None:
                raise
            return Enqueued(_same_request_or_conflict(existing, job), created=False)
        transaction.on_commit(lambda: dispatch_new([job]))
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
        mark_new(new_jobs, now)
        job_store().insert_many(new_jobs, now)
        transaction.on_commit(lambda: dispatch_new(new_jobs))
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


def existing_for_key(owner, key: str) -> Job | None:
    """The job `owner` (None: the application) created with idempotency key `key`."""
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


def active_job_count(owner, *, up_to: int) -> int:
    """How many of `owner`'s jobs are queued or running, counting no further than `up_to`."""
    return job_store().active_count(owner, up_to=up_to)


# --- cancel and retry ----------------------------------------------------------------


def cancel(job: Job, *, by=None, via: str | None = None) -> Job:
    """Cancel a queued job at once; ask a running one to stop at its next checkpoint.

    With `via` (the door an operator came through: audit.Via), the cancel is recorded
    with `by`, the acting user, in the audit log and on the job's timeline."""
    with transaction.atomic():
        done = job_store().cancel(job, timezone.now(), note=_note(by, via))
        if done and via:
            audit.record(by, "cancel", "job", job.id, via=via, type=job.type, outcome=done)
    job.refresh_from_db()
    if job.status in FINISHED_STATUSES and job.status != Status.CANCELLED:
        raise InvalidTransition(job, "cancel")
    return job


def retry(job: Job, *, by=None, via: str | None = None) -> Job:
    """Put a failed or cancelled job back in the queue with a fresh round of attempts;
    recorded with `by` when it comes through `via` (as `cancel`)."""
    with transaction.atomic():
        retried = job_store().retry([job.id], timezone.now(), note=_note(by, via))
        job.refresh_from_db()
        if not retried:
            raise InvalidTransition(job, "retry")
        if via:
            audit.record(by, "retry", "job", job.id, via=via, type=job.type)
        transaction.on_commit(lambda: dispatch(retried))
    return job


def retry_many(jobs, *, by=None, via: str | None = None) -> int:
    """Retry every failed or cancelled job in the queryset; returns how many. Each is
    recorded with `by` when it comes through `via` (as `cancel`)."""
    with transaction.atomic():
        ids = jobs.filter(status__in=RETRYABLE_STATUSES).values_list("id", flat=True)
        retried = job_store().retry(list(ids), timezone.now(), note=_note(by, via))
        if via:
            audit.record_each(by, "retry", "job", [j.id for j in retried], via=via, bulk=True)
        transaction.on_commit(lambda: dispatch(retried))
    return len(retried)


def _note(by, via: str | None) -> str:
    return audit.describe(by, via) if via else ""
