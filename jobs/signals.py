"""What a worker does around its tasks, on Celery's signals: recycle database
connections, sweep and enqueue the start-up jobs when it starts, write its liveness row,
and on SIGTERM hand back the jobs still running after WORKER_SHUTDOWN_GRACE seconds (Celery's
warm shutdown lets them finish until then), so another worker takes them now instead of
after the stall timeout."""

from __future__ import annotations

import logging
import threading
import time

from celery.signals import task_postrun, worker_ready, worker_shutdown, worker_shutting_down
from celery.worker import state as worker_state
from django.conf import settings
from django.db import connection, connections

from . import registry, scheduling, sweepers
from .tasks import sweep
from .worker_liveness import LivenessWriter

log = logging.getLogger(__name__)


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


@worker_ready.connect
def sweep_when_a_worker_starts(**kwargs) -> None:
    # Recover what a crashed worker left behind without waiting for Beat.
    try:
        sweep.apply_async(queue="default", retry=False)
    except Exception:
        log.warning("Could not schedule the start-up sweep", exc_info=True)


@worker_ready.connect
def enqueue_startup_jobs(**kwargs) -> None:
    try:
        scheduling.enqueue_startup_jobs()
    except Exception:
        log.warning("Could not enqueue the start-up jobs", exc_info=True)


_liveness: LivenessWriter | None = None


@worker_ready.connect
def start_liveness(sender=None, **kwargs) -> None:
    global _liveness
    queues = sorted(q.name for q in sender.app.amqp.queues.consume_from.values())
    _liveness = LivenessWriter(
        sender.hostname, queues, settings.WORKER_HEARTBEAT_INTERVAL, _pool_size(sender)
    )
    _liveness.start()


def _pool_size(consumer) -> int:
    # The solo pool's limit is 1; prefork's and threads' their --concurrency.
    return getattr(consumer.pool, "limit", None) or consumer.controller.concurrency or 1


@worker_shutdown.connect
def stop_liveness(**kwargs) -> None:
    if _liveness is not None:
        _liveness.stop()


@worker_shutting_down.connect
def start_grace_period(**kwargs) -> None:
    timer = threading.Timer(settings.WORKER_SHUTDOWN_GRACE, hand_back_jobs_in_hand)
    timer.daemon = True
    timer.start()


def jobs_in_hand() -> list[str]:
    """Ids of the jobs this worker's processes are running (known to the main process)."""
    names = set(registry.names())
    return [
        str(request.args[0])
        for request in list(worker_state.active_requests)
        if request.name in names and request.args
    ]


def hand_back_jobs_in_hand() -> None:
    try:
        ids = jobs_in_hand()
        if ids:
            count = sweepers.hand_back(
                ids, f"Worker shutting down: not done after {settings.WORKER_SHUTDOWN_GRACE:g}s"
            )
            log.warning("Shutdown grace period over: handed %d job(s) back to the queue", count)
    except Exception:
        log.exception("Could not hand running jobs back at shutdown")
    finally:
        connection.close()
