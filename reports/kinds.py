"""Report kinds: what each one's parameters are, the data it gathers, and the figures
it computes for its template. Gathering reports progress through `progress(fraction)`."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from django.db.models import Q, QuerySet
from django.utils import timezone
from rest_framework import serializers

from jobs.engine import Job, Status
from notes.models import Page

from .charts import Series, stacked_bars
from .models import Kind, Report
from .sanitize import owner_images, page_html

Progress = Callable[[float], None]
CHUNK = 2000
MAX_DAYS = 366


def in_chunks(rows: QuerySet, order: tuple[str, str], size: int) -> Iterator[list[Any]]:
    """The rows of `rows` (model instances or `values()` dicts) in `order`, `size` at a
    time, each chunk read by its own query from where the last one ended. No read stays
    open between chunks, so progress can be written between them: SQLite refuses a write
    on a connection that holds a read begun before another connection's write."""
    first, second = order
    chunk = list(rows.order_by(first, second)[:size])
    while chunk:
        yield chunk
        if len(chunk) < size:
            return
        last = chunk[-1]
        a, b = (
            (last[first], last[second])
            if isinstance(last, dict)
            else (
                getattr(last, first),
                getattr(last, second),
            )
        )
        after = Q(**{f"{first}__gt": a}) | Q(**{first: a, f"{second}__gt": b})
        chunk = list(rows.filter(after).order_by(first, second)[:size])


@dataclass(frozen=True)
class ReportKind:
    name: str
    parameters: type[serializers.Serializer]
    template: str
    default_title: Callable[[dict[str, Any]], str]
    gather: Callable[[Report, Progress], Any]
    compute: Callable[[Report, Any], dict[str, Any]]


# --- job activity --------------------------------------------------------------------


class JobActivityParameters(serializers.Serializer):
    start = serializers.DateField(required=False)
    end = serializers.DateField(required=False)

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        today = timezone.localdate()
        end = data.get("end") or today
        start = data.get("start") or end - timedelta(days=6)
        if start > end:
            raise serializers.ValidationError({"start": "Must be on or before end."})
        if (end - start).days + 1 > MAX_DAYS:
            raise serializers.ValidationError({"end": f"A report covers at most {MAX_DAYS} days."})
        return {"start": start.isoformat(), "end": end.isoformat()}


def _activity_range(report: Report) -> tuple[date, date]:
    return date.fromisoformat(report.parameters["start"]), date.fromisoformat(
        report.parameters["end"]
    )


def _activity_jobs(report: Report):
    start, end = _activity_range(report)
    tz = timezone.get_current_timezone()
    return Job.objects.filter(
        owner_id=report.owner_id,
        created_at__gte=datetime.combine(start, time.min, tz),
        created_at__lt=datetime.combine(end + timedelta(days=1), time.min, tz),
    ).exclude(report=report)


def gather_activity(report: Report, progress: Progress) -> list[dict[str, Any]]:
    jobs = _activity_jobs(report)
    total = jobs.count() or 1
    rows = []
    fields = ("id", "type", "status", "created_at", "started_at", "finished_at", "error")
    for chunk in in_chunks(jobs.values(*fields), ("created_at", "id"), CHUNK):
        rows.extend(chunk)
        progress(len(rows) / total)
    progress(1.0)
    return rows


def compute_activity(report: Report, rows: list[dict[str, Any]]) -> dict[str, Any]:
    start, end = _activity_range(report)
    by_status = Counter(r["status"] for r in rows)
    by_type: dict[str, Counter] = defaultdict(Counter)
    durations: dict[str, list[float]] = defaultdict(list)
    per_day: dict[date, Counter] = {
        start + timedelta(days=i): Counter() for i in range((end - start).days + 1)
    }
    failures: Counter = Counter()
    timed = []
    for r in rows:
        by_type[r["type"]][r["status"]] += 1
        day = timezone.localtime(r["created_at"]).date()
        if day in per_day:
            per_day[day][r["status"]] += 1
        if r["started_at"] and r["finished_at"]:
            seconds = (r["finished_at"] - r["started_at"]).total_seconds()
            durations[r["type"]].append(seconds)
            timed.append((seconds, r))
        if r["status"] == Status.FAILED:
            failures[_first_line(r["error"]) or "(no error message)"] += 1
    days = sorted(per_day)
    chart = stacked_bars(
        [d.strftime("%d %b") for d in days],
        [
            Series("Succeeded", "#2e7d32", [per_day[d][Status.SUCCEEDED] for d in days]),
            Series("Failed", "#c62828", [per_day[d][Status.FAILED] for d in days]),
            Series(
                "Other",
                "#9e9e9e",
                [
                    sum(per_day[d].values())
                    - per_day[d][Status.SUCCEEDED]
                    - per_day[d][Status.FAILED]
                    for d in days
                ],
            ),
        ],
    )
    return {
        "start": start,
        "end": end,
        "total": len(rows),
        "by_status": [(s.label, by_status[s.value]) for s in Status],
        "types": [
            {
                "type": name,
                "total": sum(counts.values()),
                "succeeded": counts[Status.SUCCEEDED],
                "failed": counts[Status.FAILED],
                "other": sum(counts.values()) - counts[Status.SUCCEEDED] - counts[Status.FAILED],
                **_duration_figures(durations[name]),
            }
            for name, counts in sorted(by_type.items())
        ],
        "slowest": [
            {"id": r["id"], "type": r["type"], "seconds": s, "status": r["status"]}
            for s, r in sorted(timed, key=lambda t: t[0], reverse=True)[:10]
        ],
        "failure_reasons": failures.most_common(10),
        "chart": chart,
    }


def _duration_figures(seconds: list[float]) -> dict[str, float | None]:
    if not seconds:
        return {"mean": None, "p50": None, "p95": None, "max": None}
    ordered = sorted(seconds)
    return {
        "mean": statistics.fmean(ordered),
        "p50": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "max": ordered[-1],
    }


def _first_line(text: str) -> str:
    return (text or "").strip().splitlines()[0][:160] if (text or "").strip() else ""


def activity_title(parameters: dict[str, Any]) -> str:
    return f"Job activity {parameters['start']} to {parameters['end']}"


# --- notes export ----------------------------------------------------------------------


class NotesExportParameters(serializers.Serializer):
    query = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=200,
        help_text="Only pages whose title has this",
    )

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        return {"query": data.get("query", "")}


def gather_notes(report: Report, progress: Progress) -> list[Page]:
    pages = Page.objects.filter(owner_id=report.owner_id)
    if report.parameters.get("query"):
        pages = pages.filter(title__icontains=report.parameters["query"])
    total = pages.count() or 1
    gathered = []
    for chunk in in_chunks(pages, ("title", "id"), 200):
        gathered.extend(chunk)
        progress(len(gathered) / total)
    progress(1.0)
    return gathered


def compute_notes(report: Report, pages: list[Page]) -> dict[str, Any]:
    images = owner_images(report.owner_id)
    return {
        "pages": [
            {
                "title": p.title,
                "updated_at": p.updated_at,
                "html": page_html(p.content, images),
                "words": len(p.content.split()),
            }
            for p in pages
        ],
        "page_total": len(pages),
        "word_total": sum(len(p.content.split()) for p in pages),
    }


def notes_title(parameters: dict[str, Any]) -> str:
    query = parameters.get("query")
    return f"Notes matching “{query}”" if query else "All notes"


KINDS: dict[str, ReportKind] = {
    Kind.JOB_ACTIVITY: ReportKind(
        Kind.JOB_ACTIVITY,
        JobActivityParameters,
        "reports/pdf/job_activity.html",
        activity_title,
        gather_activity,
        compute_activity,
    ),
    Kind.NOTES_EXPORT: ReportKind(
        Kind.NOTES_EXPORT,
        NotesExportParameters,
        "reports/pdf/notes_export.html",
        notes_title,
        gather_notes,
        compute_notes,
    ),
}
