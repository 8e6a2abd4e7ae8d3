"""What happens after jobs end: a batch settles, the jobs waiting on them are released,
their owners' webhooks are told.

Each follow-up registers two functions: `after_end(jobs)`, called once the end of
`jobs` is committed (wherever they ended: a worker's finish, a cancel, an expiry, a
stall too many), and `catch_up(now, since)`, which the sweeper runs to do what a crash
between a job's end and its follow-up left undone. Both may run for the same end, so a
follow-up must be idempotent (a lock, a unique constraint): it happens exactly once
however many times it is offered.

A catch-up reads only the ends since its last complete pass: each follow-up keeps a mark
(FollowUpMark) of the time its last complete pass began, and the next one is given
`since`, that mark less JOBS_FOLLOW_UP_LAG seconds, for an end stamped before the mark
but committed after that pass read. Once every JOBS_FOLLOW_UP_FULL_PASS_EVERY seconds,
and when there is no mark yet, it is given `since=None`: a full pass, which looks at
everything a crash may have left (as every pass did before the marks). A pass that
stopped at its batch size, or did not run, says so (`CaughtUp(complete=False)`) and
leaves the mark where it was. Two sweepers at once may both pass over the same ends;
the follow-up's idempotence keeps that harmless, and a mark only moves forward.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from . import registry
from .models import FINISHED_STATUSES, FollowUpMark, Job, Status

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaughtUp:
    """What a catch-up did; `complete` False when it stopped at its batch size or did
    not look (its mark then stays)."""

    done: int
    complete: bool = True


# catch_up(now, since): since None is a full pass.
CatchUp = Callable[[datetime, datetime | None], "int | CaughtUp"]


@dataclass(frozen=True)
class FollowUp:
    name: str
    after_end: Callable[[list[Job]], None]
    catch_up: CatchUp


_follow_ups: dict[str, FollowUp] = {}


def register(name: str, *, after_end: Callable[[list[Job]], None], catch_up: CatchUp) -> None:
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


# One per retention index (job_purge_succeeded, job_purge_failed: type, finished_at).
ENDED_GROUPS = ((Status.SUCCEEDED,), (Status.FAILED, Status.CANCELLED, Status.EXPIRED))


def ended_since(since: datetime, prefix: str = "", exclude_types: tuple[str, ...] = ()) -> list[Q]:
    """The jobs that ended since `since`, as one filter per retention index: a range of
    finished_at per registered type (`type IN (...)` leads, as in the indexes; the ends
    of a type no longer registered are not read). `prefix` names a related job
    ("depends_on__"). Run one query per filter and join their rows."""
    types = [name for name in registry.names() if name not in exclude_types]
    return [
        Q(
            **{
                f"{prefix}type__in": types,
                f"{prefix}status__in": list(group),
                f"{prefix}finished_at__gte": since,
            }
        )
        for group in ENDED_GROUPS
    ]


def catch_up(now: datetime | None = None) -> int:
    """Run every follow-up's catch-up from its mark; returns how much they did in all."""
    now = now or timezone.now()
    done = 0
    for follow_up in list(_follow_ups.values()):
        try:
            done += _catch_up(follow_up, now)
        except Exception:
            log.warning("Follow-up %s could not catch up", follow_up.name, exc_info=True)
    return done


def _catch_up(follow_up: FollowUp, now: datetime) -> int:
    since = since_mark(follow_up.name, now)
    outcome = follow_up.catch_up(now, since)
    if not isinstance(outcome, CaughtUp):
        outcome = CaughtUp(int(outcome))
    if outcome.complete:
        advance_mark(follow_up.name, now, full=since is None)
    return outcome.done


def since_mark(name: str, now: datetime) -> datetime | None:
    """Where the follow-up's next catch-up starts: its mark less the lag; None (a full
    pass) without a mark or when the last full pass is JOBS_FOLLOW_UP_FULL_PASS_EVERY old."""
    mark = FollowUpMark.objects.filter(name=name).first()
    full_every = timedelta(seconds=settings.JOBS_FOLLOW_UP_FULL_PASS_EVERY)
    if mark is None or mark.full_pass_at <= now - full_every:
        return None
    return mark.caught_up_to - timedelta(seconds=settings.JOBS_FOLLOW_UP_LAG)


def advance_mark(name: str, now: datetime, *, full: bool) -> None:
    """Record a complete pass begun at `now` (`full`: a full one); never moves back."""
    FollowUpMark.objects.bulk_create(
        [FollowUpMark(name=name, caught_up_to=now, full_pass_at=now)], ignore_conflicts=True
    )
    FollowUpMark.objects.filter(name=name, caught_up_to__lt=now).update(caught_up_to=now)
    if full:
        FollowUpMark.objects.filter(name=name, full_pass_at__lt=now).update(full_pass_at=now)
