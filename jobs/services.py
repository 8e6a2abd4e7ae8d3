"""The engine's public operations on jobs: creating them (`enqueue`, the one way in, and
`enqueue_many`, `chain`), cancelling and retrying them."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from rest_framework import serializers

from . import audit, dependencies, followups, registry
from .dispatch import dispatch, dispatch_new, mark_new
from .errors import IdempotencyConflict, InvalidTransition, TooManyActiveJobs, UniqueKeyHeld
from .models import (
    FINISHED_STATUSES,
    RETRYABLE_STATUSES,
    EventKind,
    Job,
    OnDependencyFailure,
    Priority,
    Status,
)
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
    # Not started by then, it ends as expired.
    expires_at: datetime | None = None
    # Overrides within the type's bounds: at most its max_attempts, and a soft time
    # limit in seconds of at most its soft_time_limit.
    max_attempts: int | None = None
    time_limit: int | None = None
    # Jobs of the same owner this one waits for (ids; in `enqueue_many` also "$i", the
    # job of the request's spec i < this one's), and what it does if one of them does
    # not succeed: "cancel" or "run" anyway (jobs/dependencies.py).
    depends_on: list[uuid.UUID | str] = field(default_factory=list)
    on_dependency_failure: str = OnDependencyFailure.CANCEL
    # One of JOBS_QUEUES instead of the type's queue (None: the type's).
    queue: str | None = None


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
    expires_at: datetime | None = None,
    max_attempts: int | None = None,
    time_limit: int | None = None,
    depends_on: Sequence[uuid.UUID | str] | None = None,
    on_dependency_failure: str = OnDependencyFailure.CANCEL,
    queue: str | None = None,
) -> Enqueued:
    """Create a job and send it to its queue once the surrounding transaction commits.

    With an `idempotency_key`, a repeat of the same request returns the existing job
    (created=False) and a repeat with other data raises `IdempotencyConflict`. For a
    type that declares `unique`, a create while a job with the same key is active
    returns that job (created=False), its payload replaced when the type debounces.
    A job with `expires_at` that has not started by then ends as expired;
    `max_attempts` and `time_limit` (seconds) override the type's within its bounds
    (`override_errors`), and `queue` (one of JOBS_QUEUES) the type's queue. With
    `depends_on` (ids of the owner's jobs), it waits until they all succeeded
    (jobs/dependencies.py).
    """
    spec = JobSpec(
        type_name, payload, idempotency_key, priority, run_at, expires_at, max_attempts, time_limit
    )
    spec.on_dependency_failure = on_dependency_failure
    spec.queue = queue
    job = _build_job(spec, validate_payload(type_name, payload), owner)
    if depends_on:
        return _enqueue_waiting(job, dependencies.parse(list(depends_on)), owner)
    job.dependency_ids = []  # known: the answer shows it without asking the database
    mark_new([job], timezone.now())
    if not idempotency_key and not job.unique_key:
        # The store writes the row and its events atomically: no transaction needed here.
        job_store().insert(job)
        transaction.on_commit(lambda: dispatch_new([job]))
        return Enqueued(job, created=True)
    with transaction.atomic():
        outcome = _create_keyed(job, owner)
        if outcome.created:
            transaction.on_commit(lambda: dispatch_new([job]))
    return outcome


def _enqueue_waiting(job: Job, depends_on: list[uuid.UUID], owner) -> Enqueued:
    """Create `job` waiting for the jobs `depends_on`, in one transaction with the rows
    that say so (not held at all when they all succeeded already)."""
    statuses = dependencies.statuses_of(owner, depends_on)
    dependencies.check_owned(depends_on, statuses)
    now = timezone.now()
    with transaction.atomic():
        dependencies.prepare(job, list(statuses.values()), job.on_dependency_failure)
        mark_new([job], now)
        if job.idempotency_key or job.unique_key:
            outcome = _create_keyed(job, owner)
        else:
            job_store().insert(job)
            outcome = Enqueued(job, created=True)
        waiting = []
        if outcome.created:
            waiting = _add_dependencies([(job, depends_on)], {job.id}, now)
            transaction.on_commit(lambda: dispatch_new([job]))
    _refresh_decided(waiting)
    return outcome


def _add_dependencies(
    links: list[tuple[Job, list[uuid.UUID]]], created: set[uuid.UUID], now: datetime
) -> None:
    """Record what the new jobs wait for. Those written waiting on jobs from before are
    decided again once this transaction commits (returned): a dependency whose end
    committed before that decision is seen by it; one whose end commits after it runs
    its follow-up later still, which finds the new jobs committed. Either way none is
    left waiting for a job that has ended. (Jobs waiting only on jobs `created` with
    them are decided by those jobs' ends, like any other.)"""
    job_store().add_dependencies(links, now)
    for job, deps in links:
        job.dependency_ids = deps
    waiting = [job for job, deps in links if job.held and not created.issuperset(deps)]
    if waiting:
        ids = [job.id for job in waiting]
        # Robust: the sweeper's catch-up decides them if this fails.
        transaction.on_commit(lambda: dependencies.settle(ids), robust=True)
    return waiting


def _refresh_decided(jobs: list[Job]) -> None:
    """Show the new jobs as their decision after the commit left them; inside a caller's
    transaction that decision is still to come."""
    if not jobs or transaction.get_connection().in_atomic_block:
        return
    fresh = {j.id: j for j in Job.objects.filter(id__in=[job.id for job in jobs])}
    for job in jobs:
        for name in ("status", "held", "message", "dispatched_at", "finished_at"):
            setattr(job, name, getattr(fresh[job.id], name))


def chain(specs: Sequence[JobSpec], *, owner=None) -> list[Enqueued]:
    """Create jobs that run one after the other: each waits for the one before it to
    succeed (and, by default, is cancelled when it does not)."""
    linked = [
        replace(spec, depends_on=[*spec.depends_on, f"${index - 1}"]) if index else spec
        for index, spec in enumerate(specs)
    ]
    return enqueue_many(linked, owner=owner)


def enqueue_many(specs: Sequence[JobSpec], *, owner=None, batch=None) -> list[Enqueued]:
    """Create many jobs in one transaction and dispatch them in broker batches; with
    `batch`, as that batch's jobs (jobs/batches.py).

    Every spec is validated first; if any is invalid, a `ValidationError` keyed by
    the spec's index is raised and nothing is written. Idempotency keys and unique
    keys apply to each spec as in `enqueue`, in the order given. A spec's `depends_on`
    may name the job of an earlier spec as "$<its index>".
    """
    errors: dict[str, Any] = {}
    jobs: list[Job] = []
    keys_seen: set[str] = set()
    validated: dict[tuple[str, str], str] = {}
    wanted: dict[int, list[dependencies.Dependency]] = {}
    for index, spec in enumerate(specs):
        try:
            if spec.depends_on:
                wanted[index] = dependencies.parse(spec.depends_on, index=index)
            payload = _validate_once(spec, validated)
            if spec.idempotency_key in keys_seen:
                raise serializers.ValidationError(
                    {"idempotency_key": ["Repeated within this request."]}
                )
            if spec.idempotency_key:
                keys_seen.add(spec.idempotency_key)
            job = _build_job(spec, payload, owner)
            job.batch = batch
            jobs.append(job)
        except registry.UnknownJobType as exc:
            errors[str(index)] = {"type": [str(exc)]}
        except serializers.ValidationError as exc:
            errors[str(index)] = exc.detail
    known = _dependency_statuses(wanted, owner, errors)
    if errors:
        raise serializers.ValidationError({"jobs": dict(sorted(errors.items(), key=_by_index))})

    results: list[Enqueued] = []
    links: list[tuple[Job, list[uuid.UUID]]] = []
    with transaction.atomic():
        keyed = {j.idempotency_key: j for j in jobs if j.idempotency_key}
        existing = _existing_for_keys(owner, list(keyed))
        now = timezone.now()
        mark_new(jobs, now)
        new_jobs, created_one_by_one = [], []
        for index, job in enumerate(jobs):
            if index in wanted:
                ids = _resolved(wanted[index], results)
                statuses = [known.get(i) or _status_in(results, i) for i in ids]
                dependencies.prepare(job, statuses, job.on_dependency_failure)
                links.append((job, ids))
            else:
                job.dependency_ids = []
            if job.idempotency_key in existing:
                found = existing[job.idempotency_key]
                results.append(Enqueued(_same_request_or_conflict(found, job), created=False))
            elif job.unique_key:
                # Each against the jobs written before it, this request's own included.
                outcome = _create_keyed(job, owner)
                results.append(outcome)
                if outcome.created:
                    created_one_by_one.append(job)
            else:
                new_jobs.append(job)
                results.append(Enqueued(job, created=True))
        job_store().insert_many(new_jobs, now)
        created = {o.job.id for o in results if o.created}
        linked = [(job, ids) for job, ids in links if job.id in created]
        waiting = _add_dependencies(linked, created, now)
        sent = [*created_one_by_one, *new_jobs]
        transaction.on_commit(lambda: dispatch_new(sent))
    _refresh_decided(waiting)
    return results


def _dependency_statuses(
    wanted: dict[int, list[dependencies.Dependency]], owner, errors: dict[str, Any]
) -> dict[uuid.UUID, str]:
    """The statuses of the existing jobs that specs depend on; each spec naming a job
    the owner does not have gets its error in `errors`."""
    ids = {d for deps in wanted.values() for d in deps if isinstance(d, uuid.UUID)}
    known = dependencies.statuses_of(owner, ids)
    for index, deps in wanted.items():
        try:
            dependencies.check_owned([d for d in deps if isinstance(d, uuid.UUID)], known)
        except serializers.ValidationError as exc:
            errors.setdefault(str(index), exc.detail)
    return known


def _resolved(deps: list[dependencies.Dependency], results: list[Enqueued]) -> list[uuid.UUID]:
    """Job ids for `deps`, an earlier spec's index standing for the job it gave."""
    ids = [results[d].job.id if isinstance(d, int) else d for d in deps]
    return list(dict.fromkeys(ids))


def _status_in(results: list[Enqueued], job_id: uuid.UUID) -> str:
    return next(o.job.status for o in results if o.job.id == job_id)


def _by_index(item: tuple[str, object]) -> int:
    return int(item[0])


# A create that loses a race for a key looks again; a second loss in a row means the
# key changes hands faster than creates can follow, which no caller does.
KEYED_CREATE_TRIES = 3


def _create_keyed(job: Job, owner) -> Enqueued:
    """Insert `job`, which has an idempotency key or a unique key, unless a job already
    answers for one of them. Runs in the caller's transaction.

    The database's unique constraints decide races: a concurrent create that committed
    the key first makes the insert fail, and the loop finds that job instead."""
    for tries_left in reversed(range(KEYED_CREATE_TRIES)):
        if job.idempotency_key:
            existing = existing_for_key(owner, job.idempotency_key)
            if existing:
                return Enqueued(_same_request_or_conflict(existing, job), created=False)
        if job.unique_key:
            holder = _unique_key_holder(job)
            if holder is not None:
                return Enqueued(holder, created=False)
        try:
            with transaction.atomic():
                job_store().insert(job)
        except IntegrityError:
            if not tries_left:
                raise
            continue
        return Enqueued(job, created=True)
    raise AssertionError("unreachable")


def _unique_key_holder(job: Job) -> Job | None:
    """The active job that answers for a create of `job` (its payload replaced with
    `job`'s when the type debounces), or None when `job` may be inserted.

    A debounced type lets a new job queue while one with its key runs: the running
    job gives its key up (the constraint covers queued and running jobs alike), so
    its run, which may have read the old payload already, does not swallow the save."""
    store = job_store()
    debounce = registry.get(job.type).unique.debounce
    while (holder := store.active_with_key(job.type, job.unique_key, job.owner_id)) is not None:
        if holder.status == Status.RUNNING and holder.cancel_requested:
            # A run that is being cancelled answers for nothing new.
            if store.give_up_unique_key(holder):
                return None
        elif debounce is None:
            return holder
        elif holder.status == Status.QUEUED:
            if store.debounce(holder, job.payload, timezone.now()):
                return holder
        elif store.give_up_unique_key(holder):
            return None
        # The holder changed state between the read and the write: look again.
    return None


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
    if errors := override_errors(jt, spec, timezone.now()):
        raise serializers.ValidationError(errors)
    unique_key, run_at = None, spec.run_at
    if jt.unique is not None:
        unique_key = jt.unique.key_for(owner.pk if owner is not None else None, payload)
        if jt.unique.debounce is not None:
            # The first create of a burst sets when it runs; later ones only replace
            # the payload.
            debounced = timezone.now() + timedelta(seconds=jt.unique.debounce)
            run_at = max(run_at, debounced) if run_at else debounced
    return Job(
        type=jt.name,
        owner=owner,
        payload=payload,
        queue=spec.queue or jt.queue,
        max_attempts=spec.max_attempts or jt.max_attempts,
        time_limit=spec.time_limit,
        priority=priority,
        idempotency_key=spec.idempotency_key or None,
        unique_key=unique_key,
        run_at=run_at,
        expires_at=spec.expires_at,
        on_dependency_failure=_dependency_policy(spec.on_dependency_failure),
    )


def _dependency_policy(value: str) -> str:
    if value not in OnDependencyFailure.values:
        raise serializers.ValidationError(
            {"on_dependency_failure": [f"Must be one of: {', '.join(OnDependencyFailure.values)}."]}
        )
    return value


def override_errors(jt: registry.JobType, spec: JobSpec, now: datetime) -> dict[str, list[str]]:
    """What is wrong with the spec's expiry and overrides of the type's queue, attempts
    and time limit, by field; empty when nothing is."""
    errors = {}
    if spec.queue is not None and spec.queue not in settings.JOBS_QUEUES:
        errors["queue"] = [f"Must be one of: {', '.join(settings.JOBS_QUEUES)}."]
    if spec.max_attempts is not None and not 1 <= spec.max_attempts <= jt.max_attempts:
        errors["max_attempts"] = [
            f"Must be between 1 and {jt.max_attempts}, the most {jt.name} allows."
        ]
    if spec.time_limit is not None and not 1 <= spec.time_limit <= jt.soft_time_limit:
        errors["time_limit"] = [
            f"Must be between 1 and {jt.soft_time_limit} seconds, the most {jt.name} allows."
        ]
    if spec.expires_at is not None:
        if spec.expires_at <= now:
            errors["expires_at"] = ["Must be in the future."]
        elif spec.run_at is not None and spec.expires_at <= spec.run_at:
            errors["expires_at"] = ["Must be after run_at: the job could never start."]
    return errors


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
    idempotency key) and creates that an active unique job answers for make nothing and
    do not count.

    A soft cap: two requests at the same moment may both pass the check.
    """
    limit = settings.JOBS_USER_MAX_ACTIVE
    if not limit or user.is_staff:
        return
    active = active_job_count(user, up_to=limit)
    if active + len(specs) <= limit:
        return
    keys = [s.idempotency_key for s in specs if s.idempotency_key]
    repeats = _existing_for_keys(user, keys)
    new = sum(
        1
        for s in specs
        if s.idempotency_key not in repeats and not _answered_by_a_unique_job(user, s)
    )
    if new and active + new > limit:
        raise TooManyActiveJobs(limit=limit, active=active, requested=new)


def _answered_by_a_unique_job(owner, spec: JobSpec) -> bool:
    """Whether an active job of a unique type would answer for `spec` (so far as can be
    told before the create: an invalid payload answers no)."""
    try:
        jt = registry.get(spec.type)
        if jt.unique is None:
            return False
        key = jt.unique.key_for(owner.pk, validate_payload(spec.type, spec.payload))
    except (registry.UnknownJobType, serializers.ValidationError):
        return False
    holder = job_store().active_with_key(jt.name, key, owner.pk)
    if holder is None or holder.cancel_requested:
        return False
    return jt.unique.debounce is None or holder.status == Status.QUEUED


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
    if done == EventKind.CANCELLED:
        followups.jobs_ended([job])
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
            holder = job.unique_key and job_store().active_with_key(
                job.type, job.unique_key, job.owner_id
            )
            if job.status in RETRYABLE_STATUSES and holder:
                raise UniqueKeyHeld(job, holder, "retry")
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
