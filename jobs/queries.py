"""Read models over the job table: counts for the API and the dashboard, and the
per-user digest of finished jobs for the daily e-mail."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count
from django.utils import timezone

from .models import FINISHED_STATUSES, Job, Status
from .visibility import one_line_error


def stats(jobs) -> dict[str, Any]:
    """Counts by status and by type, and recent throughput, over a queryset of jobs."""
    by_status = Counter({s.value: 0 for s in Status})
    for row in jobs.order_by().values("status").annotate(n=Count("id")):
        by_status[row["status"]] = row["n"]
    by_type: dict[str, dict[str, int]] = {}
    for row in jobs.order_by().values("type", "status").annotate(n=Count("id")):
        by_type.setdefault(row["type"], {})[row["status"]] = row["n"]
    now = timezone.now()
    finished = jobs.filter(status__in=FINISHED_STATUSES)
    return {
        "by_status": dict(by_status),
        "by_type": by_type,
        "throughput": {
            "finished_last_minute": finished.filter(
                finished_at__gte=now - timedelta(minutes=1)
            ).count(),
            "finished_last_hour": finished.filter(
                finished_at__gte=now - timedelta(hours=1)
            ).count(),
        },
    }


@dataclass
class Digest:
    """One user's jobs finished since a moment, for the daily e-mail."""

    user_id: int
    username: str
    email: str
    counts: dict[str, int]
    failures: list[Job]

    def text(self, hours: int) -> str:
        lines = [f"Hello {self.username},", "", f"Your jobs in the last {hours} hours:"]
        lines += [f"  {status}: {n}" for status, n in sorted(self.counts.items())]
        if self.failures:
            lines += ["", "Failed:"]
            lines += [
                f"  {j.type} {j.id}: {one_line_error(j.error) or j.message}" for j in self.failures
            ]
        return "\n".join(lines) + "\n"


def job_digests(since: datetime, failures_listed: int = 20) -> list[Digest]:
    """A digest for each user with an e-mail address whose jobs finished since `since`."""
    finished = Job.objects.filter(finished_at__gte=since, owner__isnull=False).exclude(
        owner__email=""
    )
    per_user: dict[int, Digest] = {}
    rows = (
        finished.order_by()
        .values("owner_id", "owner__username", "owner__email", "status")
        .annotate(n=Count("id"))
    )
    for row in rows:
        digest = per_user.setdefault(
            row["owner_id"],
            Digest(row["owner_id"], row["owner__username"], row["owner__email"], {}, []),
        )
        digest.counts[row["status"]] = row["n"]
    for digest in per_user.values():
        if digest.counts.get(Status.FAILED):
            digest.failures = list(
                finished.filter(owner_id=digest.user_id, status=Status.FAILED).order_by(
                    "-finished_at"
                )[:failures_listed]
            )
    return sorted(per_user.values(), key=lambda d: d.user_id)
