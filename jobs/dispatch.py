"""Sending jobs' messages to the broker, and recording that they were sent.

The database row is the source of truth: a job whose message could not be sent stays
undispatched, and the dispatch sweeper (jobs/sweepers.py) sends it later. A job due
further ahead than JOBS_BROKER_DELAY_MAX is not sent at all until the sweeper finds it
due.

New jobs are marked dispatched before they are written (`mark_new`), so the row and its
`dispatched` event are part of the same INSERT: a round trip and a commit fewer than
marking them once sent. `dispatch_new` sends them after the commit and takes the mark
back if sending fails; if the process dies in between, the dispatch sweeper resends them
after JOBS_REDISPATCH_AFTER. While the broker's breaker is open nothing is marked.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from . import messages
from .models import Job
from .store import job_store

log = logging.getLogger(__name__)


def sends_now(job: Job, now: datetime) -> bool:
    """Whether `job` goes to the broker now: it is due within JOBS_BROKER_DELAY_MAX."""
    horizon = now + timedelta(seconds=settings.JOBS_BROKER_DELAY_MAX)
    return job.run_at is None or job.run_at <= horizon


def mark_new(jobs: Sequence[Job], now: datetime) -> None:
    """Mark the new (not yet written) jobs that go to the broker now as dispatched."""
    if messages.publishing_paused():
        return
    for job in jobs:
        if not job.held and sends_now(job, now):
            job.dispatched_at = now


def dispatch_new(jobs: Sequence[Job]) -> None:
    """Send the messages of new jobs marked by `mark_new`, once they are committed."""
    jobs = [job for job in jobs if job.dispatched_at]
    if not jobs:
        return
    try:
        messages.publish(jobs, timezone.now())
    except Exception as exc:  # the broker is down or refused: the sweeper sends them later
        log.warning("Dispatch of %d new job(s) failed, left for the sweeper: %s", len(jobs), exc)
        job_store().unmark_dispatched(jobs)
        for job in jobs:
            job.dispatched_at = None


def dispatch(jobs: Iterable[Job], now: datetime | None = None) -> int:
    """Send one message per queued job (in one broker round trip per 1,000) and mark
    them dispatched; jobs due later than JOBS_BROKER_DELAY_MAX are left for the
    sweeper. If the broker cannot be reached nothing is marked. Returns how many were
    sent."""
    now = now or timezone.now()
    jobs = [job for job in jobs if sends_now(job, now)]
    if not jobs:
        return 0
    try:
        messages.publish(jobs, now)
    except Exception as exc:  # the broker is down or refused: the sweeper sends them later
        log.warning("Dispatch of %d job(s) failed, left for the sweeper: %s", len(jobs), exc)
        return 0
    for job in jobs:
        job.dispatched_at = now
    job_store().mark_dispatched(jobs, now)
    return len(jobs)
