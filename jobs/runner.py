"""Running one job inside a worker: claim, heartbeat, call the handler, record the end."""

from __future__ import annotations

import logging
import traceback
from datetime import datetime, timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from . import heartbeats, registry, sql
from .context import JobContext
from .errors import JobCancelled, JobLost, PermanentError
from .logging import job_log_context
from .models import EventKind, Job, JobEvent, Status
from .outages import while_database_unavailable

log = logging.getLogger(__name__)

# A message may arrive a little before its ETA when clocks differ between hosts.
EARLY_TOLERANCE = timedelta(seconds=1)

T = TypeVar("T")


class ClaimFailed(Exception):
    """The database stayed unreachable while claiming the job: the job was not taken,
    and its message goes back to the queue."""


def execute(job_id: str, *, now: datetime | None = None) -> str:
    """Run the job if this message can claim it; return the outcome for the result backend.

    `now` is the time of the claim and of a retry's schedule (the current time when
    each happens, by default)."""
    job = claim(job_id, now=now)
    if job is None:
        return _handle_unclaimable(job_id, now or timezone.now())
    jt = registry.get(job.type)
    with job_log_context(job), heartbeats.holding(job):
        log.debug("Job started")
        try:
            result = jt.handler(JobContext(job))
        except JobCancelled:
            return _finish(job, Status.CANCELLED, message="Cancelled")
        except JobLost:
            log.warning("Job was recovered elsewhere while running here; stopping")
            return "lost"
        except PermanentError as exc:
            return _finish(job, Status.FAILED, error=str(exc) or type(exc).__name__)
        except Exception as exc:
            return _fail_or_retry(job, jt, exc, now or timezone.now())
        return _finish(job, Status.SUCCEEDED, result=result, progress=100, message="Done")


def claim(job_id: str, *, now: datetime | None = None) -> Job | None:
    """Take the job with one conditional UPDATE; None when it is not ours to run.

    The claim also writes the `started` event. On PostgreSQL the UPDATE, the event and
    reading the row back are one statement; elsewhere they are three. A connection that
    died while the worker was idle (a database restart) is replaced; while the database
    stays unreachable the claim is tried again for a few seconds, then ClaimFailed.
    """
    now = now or timezone.now()
    tries = 0

    def claim_once() -> Job | None:
        nonlocal tries
        tries += 1
        job = sql.claim(job_id, now, due=now + EARLY_TOLERANCE)
        if job is None and tries > 1:
            # A try whose answer was lost with its connection may have claimed it: the
            # claim's time, written as started_at, tells that run apart.
            return Job.objects.filter(id=job_id, status=Status.RUNNING, started_at=now).first()
        return job

    try:
        return while_database_unavailable(claim_once, f"claiming job {job_id}")
    except (OperationalError, InterfaceError) as exc:
        raise ClaimFailed(f"Could not claim job {job_id}: {exc}") from exc


def _handle_unclaimable(job_id: str, now: datetime) -> str:
    """A message that cannot claim its job is acknowledged and dropped, except one that
    arrived before its job's time, which is sent again for the right moment."""
    job = Job.objects.filter(id=job_id).only("id", "status", "run_at", "type", "queue").first()
    if job is None:
        log.info("Dropped message for job %s, which does not exist", job_id)
        return "missing"
    if job.status == Status.QUEUED and job.run_at and job.run_at > now:
        from .services import dispatch

        Job.objects.filter(id=job.id).update(dispatched_at=None)
        if job.run_at - now <= timedelta(seconds=settings.JOBS_BROKER_DELAY_MAX):
            dispatch([Job.objects.get(id=job.id)], now=now)
        return "early"
    log.info("Dropped message for job %s (%s)", job_id, job.status)
    return "duplicate"


def _finish(job: Job, status: str, *, result: Any = None, error: str = "", **fields) -> str:
    kind = {
        Status.SUCCEEDED: EventKind.SUCCEEDED,
        Status.FAILED: EventKind.FAILED,
        Status.CANCELLED: EventKind.CANCELLED,
    }[status]
    ended = while_database_unavailable(
        lambda: sql.finish(job, status, kind, result=result, error=error, **fields),
        f"recording that job {job.id} {status}",
    )
    if not ended:
        if _already_ended_as(job, status):
            # A try whose answer was lost with its connection did record it.
            log.info("Job %s", status)
            return status
        log.warning("Job was no longer held when it ended as %s; outcome discarded", status)
        return "lost"
    log.info("Job %s", status)
    return status


def _fail_or_retry(job: Job, jt: registry.JobType, exc: Exception, now: datetime) -> str:
    error = f"{type(exc).__name__}: {exc}"
    if job.attempts >= job.max_attempts:
        log.error("Job failed after %d attempts: %s", job.attempts, error)
        detail = "".join(traceback.format_exception(exc, limit=20))
        return _finish(job, Status.FAILED, error=f"{error}\n\n{detail}")
    delay = jt.backoff(job.attempts)
    run_at = now + timedelta(seconds=delay)
    changes = {
        "status": Status.QUEUED,
        "run_at": run_at,
        "dispatched_at": None,
        "heartbeat_at": None,
        "error": error,
        "message": f"Retrying in {delay:g}s",
        "updated_at": now,
    }
    event = JobEvent(
        job_id=job.id,
        kind=EventKind.RETRY_SCHEDULED,
        message=f"{error[:400]} — retry in {delay:g}s",
        attempt=job.attempts,
    )
    rescheduled = while_database_unavailable(
        lambda: sql.update_recording(sql.held(job), changes, event),
        f"scheduling a retry of job {job.id}",
    )
    if not rescheduled:
        return "lost"
    log.warning("Job attempt %d failed, retrying in %gs: %s", job.attempts, delay, error)
    if delay <= settings.JOBS_BROKER_DELAY_MAX:
        from .services import dispatch

        job.status = Status.QUEUED
        job.run_at = run_at
        dispatch([job], now=now)
    return "retry"


def _already_ended_as(job: Job, status: str) -> bool:
    return Job.objects.filter(id=job.id, attempts=job.attempts, status=status).exists()
