"""A prefork pool process killed mid-job (OOM killer, SIGKILL): its job goes back to the
queue at once instead of waiting for its lock to expire.

The worker's main process learns of the death right away (Celery fails the request with
`WorkerLostError`) but not which attempt of the job the dead process held. Each pool
process writes the job and attempt it holds into its slot of a small table of shared
memory, created in the main process before the pool forks; the main process reads the
dead process's slot and requeues the job only if that attempt still holds it.

Celery notices a dead pool process when its sentinel pipe closes, but when the exit is
not yet reapable at that moment it only looks again at its next pool check, up to 5 s
later; the worker here checks the pool every POOL_CHECK_INTERVAL seconds.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import uuid

from billiard.einfo import ExceptionWithTraceback
from billiard.exceptions import WorkerLostError
from billiard.process import current_process
from celery import bootsteps
from celery.worker import state as worker_state
from celery.worker.request import Request
from django.db import connection

from jobsite.celery_app import app

from . import sweepers

log = logging.getLogger(__name__)

SLOTS = 256
# pid, attempt, job id. A slot is valid only while its pid is set: the pid is cleared
# first and written last, so a process killed halfway through writing leaves no match.
_SLOT = struct.Struct("<qq16s")
_PID = struct.Struct("<q")

# MAP_SHARED and anonymous: shared with every pool process forked after this import.
_table = mmap.mmap(-1, SLOTS * _SLOT.size)


def _slot_offset() -> int:
    index = getattr(current_process(), "index", None)
    return (index if index is not None else os.getpid()) % SLOTS * _SLOT.size


def hold(job_id: uuid.UUID | str, attempt: int) -> None:
    """Record that this process holds `attempt` of job `job_id`."""
    offset = _slot_offset()
    _PID.pack_into(_table, offset, 0)
    _SLOT.pack_into(_table, offset, 0, attempt, _uuid_bytes(job_id))
    _PID.pack_into(_table, offset, os.getpid())


def release() -> None:
    """This process holds no job any more."""
    _PID.pack_into(_table, _slot_offset(), 0)


def attempt_held_by(pid: int, job_id: str) -> int | None:
    """The attempt of job `job_id` that process `pid` held, if it recorded one."""
    wanted = _uuid_bytes(job_id)
    for offset in range(0, SLOTS * _SLOT.size, _SLOT.size):
        slot_pid, attempt, job = _SLOT.unpack_from(_table, offset)
        if slot_pid == pid and job == wanted:
            return attempt
    return None


def _uuid_bytes(job_id: uuid.UUID | str) -> bytes:
    return (job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(job_id)).bytes


def requeue_job_of_lost_process(
    pid: int | None, job_id: str, reason: str, *, send: bool = True
) -> bool:
    """Requeue the job a dead pool process held, through the attempt fence, and send
    its message unless `send` is false. True when the job went back to the queue (or
    failed, after too many stalls)."""
    attempt = attempt_held_by(pid, job_id) if pid else None
    if attempt is None:
        log.info("Pool process %s died before holding job %s; nothing to recover", pid, job_id)
        return False
    return sweepers.recover_lost(job_id, attempt, reason, send=send)


class JobRequest(Request):
    """A job's task request: when its pool process dies, the job is recovered at once."""

    def on_failure(self, exc_info, send_failed_event=True, return_ok=False):
        if self._lost_its_process(exc_info.exception) and self.args:
            try:
                requeue_job_of_lost_process(
                    self.worker_pid,
                    str(self.args[0]),
                    f"Worker process {self.worker_pid} died while running it: {exc_info.exception}",
                    # A worker shutting down does not wait on the broker: the message
                    # Celery requeues, or else the dispatch sweeper, runs the job.
                    send=not (worker_state.should_stop or worker_state.should_terminate),
                )
            except Exception:
                log.exception("Could not recover the job of a lost pool process")
            finally:
                # The main process forks replacement pool processes: it keeps no
                # database connection open.
                connection.close()
        return super().on_failure(exc_info, send_failed_event, return_ok)

    def _lost_its_process(self, exc: BaseException) -> bool:
        if isinstance(exc, ExceptionWithTraceback):
            exc = exc.exc
        if isinstance(exc, WorkerLostError):
            return True
        # Billiard reports some deaths as the exit itself; Celery treats those as lost
        # too unless the task was revoked or cancelled on purpose.
        return isinstance(exc, SystemExit | KeyboardInterrupt) and not (
            self._already_cancelled or self._already_revoked
        )


POOL_CHECK_INTERVAL = 0.5


class PoolProcessWatch(bootsteps.StartStopStep):
    """Check the prefork pool for dead processes every POOL_CHECK_INTERVAL seconds."""

    requires = ("celery.worker.components:Pool",)

    def start(self, worker) -> None:
        pool = getattr(worker.pool, "_pool", None)
        if worker.hub is not None and hasattr(pool, "maintain_pool"):
            worker.hub.call_repeatedly(POOL_CHECK_INTERVAL, pool.maintain_pool)


app.steps["worker"].add(PoolProcessWatch)
