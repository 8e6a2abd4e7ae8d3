"""Celery tasks: one per job type (named after it), and the sweeper. Bodies stay thin."""

from __future__ import annotations

import logging

from celery import Task
from celery.signals import worker_ready

from jobsite.celery_app import app

from . import runner, services
from .registry import JobType

log = logging.getLogger(__name__)

_tasks: dict[str, Task] = {}


def make_task(jt: JobType) -> Task:
    def run(job_id: str) -> str:
        return runner.execute(job_id)

    run.__name__ = run.__qualname__ = jt.name.replace(".", "_")
    task = app.task(
        name=jt.name,
        acks_late=True,
        reject_on_worker_lost=True,
        soft_time_limit=jt.soft_time_limit,
        time_limit=jt.soft_time_limit + 30,
    )(run)
    _tasks[jt.name] = task
    return task


def task_for(type_name: str) -> Task:
    return _tasks[type_name]


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
