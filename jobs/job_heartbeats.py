"""Job heartbeats: while a job runs, its row's `heartbeat_at` is kept fresh, so the stall
sweeper can tell a slow job from a dead worker.

One background thread per worker process refreshes every job the process holds with one
UPDATE each interval (a prefork child holds one job, a threads-pool process several);
a job that reports progress refreshes its own heartbeat as it goes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

from . import process_loss
from .models import Job
from .store import job_store

log = logging.getLogger(__name__)


class HeartbeatThread:
    def __init__(self, interval: float):
        self.interval = interval
        self.held: dict[str, int] = {}  # job id -> attempt number holding it
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="job-heartbeats", daemon=True)
        self._thread.start()

    def add(self, job: Job) -> None:
        with self._lock:
            self.held[str(job.id)] = job.attempts

    def remove(self, job: Job) -> None:
        with self._lock:
            self.held.pop(str(job.id), None)

    def beat(self) -> int:
        """Refresh the heartbeat of every held job; returns how many rows were touched."""
        with self._lock:
            held = list(self.held.items())
        if not held:
            return 0
        # The attempt number fences the update: a job recovered and claimed elsewhere
        # is not kept alive by its old holder.
        return job_store().heartbeat(held, timezone.now())

    def _run(self) -> None:
        stop = threading.Event()
        while not stop.wait(self.interval):
            try:
                close_old_connections()
                self.beat()
            except Exception:
                log.exception("Heartbeat failed")
                connection.close()


_thread: HeartbeatThread | None = None
_thread_pid: int | None = None
_start_lock = threading.Lock()


def _heartbeat_thread() -> HeartbeatThread:
    """This process's heartbeat thread, started on first use (after any fork)."""
    global _thread, _thread_pid
    with _start_lock:
        if _thread is None or _thread_pid != os.getpid():
            _thread = HeartbeatThread(interval=max(settings.JOBS_LOCK_DURATION / 4, 0.5))
            _thread_pid = os.getpid()
        return _thread


@contextlib.contextmanager
def holding(job: Job) -> Iterator[None]:
    """Keep `job`'s heartbeat fresh for the duration of the block, and let the worker's
    main process know which attempt this process holds should it die."""
    thread = _heartbeat_thread()
    thread.add(job)
    process_loss.hold(job.id, job.attempts)
    try:
        yield
    finally:
        process_loss.release()
        thread.remove(job)
