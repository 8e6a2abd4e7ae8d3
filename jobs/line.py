"""Where a queued job is in its line: how many jobs a worker takes before it, and about
when it starts.

The jobs ahead are the queued jobs of the same queue a worker takes first (higher
priority, or the same priority and created earlier) that could start now: not held, due.
They are counted no further than `JOBS_LINE_CAP`, through the partial index job_queued_line
(queue, -priority, created_at, run_at) on the queued rows not held: two index range reads
that stop at the cap.

The estimate spreads the jobs ahead over the worker slots consuming the queue (each alive
worker's concurrency, from its liveness row): each slot frees when its running job is
expected to end, then takes the next job ahead, each taking the mean run time of the
latest `JOBS_LINE_SAMPLE` succeeded jobs of the type. What it reads besides the count is
kept `JOBS_LINE_CACHE_SECONDS` per queue and type in the process.
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from django.conf import settings
from django.utils import timezone

from .models import Held, Job, Status
from .store import job_store
from .worker_liveness import alive_workers


@dataclass(frozen=True)
class Place:
    ahead: int
    ahead_capped: bool  # there are at least `ahead` jobs ahead, maybe more
    estimated_start_at: datetime | None  # None: no worker takes the queue, or no history
    estimated_wait_seconds: int | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ahead": self.ahead,
            "ahead_capped": self.ahead_capped,
            "estimated_start_at": self.estimated_start_at,
            "estimated_wait_seconds": self.estimated_wait_seconds,
        }


class Waiting(NamedTuple):
    """What `place_in_line` reads of a job, when a row was read instead of a `Job`."""

    id: Any
    status: str
    type: str
    queue: str
    priority: int
    created_at: datetime
    held: str
    run_at: datetime | None


def place_in_line(
    job: Job | Waiting, now: datetime | None = None, ahead: int | None = None
) -> Place | None:
    """The job's place, or None unless it is queued, not held and due (a held or delayed
    job waits for its reason, which its message and `held` say, not for a line). `ahead`:
    the jobs ahead as `count_ahead` counted them at `now`, when the caller read them."""
    now = now or timezone.now()
    if job.status != Status.QUEUED or job.held != Held.NO:
        return None
    if job.run_at is not None and job.run_at > now:
        return None
    if ahead is None:
        ahead = count_ahead(job, now)
    capped = ahead > settings.JOBS_LINE_CAP
    ahead = min(ahead, settings.JOBS_LINE_CAP)
    wait = estimated_wait(job.queue, job.type, ahead, now)
    if wait is None:
        return Place(ahead, capped, None, None)
    return Place(ahead, capped, now + timedelta(seconds=wait), round(wait))


def place_data(
    job: Job | Waiting, now: datetime | None = None, ahead: int | None = None
) -> dict[str, Any] | None:
    """`place_in_line` as a dict of the API's `line` fields (LineSerializer), or None."""
    place = place_in_line(job, now, ahead)
    return place.as_dict() if place is not None else None


def count_ahead(job: Job | Waiting, now: datetime) -> int:
    """The jobs a worker takes before `job`, counted up to one past the cap."""
    return job_store().count_ahead(job.queue, job.priority, job.created_at, now, up_to=count_to())


def count_to() -> int:
    """How far the jobs ahead are counted: one past the cap, to tell it was passed."""
    return settings.JOBS_LINE_CAP + 1


def estimated_wait(queue: str, job_type: str, ahead: int, now: datetime) -> float | None:
    """Seconds until a worker slot of `queue` is expected to take a `job_type` job with
    `ahead` jobs before it; None when no worker takes the queue or the type has no
    finished run to go by."""
    each = mean_run_seconds(job_type)
    slots = worker_slots(queue)
    if each is None or slots == 0:
        return None
    left = [_time_left(started_at, run_type, each, now) for started_at, run_type in running(queue)]
    return start_after(ahead, slots, left, each)


def start_after(ahead: int, slots: int, running_left: list[float], each: float) -> float:
    """When the job after `ahead` others starts, if `slots` slots take jobs in turn, the
    running ones freeing after `running_left` seconds and each later job taking `each`."""
    busy = sorted(running_left)[:slots]
    free_at = busy + [0.0] * (slots - len(busy))
    heapq.heapify(free_at)
    for _ in range(ahead):
        heapq.heapreplace(free_at, free_at[0] + each)
    return free_at[0]


def _time_left(started_at: datetime | None, run_type: str, each: float, now: datetime) -> float:
    typical = mean_run_seconds(run_type)
    if typical is None:
        typical = each
    elapsed = (now - started_at).total_seconds() if started_at else 0.0
    return max(typical - elapsed, 0.0)


# --- what the estimate reads, cached briefly ------------------------------------------

_cache: dict[tuple, tuple[float, Any]] = {}
_cache_lock = threading.Lock()


def _cached(key: tuple, compute):
    now = time.monotonic()
    with _cache_lock:
        found = _cache.get(key)
    if found is not None and found[0] > now:
        return found[1]
    value = compute()
    with _cache_lock:
        _cache[key] = (now + settings.JOBS_LINE_CACHE_SECONDS, value)
    return value


def forget_cached() -> None:
    """Read everything afresh on the next estimate."""
    with _cache_lock:
        _cache.clear()


def mean_run_seconds(job_type: str) -> float | None:
    """The mean run time of the type's latest succeeded jobs, or None without any."""
    return _cached(("mean", job_type), lambda: _mean_run_seconds(job_type))


def _mean_run_seconds(job_type: str) -> float | None:
    # The newest entries of job_purge_succeeded (type, finished_at), read backwards.
    runs = (
        Job.objects.filter(type=job_type, status=Status.SUCCEEDED, started_at__isnull=False)
        .order_by("-finished_at")
        .values_list("started_at", "finished_at")[: settings.JOBS_LINE_SAMPLE]
    )
    seconds = [(finished - started).total_seconds() for started, finished in runs]
    return max(sum(seconds) / len(seconds), 0.0) if seconds else None


def worker_slots(queue: str) -> int:
    """How many jobs of `queue` the alive workers can run at once."""
    return _cached(("slots", queue), lambda: _worker_slots(queue))


def _worker_slots(queue: str) -> int:
    return sum(w.concurrency for w in alive_workers() if queue in w.queues)


def running(queue: str) -> list[tuple[datetime | None, str]]:
    """(started_at, type) of the queue's running jobs."""
    return _cached(("running", queue), lambda: _running(queue))


def _running(queue: str) -> list[tuple[datetime | None, str]]:
    return list(
        Job.objects.filter(status=Status.RUNNING, queue=queue)
        .order_by()
        .values_list("started_at", "type")
    )


# --- in words ------------------------------------------------------------------------


def in_words(place: Place | dict | None) -> str:
    """'3rd in line, about 40 s', 'next in line', '100+ jobs ahead'; '' without a place.
    static/js/reports.js says the same in the browser."""
    if place is None:
        return ""
    if isinstance(place, Place):
        place = place.as_dict()
    ahead = place["ahead"]
    if place["ahead_capped"]:
        where = f"{ahead}+ jobs ahead"
    elif ahead == 0:
        where = "next in line"
    else:
        where = f"{ordinal(ahead + 1)} in line"
    wait = place["estimated_wait_seconds"]
    return where if wait is None else f"{where}, about {rounded_duration(wait)}"


def ordinal(n: int) -> str:
    if 10 <= n % 100 <= 20:
        suffix = "th"
    else:
        suffix = {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def rounded_duration(seconds: float) -> str:
    """To 5 s (5 s at least) under a minute, to the minute under an hour, then to the hour."""
    if (fives := max(5, 5 * _half_up(seconds / 5))) < 60:
        return f"{fives} s"
    if (minutes := max(1, _half_up(seconds / 60))) < 60:
        return f"{minutes} min"
    return f"{_half_up(seconds / 3600)} h"


def _half_up(x: float) -> int:
    return math.floor(x + 0.5)  # as JavaScript's Math.round
