"""The job table over time, for the dashboard's charts and /metrics: jobs finished per
time bucket by status, p50/p95 of wait and run times per type, and jobs per queue.

Definitions (docs/operations.md#history-charts):
- a job counts as finished in the bucket its `finished_at` falls in;
- run time is `started_at` → `finished_at` of jobs that succeeded or failed (a job
  cancelled or expired while queued never ran this round);
- wait time is `created_at` → `started_at` of those jobs when they started once
  (`attempts = 1`): a job's row keeps only its last start, so for a retried job the first
  start is gone and the gap would count its failed attempts and their backoff.

Everything is read from the rows finished in the window, through the retention indexes
(type, finished_at) on the finished rows, so the cost follows the window, not the table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Count, Func, IntegerField, Q
from django.utils import timezone

from . import registry
from .models import Held, Job, Status

FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.EXPIRED)
RAN = (Status.SUCCEEDED, Status.FAILED)
# One query per retention index: each reads the finished rows of its statuses.
STATUS_GROUPS = ([Status.SUCCEEDED], [Status.FAILED, Status.CANCELLED, Status.EXPIRED])
QUANTILES = (0.5, 0.95)
# Where PostgreSQL's percentile_cont is not at hand (SQLite): the percentiles of the
# latest this many jobs of the window.
SAMPLE = 20_000


@dataclass(frozen=True)
class Window:
    name: str
    label: str
    span: timedelta
    bucket: timedelta

    @property
    def buckets(self) -> int:
        return int(self.span / self.bucket)


WINDOWS = {
    "hour": Window("hour", "Last hour", timedelta(hours=1), timedelta(minutes=1)),
    "day": Window("day", "Last day", timedelta(days=1), timedelta(minutes=15)),
}


class UnknownWindow(ValueError):
    def __init__(self, name: str):
        super().__init__(f"Unknown window {name!r}: one of {', '.join(WINDOWS)}.")


def window(name: str) -> Window:
    try:
        return WINDOWS[name]
    except KeyError:
        raise UnknownWindow(name) from None


class EpochBucket(Func):
    """The start, in whole seconds since the epoch, of the `size`-second bucket a
    timestamp falls in: whole buckets on both databases, a row on a bucket's first
    microsecond included."""

    output_field = IntegerField()

    def __init__(self, expression: Any, size: int):
        super().__init__(expression)
        self.size = int(size)

    def as_postgresql(self, compiler, connection, **extra):
        template = (
            f"(FLOOR(EXTRACT(EPOCH FROM %(expressions)s) / {self.size}) * {self.size})::bigint"
        )
        return self.as_sql(compiler, connection, template=template, **extra)

    def as_sqlite(self, compiler, connection, **extra):
        template = f"(unixepoch(%(expressions)s) / {self.size} * {self.size})"
        return self.as_sql(compiler, connection, template=template, **extra)


def _finished_since(since: datetime):
    # `type IN (registered types)` lets each type's range be read from the retention
    # indexes, whose first column is the type.
    return Job.objects.order_by().filter(finished_at__gte=since, type__in=registry.names())


def bounds(win: Window, now: datetime | None = None) -> tuple[datetime, datetime]:
    """The start of the window's first bucket and the end of its last, the bucket under
    way at `now` included."""
    now = now or timezone.now()
    size = int(win.bucket.total_seconds())
    end = (math.floor(now.timestamp() / size) + 1) * size
    return datetime.fromtimestamp(end, UTC) - win.span, datetime.fromtimestamp(end, UTC)


def finished_per_bucket(win: Window, now: datetime | None = None) -> list[dict[str, Any]]:
    """Jobs finished in each bucket of the window by status, oldest bucket first:
    [{"start": datetime, "succeeded": n, "failed": n, "cancelled": n, "expired": n}]."""
    start, _ = bounds(win, now)
    size = int(win.bucket.total_seconds())
    counts: dict[tuple[int, str], int] = {}
    for status_group in STATUS_GROUPS:
        rows = (
            _finished_since(start)
            .filter(status__in=status_group)
            .annotate(bucket=EpochBucket("finished_at", size))
            .values("bucket", "status")
            .annotate(n=Count("id"))
        )
        for row in rows:
            counts[(row["bucket"], row["status"])] = row["n"]
    first = int(start.timestamp())
    return [
        {
            "start": datetime.fromtimestamp(first + i * size, UTC),
            **{s.value: counts.get((first + i * size, s.value), 0) for s in FINISHED},
        }
        for i in range(win.buckets)
    ]


def finished_totals(buckets: list[dict[str, Any]]) -> dict[str, int]:
    return {s.value: sum(b[s.value] for b in buckets) for s in FINISHED}


def finished_counts(win: Window, now: datetime | None = None) -> dict[str, int]:
    """Jobs finished in the window by status: the sum of its buckets, in one count."""
    start, _ = bounds(win, now)
    counts = dict.fromkeys((s.value for s in FINISHED), 0)
    for status_group in STATUS_GROUPS:
        rows = _finished_since(start).filter(status__in=status_group)
        for row in rows.values("status").annotate(n=Count("id")):
            counts[row["status"]] = row["n"]
    return counts


def durations(win: Window, now: datetime | None = None) -> list[dict[str, Any]]:
    """Per job type, the p50 and p95 of wait and run times (seconds) of the jobs that
    succeeded or failed in the window, with how many jobs each figure is made of:
    [{"type", "runs", "run_p50", "run_p95", "waits", "wait_p50", "wait_p95"}], by type.
    A figure is None when no job counts for it."""
    start, _ = bounds(win, now)
    if connection.vendor == "postgresql":
        rows = _durations_in_postgresql(start)
    else:
        rows = _durations_in_python(start)
    return sorted(rows, key=lambda row: row["type"])


# One arm per status, so that each reads its retention index (a `status IN` across the
# two partial indexes would read the whole table).
_RAN_ROWS = f"""
    SELECT type, attempts, created_at, started_at, finished_at FROM "{Job._meta.db_table}"
    WHERE status = %s AND type = ANY(%s) AND finished_at >= %s AND started_at IS NOT NULL"""
_DURATIONS_SQL = f"""
SELECT type,
    count(*),
    percentile_cont(%s) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM finished_at - started_at)),
    count(*) FILTER (WHERE attempts = 1),
    percentile_cont(%s) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM started_at - created_at))
        FILTER (WHERE attempts = 1)
FROM ({" UNION ALL ".join([_RAN_ROWS] * len(RAN))}) AS ran
GROUP BY type
"""


def _durations_in_postgresql(start: datetime) -> list[dict[str, Any]]:
    """Exact percentiles, computed in the database."""
    types = registry.names()
    params = [list(QUANTILES), list(QUANTILES)]
    for status in RAN:
        params += [status.value, types, start]
    with connection.cursor() as cursor:
        cursor.execute(_DURATIONS_SQL, params)
        return [
            _summary(type_name, runs, run_q or [], waits, wait_q or [])
            for type_name, runs, run_q, waits, wait_q in cursor.fetchall()
        ]


def _durations_in_python(start: datetime) -> list[dict[str, Any]]:
    rows = (
        _finished_since(start)
        .filter(status__in=RAN, started_at__isnull=False)
        .order_by("-finished_at")
        .values_list("type", "attempts", "created_at", "started_at", "finished_at")[:SAMPLE]
    )
    runs: dict[str, list[float]] = {}
    waits: dict[str, list[float]] = {}
    for type_name, attempts, created_at, started_at, finished_at in rows:
        runs.setdefault(type_name, []).append((finished_at - started_at).total_seconds())
        waits.setdefault(type_name, [])
        if attempts == 1:
            waits[type_name].append((started_at - created_at).total_seconds())
    return [
        _summary(
            type_name,
            len(values),
            [percentile(values, q) for q in QUANTILES] if values else [],
            len(waits[type_name]),
            [percentile(waits[type_name], q) for q in QUANTILES] if waits[type_name] else [],
        )
        for type_name, values in runs.items()
    ]


def _summary(
    type_name: str, runs: int, run_q: list[float], waits: int, wait_q: list[float]
) -> dict[str, Any]:
    def at(values: list[float], i: int) -> float | None:
        return round(float(values[i]), 3) if values else None

    return {
        "type": type_name,
        "runs": runs,
        "run_p50": at(run_q, 0),
        "run_p95": at(run_q, 1),
        "waits": waits,
        "wait_p50": at(wait_q, 0),
        "wait_p95": at(wait_q, 1),
    }


def percentile(values: list[float], q: float) -> float:
    """The q-quantile with linear interpolation between the closest ranks, as
    PostgreSQL's percentile_cont computes it."""
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def queue_depths(broker: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Per queue, the jobs the database holds queued (waiting, or held by a pause or a
    limit) and running, and the messages the broker holds (`broker`, from
    jobs.metrics.broker_queue_depths; None when it was not read). Every configured queue
    is listed, then any other a job names."""
    counts: dict[str, dict[str, int]] = {}
    rows = (
        Job.objects.order_by()
        .filter(status__in=(Status.QUEUED, Status.RUNNING))
        .values("queue")
        .annotate(
            waiting=Count("id", filter=Q(status=Status.QUEUED, held=Held.NO)),
            held=Count("id", filter=Q(status=Status.QUEUED) & ~Q(held=Held.NO)),
            running=Count("id", filter=Q(status=Status.RUNNING)),
        )
    )
    for row in rows:
        counts[row["queue"]] = {k: row[k] for k in ("waiting", "held", "running")}
    names = list(settings.JOBS_QUEUES) + sorted(set(counts) - set(settings.JOBS_QUEUES))
    empty = {"waiting": 0, "held": 0, "running": 0}
    return [
        {
            "queue": name,
            **counts.get(name, empty),
            "broker": None if broker is None else broker.get(name),
        }
        for name in names
    ]


def charts(
    win: Window, now: datetime | None = None, broker: dict[str, int] | None = None
) -> dict[str, Any]:
    """Everything the dashboard's history charts draw, as JSON-ready data."""
    now = now or timezone.now()
    buckets = finished_per_bucket(win, now)
    return {
        "window": win.name,
        "label": win.label,
        "bucket_seconds": int(win.bucket.total_seconds()),
        "now": now.isoformat(),
        "statuses": [s.value for s in FINISHED],
        "finished": [{**b, "start": b["start"].isoformat()} for b in buckets],
        "finished_totals": finished_totals(buckets),
        "durations": durations(win, now),
        "queues": queue_depths(broker),
    }
