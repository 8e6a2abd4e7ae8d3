"""What happens after jobs end: a batch settles, the jobs waiting on them are released,
their owners' webhooks are told.

Each follow-up registers two functions: `after_end(jobs)`, called once the end of
`jobs` is committed (wherever they ended: a worker's finish, a cancel, an expiry, a
stall too many), and `catch_up(now)`, which the sweeper runs to do what a crash between
a job's end and its follow-up left undone. Both may run for the same end, so a
follow-up must be idempotent (a lock, a unique constraint): it happens exactly once
however many times it is offered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from .models import FINISHED_STATUSES, Job

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FollowUp:
    name: str
    after_end: Callable[[list[Job]], None]
    catch_up: Callable[[datetime], int]


_follow_ups: dict[str, FollowUp] = {}


def register(
    name: str, *, after_end: Callable[[list[Job]], None], catch_up: Callable[[datetime], int]
) -> None:
    """Add a follow-up (from an AppConfig.ready); registering a name again replaces it."""
    _follow_ups[name] = FollowUp(name, after_end, catch_up)


def jobs_ended(jobs: Iterable[Job]) -> None:
    """Offer `jobs`, which have just reached a finished status, to every follow-up once
    the surrounding transaction commits (at once outside one). A follow-up that fails
    is logged and left to the sweeper's catch-up."""
    ended = [job for job in jobs if job.status in FINISHED_STATUSES]
    if ended and _follow_ups:
        transaction.on_commit(lambda: _offer(ended))


def _offer(jobs: list[Job]) -> None:
    for follow_up in list(_follow_ups.values()):
        try:
            follow_up.after_end(jobs)
        except Exception:
            log.warning(
                "Follow-up %s failed after %d job(s) ended; the sweeper catches up",
                follow_up.name,
                len(jobs),
                exc_info=True,
            )


def catch_up(now: datetime | None = None) -> int:
    """Run every follow-up's catch-up; returns how much they did in all."""
    now = now or timezone.now()
    done = 0
    for follow_up in list(_follow_ups.values()):
        try:
            done += follow_up.catch_up(now)
        except Exception:
            log.warning("Follow-up %s could not catch up", follow_up.name, exc_info=True)
    return done
