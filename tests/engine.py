"""Running jobs in the test process: the engine's own claim, handler call, end and retry
(`jobs.runner.execute`) against the test database, without a Celery worker, and at a
time the test chooses instead of waiting for it."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from jobs import registry, runner
from jobs.context import JobContext
from jobs.models import Job


def _id(job: Job | uuid.UUID | str) -> str:
    return str(job.id if isinstance(job, Job) else job)


def run(job: Job | uuid.UUID | str, *, now: datetime | None = None) -> str:
    """Run the job once, as a worker handed its message at `now` would; the outcome."""
    type_name = (
        job.type
        if isinstance(job, Job)
        else Job.objects.filter(id=_id(job)).values_list("type", flat=True).first()
    )
    return runner.execute(_id(job), now=now, type_name=type_name)


def run_when_due(job: Job | uuid.UUID | str) -> str:
    """Run the job at the moment it is due: its `run_at` (a delayed or debounced job),
    or now."""
    return run(job, now=Job.objects.get(id=_id(job)).run_at)


def run_to_the_end(job: Job | uuid.UUID | str, *, max_runs: int = 10) -> list[str]:
    """Run the job, then each retry (or snooze) at the moment it was scheduled for,
    until a run ends otherwise. Returns every run's outcome."""
    outcomes: list[str] = []
    now = None
    while len(outcomes) < max_runs:
        outcomes.append(run(job, now=now))
        if outcomes[-1] not in ("retry", "snoozed"):
            return outcomes
        now = Job.objects.get(id=_id(job)).run_at
    raise AssertionError(f"job {_id(job)} still retrying after {max_runs} runs: {outcomes}")


def reloaded(job: Job | uuid.UUID | str) -> Job:
    return Job.objects.get(id=_id(job))


def events(job: Job | uuid.UUID | str) -> list[tuple[str, int]]:
    """The job's (kind, attempt) events in the order they were written."""
    return list(Job.objects.get(id=_id(job)).events.order_by("id").values_list("kind", "attempt"))


def event_kinds(job: Job | uuid.UUID | str) -> list[str]:
    return [kind for kind, _ in events(job)]


_type_numbers = itertools.count(1)


@contextmanager
def job_type(handler: Callable[[JobContext], Any], **options: Any) -> Iterator[registry.JobType]:
    """A job type of the test's own, named `tests.step<n>` (a new name each time),
    registered for the duration of the block."""
    jt = registry.register(
        registry.JobType(name=f"tests.step{next(_type_numbers)}", handler=handler, **options)
    )
    try:
        yield jt
    finally:
        registry.unregister(jt.name)
