"""Celery tasks: one per job type (named after it, bound when the app is ready), the
sweeper and Beat's way in. Bodies stay thin: the engine does the work."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from celery import Task
from celery.exceptions import Reject
from django.conf import settings

from jobsite.celery_app import app

from . import registry, runner, schedules, scheduling, sweepers
from .process_loss import JobRequest

log = logging.getLogger(__name__)


def bind_job_types() -> None:
    """Create the task of every registered job type that has none yet."""
    for jt in registry.all_types():
        if jt.name not in app.tasks:
            task_for(jt)


def task_for(jt: registry.JobType) -> Task:
    """The Celery task that runs jobs of type `jt`."""

    def run(job_id: str) -> str:
        try:
            return runner.execute(job_id, type_name=jt.name)
        except runner.ClaimFailed as exc:
            # Not taken: back to the queue for when the database answers again.
            log.warning("%s; message requeued", exc)
            raise Reject(exc, requeue=True) from exc

    run.__name__ = run.__qualname__ = jt.name.replace(".", "_")
    return app.task(
        name=jt.name,
        acks_late=True,
        reject_on_worker_lost=True,
        # Requeues the job at once if the pool process running it dies.
        Request=JobRequest,
        # The job's row is its result; a second copy per run in the result backend
        # costs several statements per job (see docs/performance.md).
        ignore_result=not settings.JOBS_STORE_TASK_RESULTS,
        soft_time_limit=jt.soft_time_limit,
        time_limit=jt.time_limit,
    )(run)


@app.task(name="jobs.sweep", ignore_result=True)
def sweep() -> dict[str, int]:
    return sweepers.sweep()


@app.task(name=schedules.ENQUEUE_TASK, bind=True, ignore_result=True)
def enqueue_scheduled(
    self: Task, type: str, payload: dict | None = None, priority: str = "normal", **kwargs
) -> str:
    """Beat's way in: enqueue a job of `type`, once per window of the firing schedule.

    Only a message Beat fired carries its firing time; one sent by the admin's "Run
    selected tasks" or from code is a run of its own, keyed by its task id."""
    name = getattr(self.request, "periodic_task_name", None) or kwargs.get("schedule")
    fired_at = getattr(self.request, schedules.FIRED_AT_HEADER, None)
    job = scheduling.enqueue_for_schedule(
        name,
        type,
        payload,
        priority=priority,
        fired_at=datetime.fromtimestamp(fired_at, UTC) if fired_at else None,
        run_id=self.request.id,
    )
    return str(job.id)
