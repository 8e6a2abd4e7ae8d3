"""Job fields on every log line a job writes: `job_id`, `job_type`, `attempt`, `queue`."""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator

_current: contextvars.ContextVar[dict | None] = contextvars.ContextVar("job", default=None)


@contextlib.contextmanager
def job_log_context(job) -> Iterator[None]:
    token = _current.set(
        {"job_id": str(job.id), "job_type": job.type, "attempt": job.attempts, "queue": job.queue}
    )
    try:
        yield
    finally:
        _current.reset(token)


class JobContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        fields = _current.get()
        if fields:
            for key, value in fields.items():
                setattr(record, key, value)
        return True
