"""Riding out a database restart inside a worker: fenced writes are tried again on a
new connection for a short while instead of failing the job."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection

log = logging.getLogger(__name__)

T = TypeVar("T")


def while_database_unavailable(write: Callable[[], T], what: str) -> T:
    """Run `write`; while the database cannot be reached (restarting, failing over),
    run it again on a new connection after a short pause, for up to
    JOBS_DATABASE_RETRY_SECONDS (at most a quarter of the lock duration, so the job's
    lock outlives the waiting), then let the error through.

    Only writes fenced on the row state they expect are run this way: one that did
    commit before its connection dropped matches nothing the second time.
    """
    window = min(settings.JOBS_DATABASE_RETRY_SECONDS, settings.JOBS_LOCK_DURATION / 4)
    deadline = time.monotonic() + window
    pause = 0.1
    while True:
        try:
            return write()
        except (OperationalError, InterfaceError) as exc:
            if connection.in_atomic_block or time.monotonic() + pause > deadline:
                raise
            log.warning("Database unavailable while %s (%s); trying again", what, exc)
            connection.close()
            time.sleep(pause)
            pause = min(pause * 2, 1.0)
