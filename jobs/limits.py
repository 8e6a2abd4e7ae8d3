"""Global limits and pauses, held at the claim across all workers.

A job whose type declares limits (`JobType.limits`), or which a `Control` row gates
(a paused queue or type, limits set by staff), is claimed through `admit`: under a lock
on its type's `LimitState` row, which serializes the gated claims of one type on every
worker. The gate decides on the database's rows, so the limits hold across machines,
survive restarts, and a lost worker's jobs are counted until they are recovered.

- Paused: the job is held (`held="paused"`) without a message; resuming releases it.
- Concurrency: at most N of the type running (and at most M of one owner's). A job over
  the cap is held (`held="concurrency"`) without a message; a job of the type that ends
  releases as many as there are free slots (`release_after`), and the sweeper does the
  same every few seconds in case the worker that ended it died first.
- Rate: at most N started in any window of `period` seconds, per type and per owner.
  A job over the rate reserves the earliest start that keeps every window within the
  limit, behind the jobs that reserved before it, and is sent again with that ETA (or
  by the sweeper when that is further than JOBS_BROKER_DELAY_MAX ahead): one deferral
  per job, however long the backlog, and no worker polls.

Types without limits and not gated pay nothing: their claim statement checks that no
`Control` row gates them in the same statement (jobs/store.py).
"""

from __future__ import annotations

import bisect
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from django.db import IntegrityError, connections, transaction
from django.utils import timezone

from . import followups, registry
from .dispatch import dispatch
from .models import Control, Held, Job, LimitState, Scope, Status
from .store import job_store, prepared_cursor

log = logging.getLogger(__name__)

RELEASE_BATCH = 500
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MILLISECOND = timedelta(milliseconds=1)


class Refusal(StrEnum):
    """Why a message did not start its job."""

    MISSING = "missing"  # no such job
    DUPLICATE = "duplicate"  # the job is not queued: another message ran or will run it
    EARLY = "early"  # its time has not come
    EXPIRED = "expired"  # its expiry passed before it started: it ended as expired
    HELD = "held"  # a pause or a limit holds it; it starts when released


@dataclass(frozen=True)
class Rules:
    """What applies to one job: why it may not start now (`paused`: "queue emails",
    "type reports.generate" or None) and its type's limits."""

    paused: str | None
    limits: registry.Limits

    @property
    def gated(self) -> bool:
        return self.paused is not None or self.limits.any


def rules_for(jt: registry.JobType, queue: str) -> Rules:
    """The rules for a job of type `jt` in `queue`, read from the database."""
    rows = {
        (c.scope, c.name): c
        for c in Control.objects.filter(scope=Scope.TYPE, name=jt.name)
        | Control.objects.filter(scope=Scope.QUEUE, name=queue)
    }
    by_type, by_queue = rows.get((Scope.TYPE, jt.name)), rows.get((Scope.QUEUE, queue))
    paused = None
    if by_queue is not None and by_queue.paused:
        paused = f"queue {queue}"
    if by_type is not None and by_type.paused:
        paused = f"type {jt.name}"
    return Rules(paused=paused, limits=effective_limits(jt, by_type))


def effective_limits(jt: registry.JobType, control: Control | None = None) -> registry.Limits:
    """The limits in force for `jt`: staff's replacement, else what the type declares."""
    if control is None or not control.overrides_limits:
        return jt.limits
    return registry.Limits(
        concurrency=control.concurrency,
        owner_concurrency=control.owner_concurrency,
        rate=control.rate,
        owner_rate=control.owner_rate,
        period=control.period or jt.limits.period,
    )


def control_for(scope: str, name: str) -> Control | None:
    return Control.objects.filter(scope=scope, name=name).first()


# The types this process last found gated: their messages come to the gate at once,
# without the plain claim first, which a gated job never passes.
_found_gated: set[str] = set()


def found_gated(type_name: str) -> bool:
    """Whether this process last found `type_name` gated (paused or limited)."""
    return type_name in _found_gated


def forget_found_gated() -> None:
    """Forget which types this process found gated: each is found again by its next job."""
    _found_gated.clear()


def admit(
    job_id: str, now: datetime, due: datetime, *, at_a_given_time: bool = False
) -> Job | Refusal:
    """Claim the job through its pause and limits: the job, running, when it may start
    now; otherwise why not (a held or deferred job starts when released or reserved).
    `now` moves on by the time spent waiting for the type's lock, unless
    `at_a_given_time` (the caller chose the moment)."""
    job = job_store().read(job_id)
    if job is None:
        return Refusal.MISSING
    if job.status != Status.QUEUED:
        return Refusal.DUPLICATE
    if job.held == Held.DEPENDENCIES:
        # Only the end of its dependencies releases it (and sends it a new message); a
        # job never goes back to waiting for them, so this read cannot be stale.
        return Refusal.HELD
    if job.expires_at and job.expires_at <= now:
        if not job_store().expire(job, now):
            return Refusal.DUPLICATE
        forget_reserved_starts([job])
        followups.jobs_ended([job])
        return Refusal.EXPIRED
    if job.run_at and job.run_at > due:
        return Refusal.EARLY
    jt = registry.get(job.type)
    deferred: list[Job] = []
    with transaction.atomic():
        _lock(_type_key(jt.name))
        if not at_a_given_time:
            # The start is when the lock is ours: the jobs that ended while we waited
            # for it must not seem to overlap this one.
            waited = max(timezone.now() - now, timedelta(0))
            now, due = now + waited, due + waited
        seen = _look(job, jt)
        if seen is None:
            return Refusal.DUPLICATE
        if not seen.rules.gated:
            # Nothing limits it (any more): a plain claim.
            _found_gated.discard(jt.name)
            return job_store().claim(job_id, now, due, gate_passed=True) or Refusal.DUPLICATE
        _found_gated.add(jt.name)
        decision = _decide(job, seen, now)
        if decision is None:
            logs = [(b.key, b.starts, b.reserved) for b in seen.buckets if b.changed]
            return job_store().claim_admitted(job_id, now, due, logs) or Refusal.DUPLICATE
        if job.held == Held.RATE:
            _cancel_reservation(job, seen.buckets)  # missed its turn: it takes a new one
        held, message = decision
        if held == Held.RATE:
            limits = seen.rules.limits
            start = _reserve(seen.buckets, limits, now)
            job_store().defer(job, start, _rate_message(limits, start), now)
            deferred.append(job)
        else:
            job_store().hold(job, held, message, now)
        _save(seen.buckets)
        transaction.on_commit(lambda: dispatch(deferred, now=now))
    return Refusal.HELD


@dataclass
class Bucket:
    """A rate limit's window log (a `LimitState` row, read under the type's lock)."""

    key: str
    rate: int
    starts: list[int]
    reserved: list[int]
    changed: bool = False


@dataclass(frozen=True)
class Seen:
    """What the gate decides on, read in one statement under the type's lock."""

    rules: Rules
    running: int | None  # the type's running jobs, when a concurrency cap applies
    owner_running: int | None  # the owner's, when a cap per owner applies
    buckets: list[Bucket]


# Read under the type's lock, so that every count and log is as the last gated claim of
# the type left it: the job (still queued?), the controls of its type and queue, the
# running jobs counted only when a cap applies (staff's, else the type's own), and the
# window logs of its rate buckets.
_CAPPED = """CASE WHEN by_type.overrides_limits THEN by_type.{cap} IS NOT NULL
    ELSE %(declares_{cap})s END"""
_RUNNING = f"""SELECT count(*) FROM "{Job._meta.db_table}" AS other
    WHERE other.type = job.type AND other.status = 'running'"""
LOOK_SQL = f"""
SELECT job.held, job.run_at, by_type.paused, by_queue.paused,
    CASE WHEN {_CAPPED.format(cap="concurrency")} THEN ({_RUNNING}) END,
    CASE WHEN job.owner_id IS NOT NULL AND {_CAPPED.format(cap="owner_concurrency")}
        THEN ({_RUNNING} AND other.owner_id = job.owner_id) END,
    by_type.overrides_limits, by_type.concurrency, by_type.owner_concurrency,
    by_type.rate, by_type.owner_rate, by_type.period,
    type_log.starts, type_log.reserved, owner_log.starts, owner_log.reserved
FROM "{Job._meta.db_table}" AS job
LEFT JOIN "{Control._meta.db_table}" AS by_type
    ON by_type.scope = 'type' AND by_type.name = job.type
LEFT JOIN "{Control._meta.db_table}" AS by_queue
    ON by_queue.scope = 'queue' AND by_queue.name = job.queue
LEFT JOIN "{LimitState._meta.db_table}" AS type_log ON type_log.key = %(type_key)s
LEFT JOIN "{LimitState._meta.db_table}" AS owner_log ON owner_log.key = %(owner_key)s
WHERE job.id = %(id)s AND job.status = 'queued'
"""
_LOOKED = (
    "held", "run_at", "type_paused", "queue_paused", "running", "owner_running",
    "overrides_limits", "concurrency", "owner_concurrency", "rate", "owner_rate", "period",
    "type_starts", "type_reserved", "owner_starts", "owner_reserved",
)  # fmt: skip
_CONTROL_LIMITS = ("concurrency", "owner_concurrency", "rate", "owner_rate", "period")


def _look(job: Job, jt: registry.JobType) -> Seen | None:
    """What the gate decides on, under the type's lock (`job.held` and `job.run_at`
    brought up to date); None when the job is no longer queued."""
    connection = connections[Job.objects.db]
    owner_key = _owner_key(jt.name, job.owner_id) if job.owner_id is not None else None
    params = {
        "id": Job._meta.pk.get_db_prep_value(job.id, connection),
        "declares_concurrency": jt.limits.concurrency is not None,
        "declares_owner_concurrency": jt.limits.owner_concurrency is not None,
        "type_key": _type_key(jt.name),
        "owner_key": owner_key,
    }
    with prepared_cursor(connection) as cursor:
        cursor.execute(LOOK_SQL, params)
        row = cursor.fetchone()
    if row is None:
        return None
    seen = dict(zip(_LOOKED, row, strict=True))
    job.held, job.run_at = seen["held"], _aware(seen["run_at"])
    control = None
    if seen["overrides_limits"]:
        control = Control(overrides_limits=True, **{f: seen[f] for f in _CONTROL_LIMITS})
    paused = None
    if seen["queue_paused"]:
        paused = f"queue {job.queue}"
    if seen["type_paused"]:
        paused = f"type {jt.name}"
    rules = Rules(paused=paused, limits=effective_limits(jt, control))
    logs = {
        params["type_key"]: (seen["type_starts"], seen["type_reserved"]),
        owner_key: (seen["owner_starts"], seen["owner_reserved"]),
    }
    buckets = [
        Bucket(key, rate, _times(logs[key][0]), _times(logs[key][1]))
        for key, rate in _rate_limits(job, rules.limits)
    ]
    return Seen(rules, seen["running"], seen["owner_running"], buckets)


def _decide(job: Job, seen: Seen, now: datetime) -> tuple[str, str] | None:
    """What holds `job` back (a Held value, and the message for a pause or a slot), or
    None when it may start now; a start within the rate limit is taken in `seen.buckets`
    (the caller claims and saves them in the same transaction)."""
    if seen.rules.paused:
        return Held.PAUSED, f"Waiting: {seen.rules.paused} is paused"
    limits = seen.rules.limits
    if limits.concurrency is not None and seen.running >= limits.concurrency:
        return (
            Held.CONCURRENCY,
            f"Waiting for a slot: {limits.concurrency} of {job.type} running at most",
        )
    if (
        limits.owner_concurrency is not None
        and job.owner_id is not None
        and seen.owner_running >= limits.owner_concurrency
    ):
        return (
            Held.CONCURRENCY,
            f"Waiting for a slot: {limits.owner_concurrency} of {job.type} per owner "
            "running at most",
        )
    if not _takes_start(job, seen.buckets, limits, now):
        return Held.RATE, ""
    return None


def _running(type_name: str, owner_id: int | None = None) -> int:
    running = Job.objects.filter(type=type_name, status=Status.RUNNING)
    if owner_id is not None:
        running = running.filter(owner_id=owner_id)
    return running.order_by().count()


# --- rate limits: a window log per type and per owner ------------------------------------
#
# Each bucket keeps the times of its last `rate` starts and the starts reserved for jobs
# waiting their turn (epoch milliseconds). A start at t is allowed while fewer than
# `rate` starts fall in (t - period, t]; so every window of `period` seconds holds at
# most `rate` starts. A job refused reserves the earliest time that keeps this true
# after every reservation before it, and comes back then.


def _rate_limits(job: Job, limits: registry.Limits) -> list[tuple[str, int]]:
    """The (key, rate) of each rate bucket the job counts in."""
    found = []
    if limits.rate is not None:
        found.append((_type_key(job.type), limits.rate))
    if limits.owner_rate is not None and job.owner_id is not None:
        found.append((_owner_key(job.type, job.owner_id), limits.owner_rate))
    return found


def _takes_start(job: Job, buckets: list[Bucket], limits, now: datetime) -> bool:
    """Take a start at `now` in each of the job's rate buckets if all have room; a job
    arriving for its reservation only needs room among the starts made so far."""
    if not buckets:
        return True
    at = _ms(now)
    period = int(limits.period * 1000)
    reserved_for = _ms(job.run_at) if job.held == Held.RATE and job.run_at else None
    for bucket in buckets:
        if reserved_for is not None:
            if _count_since(bucket.starts, at - period) >= bucket.rate:
                return False
        elif _earliest(bucket, period, at) > at:
            return False
    for bucket in buckets:
        if reserved_for is not None and reserved_for in bucket.reserved:
            bucket.reserved.remove(reserved_for)
        bucket.starts = [*_pruned(bucket.starts, at - period), _ms_up(now)][-bucket.rate :]
        bucket.reserved = _pruned(bucket.reserved, at - period)
        bucket.changed = True
    return True


def _reserve(buckets: list[Bucket], limits, now: datetime) -> datetime:
    """Reserve the earliest start the job's rate buckets all allow, after every start
    reserved before it; returns it."""
    at = _ms(now)
    period = int(limits.period * 1000)
    start = max(_earliest(bucket, period, at) for bucket in buckets)
    for bucket in buckets:
        bucket.reserved = [*_pruned(bucket.reserved, at - period), start]
        bucket.changed = True
    return EPOCH + start * MILLISECOND


def _earliest(bucket: Bucket, period: int, at: int) -> int:
    """The earliest start at or after `at` that keeps every window within the bucket's
    rate, behind the starts already reserved."""
    log = sorted([*bucket.starts, *bucket.reserved])
    start = at
    if bucket.reserved:
        start = max(start, bucket.reserved[-1])
    if len(log) >= bucket.rate:
        start = max(start, log[-bucket.rate] + period)
    return start


def _cancel_reservation(job: Job, buckets: list[Bucket]) -> None:
    reserved_for = _ms(job.run_at)
    for bucket in buckets:
        if reserved_for in bucket.reserved:
            bucket.reserved.remove(reserved_for)
            bucket.changed = True


def forget_reserved_starts(jobs: Iterable[Job]) -> None:
    """Give back the starts that jobs waiting for their rate-limit turn had reserved and
    will not use (they expired), so the jobs behind them are not held back for nothing."""
    for job in jobs:
        if job.held != Held.RATE or job.run_at is None:
            continue
        try:
            jt = registry.get(job.type)
        except registry.UnknownJobType:
            continue
        with transaction.atomic():
            _lock(_type_key(jt.name))
            buckets = _buckets(_rate_limits(job, rules_for(jt, job.queue).limits))
            _cancel_reservation(job, buckets)
            _save(buckets)


def _count_since(times: list[int], after: int) -> int:
    return len(times) - bisect.bisect_right(sorted(times), after)


def _pruned(times: list[int], after: int) -> list[int]:
    return sorted(t for t in times if t > after)


def _ms(moment: datetime) -> int:
    """`moment` in epoch milliseconds, rounded down: when a start is asked for."""
    return (moment - EPOCH) // MILLISECOND


def _ms_up(moment: datetime) -> int:
    """`moment` in epoch milliseconds, rounded up: when a start was made, so that a
    window counted from it never ends before the true one."""
    return -((EPOCH - moment) // MILLISECOND)


# --- the lock and the state rows ------------------------------------------------------------


def _type_key(type_name: str) -> str:
    return f"type:{type_name}"


def _owner_key(type_name: str, owner_id: int) -> str:
    return f"{_type_key(type_name)}#owner:{owner_id}"


# On PostgreSQL the lock is the row's lock, taken without writing a new version of it.
LOCK_SQL = f'SELECT 1 FROM "{LimitState._meta.db_table}" WHERE key = %s FOR NO KEY UPDATE'


def _lock(key: str) -> None:
    """Lock the state row `key` until the transaction ends (creating it if need be)."""
    if _locked(key):
        return
    try:
        with transaction.atomic():
            LimitState.objects.create(key=key)
    except IntegrityError:
        pass
    _locked(key)


def _locked(key: str) -> bool:
    connection = connections[LimitState.objects.db]
    if connection.vendor != "postgresql":
        # An UPDATE, first in an IMMEDIATE transaction, is already serialized on SQLite.
        return bool(LimitState.objects.filter(key=key).update(key=key))
    with prepared_cursor(connection) as cursor:
        cursor.execute(LOCK_SQL, [key])
        return cursor.fetchone() is not None


def _buckets(rate_limits: list[tuple[str, int]]) -> list[Bucket]:
    """The window logs of these (key, rate) buckets, empty for a bucket without a row."""
    rows = {row.key: row for row in LimitState.objects.filter(key__in=[k for k, _ in rate_limits])}
    return [
        Bucket(key, rate, list(rows[key].starts), list(rows[key].reserved))
        if key in rows
        else Bucket(key, rate, [], [])
        for key, rate in rate_limits
    ]


def _save(buckets: list[Bucket]) -> None:
    """Write the changed window logs, creating the rows that are missing (an owner's
    first start), in one statement."""
    changed = [b for b in buckets if b.changed]
    if not changed:
        return
    LimitState.objects.bulk_create(
        [LimitState(key=b.key, starts=b.starts, reserved=b.reserved) for b in changed],
        update_conflicts=True,
        unique_fields=["key"],
        update_fields=["starts", "reserved"],
    )


def _times(stored: str | list[int] | None) -> list[int]:
    """A window log as the database returned it (JSON text, or none for a missing row)."""
    if stored is None:
        return []
    return json.loads(stored) if isinstance(stored, str) else list(stored)


def _aware(moment: datetime | None) -> datetime | None:
    """A time read by a plain cursor: SQLite returns it naive, in UTC."""
    if moment is not None and timezone.is_naive(moment):
        return moment.replace(tzinfo=UTC)
    return moment


# --- messages -------------------------------------------------------------------------------


def _rate_message(limits: registry.Limits, start: datetime) -> str:
    return (
        f"Rate limited to {limits.rate or limits.owner_rate} per {limits.period:g}s: "
        f"starts at {start.isoformat(timespec='seconds')}"
    )


# --- releasing held jobs -----------------------------------------------------------------------


def release_after(type_name: str, now: datetime | None = None) -> int:
    """Send as many of the type's jobs held for a concurrency slot as there are free
    slots (per owner too); each is admitted again by the gate. Returns how many."""
    if not _any_waiting_for_a_slot(type_name):
        return 0
    waiting = Job.objects.filter(type=type_name, status=Status.QUEUED, held=Held.CONCURRENCY)
    now = now or timezone.now()
    limits = effective_limits(registry.get(type_name), control_for(Scope.TYPE, type_name))
    if limits.concurrency is None and limits.owner_concurrency is None:
        return _release(waiting.order_by("-priority", "created_at")[:RELEASE_BATCH], now)
    free = RELEASE_BATCH
    if limits.concurrency is not None:
        free = max(0, limits.concurrency - _running(type_name))
    if not free:
        return 0
    chosen = []
    running_by_owner: dict[int, int] = {}
    for job_id, owner_id in waiting.order_by("-priority", "created_at").values_list(
        "id", "owner_id"
    )[:RELEASE_BATCH]:
        if limits.owner_concurrency is not None and owner_id is not None:
            if owner_id not in running_by_owner:
                running_by_owner[owner_id] = _running(type_name, owner_id)
            if running_by_owner[owner_id] >= limits.owner_concurrency:
                continue
            running_by_owner[owner_id] += 1
        chosen.append(job_id)
        if len(chosen) >= free:
            break
    return _release(chosen, now)


WAITING_FOR_A_SLOT_SQL = f"""SELECT EXISTS (SELECT 1 FROM "{Job._meta.db_table}"
    WHERE type = %s AND status = 'queued' AND held = 'concurrency')"""


def _any_waiting_for_a_slot(type_name: str) -> bool:
    """The common case after a gated job ends: none (one look at the held rows' index,
    as a prepared statement on PostgreSQL)."""
    with prepared_cursor(connections[Job.objects.db]) as cursor:
        cursor.execute(WAITING_FOR_A_SLOT_SQL, [type_name])
        return bool(cursor.fetchone()[0])


def release_paused(now: datetime | None = None) -> int:
    """Send the held jobs whose queue and type are no longer paused. Returns how many."""
    paused = set(Control.objects.filter(paused=True).values_list("scope", "name"))
    waiting = Job.objects.filter(status=Status.QUEUED, held=Held.PAUSED).order_by(
        "-priority", "created_at"
    )
    free = [
        job_id
        for job_id, type_name, queue in waiting.values_list("id", "type", "queue")[:RELEASE_BATCH]
        if (Scope.TYPE, type_name) not in paused and (Scope.QUEUE, queue) not in paused
    ]
    return _release(free, now or timezone.now(), reason="Resumed")


def reconsider(type_name: str, now: datetime | None = None) -> int:
    """After the type's limits changed: its jobs waiting for a reserved start take a
    new turn under the new limits, and those waiting for a slot are sent as the new
    limits allow. Returns how many were sent."""
    now = now or timezone.now()
    with transaction.atomic():
        _lock(_type_key(type_name))
        LimitState.objects.filter(key__startswith=_type_key(type_name)).update(reserved=[])
        deferred = Job.objects.filter(type=type_name, status=Status.QUEUED, held=Held.RATE)
        released = job_store().release(deferred.values_list("id", flat=True), "Limits changed", now)
        transaction.on_commit(lambda: dispatch(released, now=now))
    return len(released) + release_after(type_name, now)


def release_held(now: datetime | None = None) -> int:
    """The sweeper's pass: release what resumes and freed slots allow, in case the
    worker that should have released them died first."""
    now = now or timezone.now()
    released = release_paused(now)
    waiting_types = (
        Job.objects.filter(status=Status.QUEUED, held=Held.CONCURRENCY)
        .order_by()
        .values_list("type", flat=True)
        .distinct()
    )
    for type_name in list(waiting_types):
        try:
            released += release_after(type_name, now)
        except registry.UnknownJobType:
            continue
    return released


def _release(job_ids, now: datetime, reason: str = "A slot is free") -> int:
    released = job_store().release(list(job_ids), reason, now)
    dispatch(released, now=now)
    return len(released)
