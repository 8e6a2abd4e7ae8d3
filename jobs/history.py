"""The job table over time, for the dashboard's charts and /metrics: jobs finished per
time bucket by status, p50/p95 of wait and run times per type, and jobs per queue.

Definitions (docs/operations.md#history-charts):
- a job counts as finished in the bucket its `finished_at` falls in;
- run time is `started_at` → `finished_at` of jobs that succeeded or failed (a job
  cancelled or expired while queued never ran this round);
- wait time is `created_at` → `started_at` of those jobs when they started once
  (`attempts = 1`): a job's row keeps only its last start, so for a retried job the first
  start is gone and the gap would count its failed attempts and their backoff.

The sweeper rolls the closed minutes up (`roll_up`): per minute, type and status, how
many jobs ended and histograms of their run and wait times (HistoryRollup), up to a mark
(HistoryMark) `LAG` behind now. A window is read from the rolled-up minutes it holds and,
for the minutes since the mark, from the job rows (a few minutes' worth), so its cost
follows the minutes and types, not the jobs; and it outlives the purge of the job rows.
A percentile made of rolled-up minutes is within `ERROR` of the exact one (a time is
known to its histogram bin); one made of job rows alone is exact.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Func, IntegerField, Q, Sum
from django.utils import timezone

from . import registry
from .models import Held, HistoryMark, HistoryRollup, Job, Status

FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.EXPIRED)
RAN = (Status.SUCCEEDED, Status.FAILED)
# One query per retention index: each reads the finished rows of its statuses.
STATUS_GROUPS = ([Status.SUCCEEDED], [Status.FAILED, Status.CANCELLED, Status.EXPIRED])
QUANTILES = (0.5, 0.95)
# The percentiles of the minutes not rolled up yet are those of their latest this many
# jobs: a few minutes' worth unless the sweeper has stopped.
SAMPLE = 20_000
# A minute is rolled up this long after it ends: a job's end is committed well within it,
# by a worker whose clock is not further behind the sweeper's.
LAG = timedelta(minutes=2)
# At most this many minutes per pass, so that a pass stays short when it catches up.
CATCH_UP = 15
MINUTE, QUARTER = 60, 900


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


# Rolled-up rows outlive the longest window by this much (the retention purge).
KEEP_ROLLUPS_FOR = max(w.span for w in WINDOWS.values()) + timedelta(hours=1)


class Histogram:
    """Fixed log-spaced bins of durations: bin 0 holds what is under FLOOR seconds, bin
    i > 0 holds [FLOOR * RATIO**(i-1), FLOOR * RATIO**i). A bin's value is its geometric
    middle, within ERROR of every time in it, so a percentile read from the bins is within
    ERROR of the exact one (or FLOOR seconds, under FLOOR)."""

    FLOOR = 0.001
    RATIO = 2 ** (1 / 8)
    TOP = 8 * 40  # 1 ms * 2**40: some 35 years
    ERROR = math.sqrt(RATIO) - 1  # 4.4%

    @classmethod
    def bin(cls, seconds: float) -> int:
        if seconds < cls.FLOOR:
            return 0
        return min(cls.TOP, 1 + math.floor(math.log(seconds / cls.FLOOR, cls.RATIO)))

    @classmethod
    def value(cls, number: int) -> float:
        if number <= 0:
            return 0.0
        return cls.FLOOR * cls.RATIO ** (number - 0.5)


ERROR = Histogram.ERROR


def _minute(moment: datetime) -> datetime:
    return _floor(moment, MINUTE)


def rolled_up_to() -> datetime | None:
    """Every minute before this is in HistoryRollup; None before the first roll-up."""
    return HistoryMark.objects.filter(pk=1).values_list("rolled_up_to", flat=True).first()


def roll_up(now: datetime | None = None) -> int:
    """Roll up the minutes that closed at least LAG ago and are not yet rolled up, at most
    CATCH_UP of them, and each quarter hour they complete; move the mark past them in the
    same transaction, the mark's row locked: a minute is rolled up once, whoever runs
    this at the same time. The first pass starts a day back, on a quarter hour. Returns
    how many minutes were rolled up."""
    now = now or timezone.now()
    until = _minute(now - LAG)
    mark = rolled_up_to()
    if mark is not None and mark >= until:
        return 0
    with transaction.atomic():
        first = _floor(now - max(w.span for w in WINDOWS.values()), QUARTER)
        HistoryMark.objects.get_or_create(pk=1, defaults={"rolled_up_to": first})
        start = HistoryMark.objects.select_for_update().get(pk=1).rolled_up_to
        end = min(until, start + timedelta(minutes=CATCH_UP))
        if end <= start:
            return 0
        HistoryRollup.objects.bulk_create(_minutes(start, end))
        HistoryRollup.objects.bulk_create(_quarters(start, end))
        HistoryMark.objects.filter(pk=1).update(rolled_up_to=end)
    return int((end - start).total_seconds() // 60)


def _floor(moment: datetime, seconds: int) -> datetime:
    return datetime.fromtimestamp(int(moment.timestamp()) // seconds * seconds, UTC)


def _minutes(start: datetime, end: datetime) -> list[HistoryRollup]:
    """The minute rows of the jobs that ended in [start, end)."""
    rows: dict[tuple[int, str, str], HistoryRollup] = {}
    for status_group in STATUS_GROUPS:
        ended = (
            _finished_since(start)
            .filter(status__in=status_group, finished_at__lt=end)
            .values_list("type", "status", "attempts", "created_at", "started_at", "finished_at")
        )
        for type_name, status, attempts, created_at, started_at, finished_at in ended.iterator(
            chunk_size=2000
        ):
            minute = int(finished_at.timestamp()) // MINUTE * MINUTE
            row = rows.get((minute, type_name, status))
            if row is None:
                row = rows[(minute, type_name, status)] = _rollup(minute, MINUTE, type_name, status)
            row.finished += 1
            if status in RAN and started_at is not None:
                _count(row.runs, (finished_at - started_at).total_seconds())
                if attempts == 1:
                    _count(row.waits, (started_at - created_at).total_seconds())
    return list(rows.values())


def _quarters(start: datetime, end: datetime) -> list[HistoryRollup]:
    """The quarter-hour rows of the quarters that end in (start, end], merged from their
    minute rows: the day window reads 15 times fewer rows."""
    first = _floor(start, QUARTER) + timedelta(seconds=QUARTER)
    ends = int(first.timestamp()), int(end.timestamp())
    rows: dict[tuple[int, str, str], HistoryRollup] = {}
    for quarter_end in range(ends[0], ends[1] + 1, QUARTER):
        quarter = quarter_end - QUARTER
        minutes = HistoryRollup.objects.filter(
            seconds=MINUTE,
            start__gte=datetime.fromtimestamp(quarter, UTC),
            start__lt=datetime.fromtimestamp(quarter_end, UTC),
        )
        for minute in minutes:
            row = rows.get((quarter, minute.type, minute.status))
            if row is None:
                row = rows[(quarter, minute.type, minute.status)] = _rollup(
                    quarter, QUARTER, minute.type, minute.status
                )
            row.finished += minute.finished
            for merged, more in ((row.runs, minute.runs), (row.waits, minute.waits)):
                for key, n in more.items():
                    merged[key] = merged.get(key, 0) + n
    return list(rows.values())


def _rollup(start: int, seconds: int, type_name: str, status: str) -> HistoryRollup:
    return HistoryRollup(
        start=datetime.fromtimestamp(start, UTC),
        seconds=seconds,
        type=type_name,
        status=status,
        finished=0,
        runs={},
        waits={},
    )


def _count(bins: dict[str, int], seconds: float) -> None:
    key = str(Histogram.bin(seconds))
    bins[key] = bins.get(key, 0) + 1


def purge_rollups(now: datetime | None = None) -> int:
    """Delete the rolled-up minutes and quarter hours older than every window
    (KEEP_ROLLUPS_FOR); returns how many rows went."""
    cutoff = (now or timezone.now()) - KEEP_ROLLUPS_FOR
    return HistoryRollup.objects.filter(start__lt=cutoff).delete()[0]


def _split(win: Window, start: datetime) -> tuple[list[tuple[int, datetime, datetime]], datetime]:
    """For a window from `start`: its rolled-up parts, (seconds, from, to): quarter hours
    for a window of 15-minute buckets, then minutes up to the mark; and where its part
    read from the job rows starts (the mark, or `start` when nothing of it is rolled up)."""
    mark = rolled_up_to()
    if mark is None or mark <= start:
        return [], start
    parts = []
    if int(win.bucket.total_seconds()) % QUARTER == 0:
        quarters_end = max(start, _floor(mark, QUARTER))
        parts.append((QUARTER, start, quarters_end))
        start = quarters_end
    parts.append((MINUTE, start, mark))
    return [part for part in parts if part[1] < part[2]], mark


def _rolled_up(seconds: int, start: datetime, end: datetime):
    return HistoryRollup.objects.order_by().filter(
        seconds=seconds, start__gte=start, start__lt=end, type__in=registry.names()
    )


def finished_per_bucket(win: Window, now: datetime | None = None) -> list[dict[str, Any]]:
    """Jobs finished in each bucket of the window by status, oldest bucket first:
    [{"start": datetime, "succeeded": n, "failed": n, "cancelled": n, "expired": n}]."""
    start, _ = bounds(win, now)
    size = int(win.bucket.total_seconds())
    counts: Counter[tuple[int, str]] = Counter()
    parts, tail = _split(win, start)
    for part in parts:
        rows = (
            _rolled_up(*part)
            .annotate(bucket=EpochBucket("start", size))
            .values("bucket", "status")
            .annotate(n=Sum("finished"))
        )
        for row in rows:
            counts[(row["bucket"], row["status"])] += row["n"]
    for status_group in STATUS_GROUPS:
        rows = (
            _finished_since(tail)
            .filter(status__in=status_group)
            .annotate(bucket=EpochBucket("finished_at", size))
            .values("bucket", "status")
            .annotate(n=Count("id"))
        )
        for row in rows:
            counts[(row["bucket"], row["status"])] += row["n"]
    first = int(start.timestamp())
    return [
        {
            "start": datetime.fromtimestamp(first + i * size, UTC),
            **{s.value: counts[(first + i * size, s.value)] for s in FINISHED},
        }
        for i in range(win.buckets)
    ]


def finished_totals(buckets: list[dict[str, Any]]) -> dict[str, int]:
    return {s.value: sum(b[s.value] for b in buckets) for s in FINISHED}


def finished_counts(win: Window, now: datetime | None = None) -> dict[str, int]:
    """Jobs finished in the window by status: the sum of its buckets, in one count."""
    start, _ = bounds(win, now)
    counts = dict.fromkeys((s.value for s in FINISHED), 0)
    parts, tail = _split(win, start)
    for part in parts:
        rows = _rolled_up(*part).values("status").annotate(n=Sum("finished"))
        for row in rows:
            counts[row["status"]] += row["n"]
    for status_group in STATUS_GROUPS:
        rows = _finished_since(tail).filter(status__in=status_group)
        for row in rows.values("status").annotate(n=Count("id")):
            counts[row["status"]] += row["n"]
    return counts


# (value, how many): a time known exactly (1 job), or a histogram bin's value.
Weighted = list[tuple[float, int]]


def durations(win: Window, now: datetime | None = None) -> list[dict[str, Any]]:
    """Per job type, the p50 and p95 of wait and run times (seconds) of the jobs that
    succeeded or failed in the window, with how many jobs each figure is made of:
    [{"type", "runs", "run_p50", "run_p95", "waits", "wait_p50", "wait_p95"}], by type.
    A figure is None when no job counts for it."""
    start, _ = bounds(win, now)
    parts, tail = _split(win, start)
    runs: dict[str, Weighted] = {}
    waits: dict[str, Weighted] = {}
    for part in parts:
        for type_name, kind, number, n in _merged_bins(*part):
            values = runs if kind == "runs" else waits
            values.setdefault(type_name, []).append((Histogram.value(number), n))
            runs.setdefault(type_name, [])
    for type_name, attempts, created_at, started_at, finished_at in _ran_since(tail):
        runs.setdefault(type_name, []).append(((finished_at - started_at).total_seconds(), 1))
        if attempts == 1:
            waits.setdefault(type_name, []).append(((started_at - created_at).total_seconds(), 1))
    summaries = []
    for type_name, run_values in runs.items():
        wait_values = waits.get(type_name, [])
        summaries.append(
            _summary(
                type_name,
                sum(n for _, n in run_values),
                [weighted_percentile(run_values, q) for q in QUANTILES] if run_values else [],
                sum(n for _, n in wait_values),
                [weighted_percentile(wait_values, q) for q in QUANTILES] if wait_values else [],
            )
        )
    return sorted(summaries, key=lambda row: row["type"])


def _ran_since(since: datetime) -> list[tuple]:
    """(type, attempts, created_at, started_at, finished_at) of the latest SAMPLE jobs of
    each status in RAN that ended since `since`: one query per status, so that each reads
    its retention index (a `status IN` across the two partial indexes would read the
    whole table)."""
    found: list[tuple] = []
    for status in RAN:
        found += _ran_query(since, status)
    return found


def _ran_query(since: datetime, status: str):
    return (
        _finished_since(since)
        .filter(status=status, started_at__isnull=False)
        .order_by("-finished_at")
        .values_list("type", "attempts", "created_at", "started_at", "finished_at")[:SAMPLE]
    )


_MERGED_BINS = {
    "postgresql": """
        SELECT h.type, %(kind)s, bin.key::integer, sum(bin.value::bigint)::bigint
        FROM "{table}" AS h, jsonb_each_text(h."{column}") AS bin
        WHERE h.seconds = %(seconds)s AND h.start >= %(start)s AND h.start < %(end)s
            AND h.type = ANY(%(types)s)
            AND h.status = ANY(%(ran)s)
        GROUP BY h.type, bin.key""",
    "sqlite": """
        SELECT h.type, %(kind)s, CAST(bin.key AS integer), sum(bin.value)
        FROM "{table}" AS h, json_each(h."{column}") AS bin
        WHERE h.seconds = %(seconds)s AND h.start >= %(start)s AND h.start < %(end)s
            AND h.type IN (SELECT value FROM json_each(%(types)s))
            AND h.status IN (SELECT value FROM json_each(%(ran)s))
        GROUP BY h.type, bin.key""",
}


def _merged_bins(seconds: int, start: datetime, end: datetime) -> list[tuple[str, str, int, int]]:
    """The run and wait histograms of the rolled-up rows of `seconds` in [start, end),
    merged in the database per type: (type, "runs" or "waits", bin, jobs)."""
    import json

    sql = _MERGED_BINS[connection.vendor]
    types, ran = registry.names(), [s.value for s in RAN]
    if connection.vendor == "sqlite":
        types, ran = json.dumps(types), json.dumps(ran)
    found = []
    with connection.cursor() as cursor:
        for kind in ("runs", "waits"):
            cursor.execute(
                sql.format(table=HistoryRollup._meta.db_table, column=kind),
                {
                    "kind": kind,
                    "seconds": seconds,
                    "start": _param(start),
                    "end": _param(end),
                    "types": types,
                    "ran": ran,
                },
            )
            found += cursor.fetchall()
    return found


def _param(moment: datetime) -> Any:
    return connection.ops.adapt_datetimefield_value(moment)


def weighted_percentile(values: Weighted, q: float) -> float:
    """The q-quantile, interpolated between the closest ranks as PostgreSQL's
    percentile_cont does, of the values each counted its number of times."""
    ordered = sorted(values)
    total = sum(n for _, n in ordered)
    rank = q * (total - 1)
    low = math.floor(rank)
    high = min(low + 1, total - 1)
    return _at_rank(ordered, low) + (_at_rank(ordered, high) - _at_rank(ordered, low)) * (
        rank - low
    )


def _at_rank(ordered: Weighted, rank: int) -> float:
    seen = 0
    for value, n in ordered:
        seen += n
        if rank < seen:
            return value
    return ordered[-1][0]


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
