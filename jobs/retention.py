"""Retention: finished jobs are deleted once past their type's policy (jobs.registry.Retention),
and settled batches once they are old and have nothing left to show."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import Exists, OuterRef
from django.utils import timezone

from . import registry
from .models import Batch, BatchState, Job, JobEvent, Status

PURGE_BATCH = 1000


def purge_finished(now: datetime | None = None) -> dict[str, int]:
    """Delete finished jobs past their type's retention: older than its age limit, or
    beyond the newest N. Cancelled and expired jobs follow the failed policy. Returns
    deletions per type; events and effect reservations go with their job."""
    now = now or timezone.now()
    deleted: dict[str, int] = {}
    for job_type in registry.all_types():
        policy = job_type.retention
        count = _purge(
            job_type.name, [Status.SUCCEEDED], now - policy.succeeded_for, policy.succeeded_max
        )
        count += _purge(
            job_type.name,
            [Status.FAILED, Status.CANCELLED, Status.EXPIRED],
            now - policy.failed_for,
            policy.failed_max,
        )
        if count:
            deleted[job_type.name] = count
    return deleted


def _purge(type_name: str, statuses: list[str], older_than: datetime, keep: int | None) -> int:
    finished = Job.objects.filter(type=type_name, status__in=statuses)
    if keep is not None:
        # The finished_at of the newest row beyond `keep`: that row and all older ones go.
        beyond_keep = finished.order_by("-finished_at").values_list("finished_at", flat=True)
        cutoff = next(iter(beyond_keep[keep : keep + 1]), None)
        if cutoff is not None and cutoff >= older_than:
            older_than = cutoff + timedelta(microseconds=1)
    total = 0
    while True:
        # Oldest first, the purge index's order: the model's default order (-created_at)
        # would sort every expired row for each batch.
        expired = finished.filter(finished_at__lt=older_than).order_by("finished_at")
        ids = list(expired.values_list("id", flat=True)[:PURGE_BATCH])
        if not ids:
            return total
        JobEvent.objects.filter(job_id__in=ids).delete()
        total += Job.objects.filter(id__in=ids).delete()[1].get(Job._meta.label, 0)


def purge_settled_batches(now: datetime | None = None) -> int:
    """Delete settled batches older than the default retention of finished jobs (a
    succeeded batch after `Retention().succeeded_for`, a failed or cancelled one after
    `failed_for`) once none of their jobs remains, each gone by its own type's policy,
    and their callback jobs are gone too (a callback looks its batch up). Returns how
    many."""
    now = now or timezone.now()
    policy = registry.Retention()
    return _purge_batches([BatchState.SUCCEEDED], now - policy.succeeded_for) + _purge_batches(
        [BatchState.FAILED, BatchState.CANCELLED], now - policy.failed_for
    )


def _purge_batches(states: list[str], older_than: datetime) -> int:
    done = Batch.objects.filter(
        state__in=states,
        # A batch finished before the cutoff was created before it: the created_at
        # index bounds the scan to the old batches.
        created_at__lt=older_than,
        finished_at__lt=older_than,
        success_job__isnull=True,
        complete_job__isnull=True,
    ).exclude(Exists(Job.objects.filter(batch=OuterRef("pk"))))
    total = 0
    while True:
        ids = list(done.order_by("created_at").values_list("id", flat=True)[:PURGE_BATCH])
        if not ids:
            return total
        total += done.filter(id__in=ids).delete()[1].get(Batch._meta.label, 0)
        if len(ids) < PURGE_BATCH:
            return total
