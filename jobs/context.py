"""What a handler sees of its job (`JobContext`): the payload, checkpoints that record
progress and notice a cancellation, and reservations of side effects."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from .errors import JobCancelled, JobLost, JobSnoozed, PermanentError
from .models import Job, JobEffect
from .outages import while_database_unavailable
from .store import job_store

MILESTONES = (25, 50, 75)


class JobContext:
    """What a handler sees of its job: payload, progress checkpoints, effect reservations."""

    def __init__(self, job: Job):
        self.job = job
        self.payload: dict[str, Any] = job.payload
        self._progress = job.progress

    @property
    def attempt(self) -> int:
        """This run's attempt number: runs that snoozed do not count."""
        return self.job.attempts_used

    def snooze(self, seconds: float, reason: str = "") -> None:
        """Stop here and run the job again in `seconds` (0 < seconds <= JOBS_SNOOZE_MAX),
        without counting this run as a failed attempt: for "try again later" answers
        such as a provider's Retry-After. A job snoozes at most JOBS_MAX_SNOOZES times
        per round of attempts; the next snooze fails it."""
        if not 0 < seconds <= settings.JOBS_SNOOZE_MAX:
            raise ValueError(
                f"Snooze for more than 0 and at most {settings.JOBS_SNOOZE_MAX:g} seconds, "
                f"not {seconds!r}."
            )
        raise JobSnoozed(float(seconds), reason)

    def check_owner(self, owner_id: int, what: str) -> None:
        """Stop, failing at once, if the job has an owner and `what` (an object the
        job acts on, owned by `owner_id`) is someone else's. Jobs without an owner,
        created by the application, act on any user's objects."""
        if self.job.owner_id is not None and owner_id != self.job.owner_id:
            raise PermanentError(f"{what} does not belong to the owner of this job")

    def progress(self, percent: float, message: str = "") -> None:
        """Record progress and stop here if cancellation was requested.

        One UPDATE both writes the progress and proves the job is still ours and not
        being cancelled; only when it matches nothing do we read why. While the
        database restarts the write is tried again for a moment rather than failing
        the attempt (writing the same progress twice is harmless).
        """
        percent = max(0, min(100, int(percent)))
        passed = [m for m in MILESTONES if self._progress < m <= percent]
        milestone = passed[-1] if passed else None
        store = job_store()
        held = while_database_unavailable(
            lambda: store.progress(self.job, percent, message, milestone, timezone.now()),
            f"recording progress of job {self.job.id}",
        )
        if not held:
            self._raise_why_not_held()
        self._progress = percent

    def check_cancelled(self) -> None:
        """A checkpoint without progress: stop here if cancellation was requested."""
        held = while_database_unavailable(
            lambda: job_store().is_held(self.job),
            f"checking job {self.job.id} for cancellation",
        )
        if not held:
            self._raise_why_not_held()

    def _raise_why_not_held(self) -> None:
        if job_store().is_cancelling(self.job):
            raise JobCancelled()
        raise JobLost()

    @contextlib.contextmanager
    def effect(self, name: str) -> Iterator[bool]:
        """Reserve a side effect so it happens at most once for this job.

        Yields True when the effect is ours to perform, False when an earlier run
        already reserved it (then the caller skips it). If the block raises, the
        reservation is released so a retry may try again; if the process dies inside
        the block, the reservation stays and the effect is never repeated.
        """
        try:
            with transaction.atomic():
                effect = JobEffect.objects.create(job_id=self.job.id, name=name)
        except IntegrityError:
            yield False
            return
        try:
            yield True
        except BaseException:
            JobEffect.objects.filter(id=effect.id).delete()
            raise
        JobEffect.objects.filter(id=effect.id).update(done=True)
