"""After the soak: the invariants, and the figures that show them.

Longest wait after a fault: for every fault and every job that was in flight when the
fault ended (created before its end, not finished by then), the time from the fault's
end to the job's next sign of execution: its next `started`, `progress`, `succeeded`,
`failed`, `retry_scheduled` or `cancelled` event (a job never heard of again waits until
the check). The figure is the largest over all faults and jobs; it includes ordinary
queueing (the load keeps at most CHAOS_MAX_BACKLOG jobs in flight) and the back-off of
a job that was waiting to retry.
"""

from __future__ import annotations

import bisect
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

from chaos import db
from chaos.load import LoadResult, email_subject

LIFE_EVENTS = ("started", "progress", "succeeded", "failed", "retry_scheduled", "cancelled")


@dataclass
class Figure:
    name: str
    value: float | int | str
    expected: str = ""  # what the invariant demands; empty for a figure that is only shown
    ok: bool = True


@dataclass
class Report:
    figures: list[Figure] = field(default_factory=list)
    waits_by_kind: dict[str, tuple[float, str]] = field(default_factory=dict)
    faults_by_kind: Counter = field(default_factory=Counter)
    failed_reasons: Counter = field(default_factory=Counter)
    stuck: list[str] = field(default_factory=list)
    longest: list[str] = field(default_factory=list)
    fault_log: list = field(default_factory=list)

    def add(self, name: str, value, expected: str = "", ok: bool = True) -> None:
        self.figures.append(Figure(name, value, expected, ok))

    def value(self, name: str):
        return next(f.value for f in self.figures if f.name == name)

    @property
    def failed(self) -> list[Figure]:
        return [f for f in self.figures if not f.ok]

    def text(self) -> str:
        lines = ["", "== chaos soak: figures"]
        for f in self.figures:
            value = (
                f"{f.value:,.1f}"
                if isinstance(f.value, float)
                else f"{f.value:,}"
                if isinstance(f.value, int)
                else f.value
            )
            verdict = "" if not f.expected else ("  ok" if f.ok else "  FAILED")
            expected = f"  (must be {f.expected})" if f.expected else ""
            lines.append(f"{f.name:<44} {value:>12}{expected}{verdict}")
        lines.append("")
        lines.append(
            "faults: " + ", ".join(f"{k} x{n}" for k, n in sorted(self.faults_by_kind.items()))
        )
        for kind, (wait, job) in sorted(self.waits_by_kind.items()):
            lines.append(f"  longest wait after {kind:<14} {wait:8.1f} s  (job {job})")
        if self.longest:
            lines.append("the job that waited longest, with its events:")
            lines.extend(f"  {line}" for line in self.longest)
        if self.stuck:
            lines.append("jobs not terminal (first few), with their events:")
            lines.extend(f"  {line}" for line in self.stuck)
        if self.failed_reasons:
            lines.append("jobs that ended failed, by error:")
            for reason, n in self.failed_reasons.most_common(5):
                lines.append(f"  {n:6}  {reason[:100]}")
        verdict = (
            "all invariants hold"
            if not self.failed
            else ("FAILED: " + ", ".join(f.name for f in self.failed))
        )
        lines.append(verdict)
        return "\n".join(lines)


def check(
    database_url: str,
    load: LoadResult,
    faults: list,
    deliveries: Counter,
    drain_seconds: float | None,
    wait_bound: float,
    now: float,
) -> Report:
    report = Report()
    jobs = db.query(
        database_url,
        "SELECT id, idempotency_key, status, type, created_at, finished_at, error FROM jobs_job",
    )
    by_key = {row[1]: row for row in jobs if row[1] and row[1].startswith("chaos-")}
    planned = len(load.kinds)
    report.add("jobs planned", planned)
    report.add("jobs created", len(by_key), f"{planned:,}", len(by_key) == planned)
    not_confirmed = [k for k in load.kinds if k not in load.accepted]
    report.add(
        "jobs whose creation was never confirmed", len(not_confirmed), "0", not not_confirmed
    )
    lost = [
        k for k, job_id in load.accepted.items() if k not in by_key or str(by_key[k][0]) != job_id
    ]
    report.add("jobs lost (confirmed, then missing)", len(lost), "0", not lost)

    terminal = [row for row in jobs if row[2] in db.TERMINAL]
    report.add("jobs in the database (scheduled ones too)", len(jobs))
    report.add("jobs terminal", len(terminal), f"{len(jobs):,}", len(terminal) == len(jobs))
    statuses = Counter(row[2] for row in jobs)
    report.stuck = stuck_jobs(database_url, [row for row in jobs if row[2] in db.ACTIVE])
    report.add("jobs succeeded", statuses["succeeded"])
    report.add("jobs failed", statuses["failed"])
    report.failed_reasons = Counter(_first_line(row[6]) for row in jobs if row[2] == "failed")

    succeeded_twice = db.query(
        database_url,
        "SELECT count(*) FROM (SELECT job_id FROM jobs_jobevent WHERE kind = 'succeeded' "
        "GROUP BY job_id HAVING count(*) > 1) AS twice",
    )[0][0]
    report.add("jobs that succeeded more than once", succeeded_twice, "0", succeeded_twice == 0)

    email_keys = [k for k, kind in load.kinds.items() if kind == "email"]
    twice = [k for k in email_keys if deliveries[email_subject(k)] > 1]
    report.add("e-mail jobs", len(email_keys))
    report.add("e-mails delivered", sum(deliveries[email_subject(k)] for k in email_keys))
    report.add("effects delivered more than once", len(twice), "0", not twice)
    never = [
        k for k in email_keys
        if k in by_key and by_key[k][2] == "succeeded" and deliveries[email_subject(k)] == 0
    ]  # fmt: skip
    # At most once: a worker killed between reserving and sending leaves it unsent.
    report.add("e-mail jobs succeeded but never delivered", len(never))

    scheduled = [row for row in jobs if (row[1] or "").startswith("schedule:reminder:")]
    windows = Counter(row[1] for row in scheduled)
    report.add("reminder windows with more than one job", sum(n > 1 for n in windows.values()), "0",
               all(n == 1 for n in windows.values()))  # fmt: skip

    wait, worst, by_kind = longest_waits(database_url, jobs, faults, now)
    report.waits_by_kind = by_kind
    report.faults_by_kind = Counter(f.kind for f in faults)
    report.add("faults made", len(faults))
    report.add(
        "longest wait after a fault (s)", round(wait, 1), f"<= {wait_bound:g}", wait <= wait_bound
    )
    report.add("job that waited longest", worst or "-")
    if worst:
        report.longest = stuck_jobs(database_url, [row for row in jobs if str(row[0]) == worst])
    report.add(
        "time to drain (s)", round(drain_seconds, 1) if drain_seconds is not None else "not drained"
    )

    latencies = [r.seconds for r in load.requests]
    answered = [r for r in load.requests if r.status in (200, 202)]
    report.add("create requests", len(load.requests))
    report.add("create requests not accepted (retried)", len(load.requests) - len(answered))
    if latencies:
        report.add("create request p99 (s)", round(_percentile(latencies, 99), 3))
        report.add("create request slowest (s)", round(max(latencies), 3))
        report.add("create request median (s)", round(statistics.median(latencies), 3))
    paused = [
        r.seconds
        for r in load.requests
        if any(f.kind == "pause" and f.began <= r.started <= f.ended for f in faults)
    ]
    if paused:
        p99 = _percentile(paused, 99)
        # The target: a hung broker never stalls a request.
        report.add("create request p99 while Redis was paused (s)", round(p99, 3), "<= 1", p99 <= 1)
    return report


def longest_waits(database_url: str, jobs: list, faults: list, now: float):
    """The longest wait after a fault (see the module's docstring), the job that waited
    it, and the longest by kind of fault with its job.

    A job's life is its creation, its signs of execution and, if it never finished, the
    check. In each interval between two of those, the first fault that ended within it
    is the one the job waited after (a later one in the same interval is a shorter wait).
    """
    events = db.query(
        database_url,
        "SELECT job_id, created_at FROM jobs_jobevent WHERE kind = ANY(%s)",
        (list(LIFE_EVENTS),),
    )
    life: dict = defaultdict(list)
    for job_id, at in events:
        life[job_id].append(at.timestamp())
    ends = sorted((fault.ended, fault.kind) for fault in faults)
    end_times = [end for end, _ in ends]
    longest, worst = 0.0, None
    by_kind: dict[str, tuple[float, str]] = {}
    for row in jobs:
        job_id, created_at, finished_at = row[0], row[4].timestamp(), row[5]
        times = [created_at, *sorted(life.get(job_id, []))]
        if finished_at is None:
            times.append(now)
        for before, after in zip(times, times[1:], strict=False):
            first = bisect.bisect_right(end_times, before)
            if first == len(end_times) or end_times[first] >= after:
                continue
            wait, kind = after - end_times[first], ends[first][1]
            if wait > longest:
                longest, worst = wait, str(job_id)
            if wait > by_kind.get(kind, (0.0, ""))[0]:
                by_kind[kind] = (wait, str(job_id))
    return longest, worst, by_kind


def stuck_jobs(database_url: str, rows: list, shown: int = 5) -> list[str]:
    lines = []
    for row in rows[:shown]:
        events = db.query(
            database_url,
            "SELECT kind, attempt, created_at, message FROM jobs_jobevent WHERE job_id = %s "
            "ORDER BY created_at, id",
            (row[0],),
        )
        history = "; ".join(
            f"{at:%H:%M:%S} {kind}#{attempt} {message[:60]}".strip()
            for kind, attempt, at, message in events
        )
        lines.append(f"{row[0]} {row[3]} {row[2]}: {history}")
    return lines


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def _first_line(text: str) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else "(no error)"


def utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)
