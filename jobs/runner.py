"""Running one job inside a worker: claim, heartbeat, call the handler, record the end."""

from __future__ import annotations

import logging
import traceback
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from . import followups, job_heartbeats, limits, registry
from .context import JobContext
from .dispatch import dispatch
from .errors import JobCancelled, JobLost, JobSnoozed, PermanentError
from .limits import Refusal
from .logging import job_log_context
from .models import Job, Status
from .outages import while_database_unavailable
from .store import job_store

log = logging.getLogger(__name__)

# A message may arrive a little before its ETA when clocks differ between hosts.
EARLY_TOLERANCE = timedelta(seconds=1)


class Outcome(StrEnum):
    """What became of a message: the value its task returns."""

    SUCCEEDED = Status.SUCCEEDED.value
    FAILED = Status.FAILED.value
    CANCELLED = Status.CANCELLED.value
    RETRY = "retry"  # failed, to run again later
    SNOOZED = "snoozed"  # its handler asked to run again later, not as a failure
    LOST = "lost"  # the run no longer held the job (recovered elsewhere): nothing written
    EARLY = Refusal.EARLY.value  # arrived before the job's time: sent again for then
    DUPLICATE = Refusal.DUPLICATE.value  # not queued: another message ran or will run it
    MISSING = Refusal.MISSING.value  # no such job
    EXPIRED = Refusal.EXPIRED.value  # its expiry passed before it could start
    HELD = Refusal.HELD.value  # a pause or a limit holds it back: it starts when released


class ClaimFailed(Exception):
    """The database stayed unreachable while claiming the job: the job was not taken,
    and its message goes back to the queue."""


def execute(job_id: str, *, now: datetime | None = None, type_name: str | None = None) -> Outcome:
    """Run the job if this message can claim it. `now` is the time of the claim, and
    of the retry's schedule if the attempt fails (the current time by default).
    `type_name`, the type the message was sent for, spares a type with limits (or
    that this process found gated) the claim that ignores them."""
    claimed_at = now or timezone.now()
    job, gated = admit(job_id, claimed_at, type_name, at_a_given_time=now is not None)
    if not isinstance(job, Job):
        return _refused(job_id, job, claimed_at)
    jt = registry.get(job.type)
    with job_log_context(job), job_heartbeats.holding(job):
        log.debug("Job started")
        try:
            result = jt.handler(JobContext(job))
        except JobCancelled:
            outcome = _finish(job, Status.CANCELLED, message="Cancelled")
        except JobLost:
            log.warning("Job was recovered elsewhere while running here; stopping")
            return Outcome.LOST
        except JobSnoozed as snoozed:
            outcome = _snooze(job, snoozed, now)
        except PermanentError as exc:
            outcome = _finish(job, Status.FAILED, error=str(exc) or type(exc).__name__)
        except Exception as exc:
            outcome = _fail_or_retry(job, jt, exc, now)
        else:
            outcome = _finish(job, Status.SUCCEEDED, result=result, progress=100, message="Done")
    if gated:
        _release_after(job)
    return outcome


def admit(
    job_id: str, now: datetime, type_name: str | None = None, *, at_a_given_time: bool = False
) -> tuple[Job | Refusal, bool]:
    """Claim the job, through its type's limits and pauses when it has any: the job
    (running) or why it did not start, and whether it went through the gate."""
    to_the_gate = type_name is not None and (
        _declares_limits(type_name) or limits.found_gated(type_name)
    )
    if not to_the_gate:
        job = claim(job_id, now)
        if job is not None:
            return job, False
    due = now + EARLY_TOLERANCE
    store = job_store()
    tries = 0

    def through_the_gate() -> Job | Refusal:
        nonlocal tries
        tries += 1
        if tries > 1 and (job := store.claimed_at(job_id, now)) is not None:
            return job  # a try whose answer was lost with its connection claimed it
        return limits.admit(job_id, now, due, at_a_given_time=at_a_given_time)

    try:
        return while_database_unavailable(through_the_gate, f"admitting job {job_id}"), True
    except (OperationalError, InterfaceError) as exc:
        raise ClaimFailed(f"Could not claim job {job_id}: {exc}") from exc


def _declares_limits(type_name: str) -> bool:
    try:
        return registry.get(type_name).limits.any
    except registry.UnknownJobType:
        return False


def claim(job_id: str, now: datetime) -> Job | None:
    """Take the job if it is queued and due and nothing gates it (see jobs/limits.py);
    None when it is not ours to run here.

    A connection that died while the worker was idle (a database restart) is replaced;
    while the database stays unreachable the claim is tried again for a few seconds,
    then ClaimFailed.
    """
    store = job_store()
    tries = 0

    def claim_once() -> Job | None:
        nonlocal tries
        tries += 1
        job = store.claim(job_id, now, due=now + EARLY_TOLERANCE)
        if job is None and tries > 1:
            # A try whose answer was lost with its connection may have claimed it: the
            # claim's time, written as started_at, tells that run apart.
            return store.claimed_at(job_id, now)
        return job

    try:
        return while_database_unavailable(claim_once, f"claiming job {job_id}")
    except (OperationalError, InterfaceError) as exc:
        raise ClaimFailed(f"Could not claim job {job_id}: {exc}") from exc


def _refused(job_id: str, refusal: Refusal, now: datetime) -> Outcome:
    """A message that cannot claim its job is acknowledged and dropped, except one that
    arrived before its job's time, which is sent again for the right moment."""
    if refusal == Refusal.EARLY:
        job = Job.objects.filter(id=job_id, status=Status.QUEUED).first()
        if job is not None:
            job_store().forget_message(job.id)
            dispatch([job], now=now)
    elif refusal == Refusal.HELD:
        log.info("Job %s held back by a pause or a limit", job_id)
    else:
        log.info("Dropped message for job %s (%s)", job_id, refusal)
    return Outcome(refusal.value)


def _release_after(job: Job) -> None:
    """A job that went through its type's gate has ended here: let the jobs its end
    made room for start."""
    try:
        limits.release_after(job.type)
    except (OperationalError, InterfaceError) as exc:  # the sweeper releases them later
        log.warning("Could not release jobs held for a slot of %s: %s", job.type, exc)


def _finish(job: Job, status: str, *, result: Any = None, error: str = "", **fields) -> Outcome:
    store = job_store()
    ended = while_database_unavailable(
        lambda: store.finish(job, status, timezone.now(), result=result, error=error, **fields),
        f"recording that job {job.id} {status}",
    )
    if not ended and not store.ended_as(job, status):
        # (A try whose answer was lost with its connection may have recorded it.)
        log.warning("Job was no longer held when it ended as %s; outcome discarded", status)
        return Outcome.LOST
    log.info("Job %s", status)
    job.status = status
    followups.jobs_ended([job])
    return Outcome(status)


def retried(jt: registry.JobType, exc: BaseException) -> bool:
    """Whether the type retries `exc`: one of its `retry_on`, none of its `fail_on`."""
    return isinstance(exc, jt.retry_on) and not isinstance(exc, jt.fail_on)


def _fail_or_retry(job: Job, jt: registry.JobType, exc: Exception, now: datetime | None) -> Outcome:
    error = f"{type(exc).__name__}: {exc}"
    detail = "".join(traceback.format_exception(exc, limit=20))
    if not retried(jt, exc):
        log.error("Job failed with an error its type does not retry: %s", error)
        return _finish(job, Status.FAILED, error=f"{error}\n\n{detail}")
    if job.attempts_used >= job.max_attempts:
        log.error("Job failed after %d attempts: %s", job.attempts_used, error)
        return _finish(job, Status.FAILED, error=f"{error}\n\n{detail}")
    delay = jt.backoff(job.attempts_used)
    now = now or timezone.now()
    run_at = now + timedelta(seconds=delay)
    rescheduled = while_database_unavailable(
        lambda: job_store().schedule_retry(job, now, run_at=run_at, error=error, delay=delay),
        f"scheduling a retry of job {job.id}",
    )
    if not rescheduled:
        return Outcome.LOST
    log.warning("Job attempt %d failed, retrying in %gs: %s", job.attempts_used, delay, error)
    _send_when_near(job, run_at, now)
    return Outcome.RETRY


def _snooze(job: Job, snoozed: JobSnoozed, now: datetime | None) -> Outcome:
    """Queue the job again for when its handler asked, unless it has snoozed
    JOBS_MAX_SNOOZES times already: then it fails."""
    if job.snoozes >= settings.JOBS_MAX_SNOOZES:
        error = (
            f"Snoozed {job.snoozes} times, the most a job may (JOBS_MAX_SNOOZES); "
            f"asked again: {snoozed}"
        )
        log.error("Job failed: %s", error)
        return _finish(job, Status.FAILED, error=error)
    now = now or timezone.now()
    run_at = now + timedelta(seconds=snoozed.delay)
    queued = while_database_unavailable(
        lambda: job_store().snooze(
            job, now, run_at=run_at, reason=snoozed.reason, delay=snoozed.delay
        ),
        f"snoozing job {job.id}",
    )
    if not queued:
        return Outcome.LOST
    log.info("Job snoozed for %gs: %s", snoozed.delay, snoozed.reason)
    _send_when_near(job, run_at, now)
    return Outcome.SNOOZED


def _send_when_near(job: Job, run_at: datetime, now: datetime) -> None:
    """Send the requeued job's message with its ETA; one due later than
    JOBS_BROKER_DELAY_MAX waits in the database for the dispatch sweeper."""
    if run_at - now <= timedelta(seconds=settings.JOBS_BROKER_DELAY_MAX):
        job.status, job.run_at = Status.QUEUED, run_at
        dispatch([job], now=now)
