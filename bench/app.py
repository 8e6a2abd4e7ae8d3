"""The Celery app bench workers load: the project's own app, plus the raw baseline task
and, when `BENCH_SQL_COUNT_DIR` is set, a count of the SQL statements each worker
process sends (written to a file per process when it exits)."""

from __future__ import annotations

import os
from pathlib import Path

from celery.signals import task_postrun, worker_process_init, worker_process_shutdown

from jobsite.celery_app import app

RAW_TASK = "bench.raw_noop"
# Every finished task adds one here (when BENCH_DONE_COUNTER is set), the raw task and
# job tasks alike, so the benchmark sees the moment the last one ends.
DONE_COUNTER = "bench:done"
_statements = 0
_redis = None


@app.task(name=RAW_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def raw_noop(job_id: str) -> None:
    """The baseline: a Celery task that does nothing, with the job tasks' delivery options."""
    return None


def _count(execute, sql, params, many, context):
    global _statements
    _statements += 1
    return execute(sql, params, many, context)


def _instrument(connection, **kwargs) -> None:
    connection.execute_wrappers.append(_count)


@worker_process_init.connect
def start_counting(**kwargs) -> None:
    if os.environ.get("BENCH_SQL_COUNT_DIR"):
        from django.db.backends.signals import connection_created

        connection_created.connect(_instrument, weak=False)


@task_postrun.connect
def count_done(sender=None, **kwargs) -> None:
    global _redis
    if not os.environ.get("BENCH_DONE_COUNTER") or not _is_measured(sender.name):
        return
    if _redis is None:
        import redis

        _redis = redis.Redis.from_url(os.environ["REDIS_URL"])
    _redis.incr(DONE_COUNTER)


def _is_measured(task_name: str) -> bool:
    """The raw task and job tasks count; the worker's own start-up sweep does not."""
    from jobs import registry

    return task_name == RAW_TASK or task_name in registry.names()


@worker_process_shutdown.connect
def write_count(**kwargs) -> None:
    folder = os.environ.get("BENCH_SQL_COUNT_DIR")
    if folder:
        Path(folder, f"{os.getpid()}.count").write_text(str(_statements))
