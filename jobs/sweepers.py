"""Putting jobs back in play after something was lost: a message never sent or lost
in the broker, a worker or pool process that died holding a job, a worker shutting
down, a broker that lost its data, messages taken by a worker that stopped; and the
history's closed minutes rolled up (jobs/history.py). Beat runs
`sweep` every JOBS_SWEEP_INTERVAL seconds; a worker's main process calls `recover_lost`
and `hand_back` itself."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone
from kombu.exceptions import KombuError
from redis import RedisError

from . import broker_loss, followups, history, limits, worker_loss
from .dispatch import dispatch
from .models import Held, Job, Status, WorkerHeartbeat
from .store import held, job_store

log = logging.getLogger(__name__)


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
        "expired": expire_overdue(),
        "released": limits.release_held(),
        "dispatched": dispatch_due(),
        "followed_up": followups.catch_up(),
        "rolled_up": history.roll_up(),
    }


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
        # Held for a pause, a slot or other jobs: they wait to be released, not for a
        # message.
        .exclude(held__in=[Held.PAUSED, Held.CONCURRENCY, Held.DEPENDENCIES])
        .order_by("-priority", "created_at")[: settings.JOBS_SWEEP_BATCH]
    )
    return dispatch(due, now=now)


def expire_overdue(now: datetime | None = None) -> int:
    """End as expired the queued jobs whose expiry passed before they started, held
    ones too, JOBS_SWEEP_BATCH per sweep: they end even when no message of theirs
    arrives. Returns how many."""
    expired = job_store().expire_overdue(now or timezone.now(), settings.JOBS_SWEEP_BATCH)
    limits.forget_reserved_starts(expired)
    for job in expired:
        job.status = Status.EXPIRED
    followups.jobs_ended(expired)
    if expired:
        log.info("Expired %d job(s) not started before their expiry", len(expired))
    return len(expired)


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
        # Only if it has not beaten since we read it: a worker that heartbeats or
        # finishes right now keeps its job.
        outcome = job_store().requeue_stalled(
            job,
            now,
            heartbeat_before=cutoff,
            event=f"No heartbeat since {job.heartbeat_at.isoformat()}; back in the queue",
            cause="the worker running it stopped sending heartbeats",
            message="Recovered after its worker stopped",
        )
        if outcome == Status.QUEUED:
            recovered.append(job)
        elif outcome == Status.FAILED:
            job.status = Status.FAILED
            followups.jobs_ended([job])
        handled += outcome is not None
    dispatch(recovered, now=now)
    return handled


def recover_lost(job_id: str, attempt: int, reason: str, *, send: bool = True) -> bool:
    """Requeue a job whose worker process died holding `attempt` of it (counted as a
    stall, as the sweeper does), only if that attempt still holds it, and send its
    message unless `send` is false (the dispatch sweeper then does). True when the
    job went back to the queue or failed after too many stalls."""
    now = timezone.now()
    job = held(job_id, attempt).first()
    if job is None:
        return False
    outcome = job_store().requeue_stalled(
        job,
        now,
        event=f"{reason}; back in the queue",
        cause="its worker process died",
        message="Recovered after its worker process died",
    )
    if outcome == Status.QUEUED and send:
        dispatch([job], now=now)
    elif outcome == Status.FAILED:
        job.status = Status.FAILED
        followups.jobs_ended([job])
    return outcome is not None


def hand_back(job_ids: Iterable[str], reason: str) -> int:
    """Return running jobs to the queue at once (their worker is shutting down and will
    not finish them): they stop at their next checkpoint. Returns how many went back."""
    now = timezone.now()
    running = Job.objects.filter(id__in=list(job_ids), status=Status.RUNNING)
    handed = [job for job in running if job_store().hand_back(job, reason, now)]
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
