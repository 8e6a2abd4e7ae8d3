"""Celery tasks: one per job type (named after it), and the sweeper. Bodies stay thin."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from celery import Task
from celery.exceptions import Reject
from celery.signals import (
    task_postrun,
    worker_ready,
    worker_shutdown,
)
from django.conf import settings
from django.db import connections

from jobsite.celery_app import app

from . import lost_workers, runner, schedules, services, shutdown  # noqa: F401 (connects its signal)
from .registry import JobType

log = logging.getLogger(__name__)

_tasks: dict[str, Task] = {}


def make_task(jt: JobType) -> Task:
    def run(job_id: str) -> str:
        try:
            return runner.execute(job_id)
        except runner.ClaimFailed as exc:
            # Not taken: back to the queue for when the database answers again.
            log.warning("%s; message requeued", exc)
            raise Reject(exc, requeue=True) from exc

    run.__name__ = run.__qualname__ = jt.name.replace(".", "_")
    task = app.task(
        name=jt.name,
        acks_late=True,
        reject_on_worker_lost=True,
        # Requeues the job at once if the pool process running it dies.
        Request=lost_workers.JobRequest,
        # The job's row is its result; a second copy per run in the result backend
        # costs several statements per job (see docs/performance.md).
        ignore_result=not settings.JOBS_STORE_TASK_RESULTS,
        soft_time_limit=jt.soft_time_limit,
        time_limit=jt.soft_time_limit + 30,
    )(run)
    _tasks[jt.name] = task
    return task


def task_for(type_name: str) -> Task:
    return _tasks[type_name]


@task_postrun.connect
def recycle_database_connections(**kwargs) -> None:
    # Drop connections that failed or are older than CONN_MAX_AGE, keep the rest
    # (settings.CELERY_DB_REUSE_MAX stops Celery from closing every connection around
    # every task). Unlike Django's per-request close_old_connections, no health-check
    # query per task: a connection that died while idle fails the claim, which closes
    # it and claims again on a new one.
    for conn in connections.all(initialized_only=True):
        obsolete = conn.close_at is not None and time.monotonic() >= conn.close_at
        if conn.connection is not None and (conn.errors_occurred or obsolete):
            conn.close()


@app.task(name="jobs.sweep", ignore_result=True)
def sweep() -> dict[str, int]:
    return services.sweep()


@worker_ready.connect
def sweep_when_a_worker_starts(**kwargs) -> None:
    # Recover what a crashed worker left behind without waiting for Beat.
    try:
        sweep.apply_async(queue="default", retry=False)
    except Exception:
        log.warning("Could not schedule the start-up sweep", exc_info=True)


@app.task(name=schedules.ENQUEUE_TASK, bind=True, ignore_result=True)
def enqueue_scheduled(
    self: Task, type: str, payload: dict | None = None, priority: str = "normal", **kwargs
) -> str:
    """Beat's way in: enqueue a job of `type`, once per window of the firing schedule.

    Only a message Beat fired carries its firing time; one sent by the admin's "Run
    selected tasks" or from code is a run of its own, keyed by its task id."""
    name = getattr(self.request, "periodic_task_name", None) or kwargs.get("schedule")
    fired_at = getattr(self.request, schedules.FIRED_AT_HEADER, None)
    job = services.enqueue_for_schedule(
        name,
        type,
        payload,
        priority=priority,
        fired_at=datetime.fromtimestamp(fired_at, UTC) if fired_at else None,
        run_id=self.request.id,
    )
    return str(job.id)


@worker_ready.connect
def enqueue_startup_jobs(**kwargs) -> None:
    try:
        services.enqueue_startup_jobs()
    except Exception:
        log.warning("Could not enqueue the start-up jobs", exc_info=True)


_heartbeat = None


@worker_ready.connect
def start_heartbeat(sender=None, **kwargs) -> None:
    global _heartbeat
    from .heartbeat import HeartbeatWriter

    queues = sorted(q.name for q in sender.app.amqp.queues.consume_from.values())
    _heartbeat = HeartbeatWriter(sender.hostname, queues, settings.WORKER_HEARTBEAT_INTERVAL)
    _heartbeat.start()


@worker_shutdown.connect
def stop_heartbeat(**kwargs) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()
