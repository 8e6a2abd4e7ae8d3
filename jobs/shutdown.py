"""Graceful shutdown: on SIGTERM a worker finishes the jobs in hand (Celery's warm
shutdown); jobs still running after `WORKER_SHUTDOWN_GRACE` seconds are handed back to
the queue, so another worker takes them now instead of after the stall timeout."""

from __future__ import annotations

import logging
import threading

from celery.signals import worker_shutting_down
from celery.worker import state as worker_state
from django.conf import settings
from django.db import connection

from . import registry, services

log = logging.getLogger(__name__)


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
            count = services.hand_back(
                ids, f"Worker shutting down: not done after {settings.WORKER_SHUTDOWN_GRACE:g}s"
            )
            log.warning("Shutdown grace period over: handed %d job(s) back to the queue", count)
    except Exception:
        log.exception("Could not hand running jobs back at shutdown")
    finally:
        connection.close()


@worker_shutting_down.connect
def start_grace_period(**kwargs) -> None:
    timer = threading.Timer(settings.WORKER_SHUTDOWN_GRACE, hand_back_jobs_in_hand)
    timer.daemon = True
    timer.start()
