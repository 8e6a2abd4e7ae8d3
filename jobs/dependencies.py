"""Jobs that wait for other jobs: a job created with `depends_on` stays queued, held
(`held="dependencies"`), until every job it depends on has succeeded; then it is
released to run. If one of them failed, was cancelled or expired, it ends as cancelled
naming that job, unless it asked to run anyway (`on_dependency_failure="run"`: it is
released once they have all ended).

Nothing polls: the follow-up registered here (`after_end`) decides for the jobs waiting
on each job that ends, and its `catch_up` decides for the waiting jobs whose
dependencies ended while no follow-up ran (a crash in between). Deciding locks the
waiting job's row and reads its dependencies after the lock is granted, so two
dependencies ending at once release it once, and each end's follow-up, which runs after
that end committed, sees it. A job created waiting is decided again once its create
commits (jobs/services.py): a dependency that ended meanwhile is seen then, or its
follow-up, running after its end committed, finds the new job. No row is locked but the
one decided, so deciding cannot deadlock with creates, ends or heartbeats.

A dependency retried after it failed does not revive the jobs it already cancelled;
retrying such a job runs it without waiting again.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone
from rest_framework import serializers

from . import followups
from .dispatch import dispatch
from .models import (
    ACTIVE_STATUSES,
    RETRYABLE_STATUSES,
    Held,
    Job,
    JobDependency,
    OnDependencyFailure,
    Status,
)
from .store import job_store

# In a bulk request, "$3" names the job of the request's fourth spec.
REFERENCE = re.compile(r"^\$(\d+)$")

Dependency = uuid.UUID | int  # a job id, or the index of an earlier spec of the request


def parse(values: Sequence[Any] | None, *, index: int | None = None) -> list[Dependency]:
    """The job ids of a `depends_on` list, and with `index` (a spec of a bulk request)
    the indexes of earlier specs it names as "$0", "$1"... Raises a ValidationError
    naming `depends_on`."""
    if values is None:
        return []
    if not isinstance(values, list | tuple):
        raise _invalid("Must be a list of job ids.")
    if len(values) > settings.JOBS_MAX_DEPENDENCIES:
        raise _invalid(f"At most {settings.JOBS_MAX_DEPENDENCIES} jobs.")
    found: list[Dependency] = []
    for value in values:
        found.append(_one(value, index))
    return list(dict.fromkeys(found))


def _one(value: Any, index: int | None) -> Dependency:
    if isinstance(value, uuid.UUID):
        return value
    if not isinstance(value, str):
        raise _invalid("Must be a list of job ids.")
    if match := REFERENCE.match(value.strip()):
        if index is None:
            raise _invalid(f"{value!r}: naming a job of the request is for bulk creates.")
        ref = int(match.group(1))
        if ref >= index:
            raise _invalid(f"{value!r}: may name only an earlier job of this request.")
        return ref
    try:
        return uuid.UUID(value.strip())
    except ValueError:
        raise _invalid(f"{value!r} is not a job id.") from None


def _invalid(message: str) -> serializers.ValidationError:
    return serializers.ValidationError({"depends_on": [message]})


def statuses_of(owner, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, str]:
    """The status of each job id that `owner` (None: the application) owns."""
    ids = list(ids)
    if not ids:
        return {}
    owned = Q(owner=owner) if owner is not None else Q(owner__isnull=True)
    return dict(Job.objects.filter(owned, id__in=ids).values_list("id", "status"))


def check_owned(ids: Iterable[uuid.UUID], statuses: dict[uuid.UUID, str]) -> None:
    """Raise a ValidationError naming `depends_on` for the ids that are not in
    `statuses`: no such job, or another owner's (which the message does not tell)."""
    unknown = [str(i) for i in ids if i not in statuses]
    if unknown:
        raise _invalid(f"No job of yours with id {', '.join(unknown)}.")


def prepare(job: Job, statuses: Sequence[str], policy: str) -> None:
    """Make the new `job` wait for dependencies in `statuses`, unless nothing is left to
    wait for: they all succeeded, or (running anyway) all ended."""
    finished = all(s not in ACTIVE_STATUSES for s in statuses)
    if all(s == Status.SUCCEEDED for s in statuses) or (
        finished and policy == OnDependencyFailure.RUN
    ):
        return
    job.held = Held.DEPENDENCIES
    job.dispatched_at = None
    job.message = waiting_message(len(statuses))


def waiting_message(count: int) -> str:
    return f"Waiting for {count} job{'s' if count != 1 else ''} it depends on"


# --- deciding ------------------------------------------------------------------------------


def settle(job_ids: Iterable[Any], now: datetime | None = None) -> int:
    """Decide for each of the jobs that still waits for its dependencies: release it when
    they all succeeded (or all ended and it runs anyway), cancel it when one did not
    succeed, else leave it waiting. Returns how many were released or cancelled."""
    now = now or timezone.now()
    released: list[Job] = []
    cancelled: list[Job] = []
    for job_id in job_ids:
        with transaction.atomic():
            job = (
                Job.objects.select_for_update(no_key=True)
                .filter(id=job_id, status=Status.QUEUED, held=Held.DEPENDENCIES)
                .first()
            )
            if job is None:
                continue
            outcome = _decide(job, _dependency_statuses(job_id), now)
            if outcome == Status.QUEUED:
                released.append(job)
            elif outcome == Status.CANCELLED:
                cancelled.append(job)
    if released:
        transaction.on_commit(lambda: dispatch(released))
    followups.jobs_ended(cancelled)
    return len(released) + len(cancelled)


def _dependency_statuses(job_id: Any) -> list[tuple[Any, str]]:
    """(id, status) of the job's dependencies, as committed when this is read."""
    return list(
        Job.objects.filter(dependents__job_id=job_id).order_by("id").values_list("id", "status")
    )


def _decide(job: Job, dependencies: list[tuple[Any, str]], now: datetime) -> str | None:
    """Release or cancel `job` (locked) after its dependencies; returns what it became
    (queued: released), None when it keeps waiting."""
    store = job_store()
    failed = [(dep, status) for dep, status in dependencies if status in RETRYABLE_STATUSES]
    if failed and job.on_dependency_failure == OnDependencyFailure.CANCEL:
        dep, status = failed[0]
        if store.cancel_waiting(job, f"Dependency {dep} {status}", now):
            return Status.CANCELLED
        return None
    if any(status in ACTIVE_STATUSES for _, status in dependencies):
        return None
    reason = "Its dependencies succeeded"
    if failed:
        reason = f"Its dependencies ended ({len(failed)} did not succeed); runs anyway"
    return Status.QUEUED if store.release_waiting(job, reason, now) else None


# --- the follow-up -------------------------------------------------------------------------


def after_end(jobs: list[Job]) -> None:
    """Decide for the jobs waiting on the jobs that just ended. A job whose end said
    nothing waits on it (`has_dependents`, set by the PostgreSQL store's finish) costs no
    query; a dependent written as that end committed is decided by its creator's
    re-check or, at worst, by the catch-up."""
    ended = [job.id for job in jobs if getattr(job, "has_dependents", True)]
    if not ended:
        return
    waiting = (
        Job.objects.filter(
            status=Status.QUEUED,
            held=Held.DEPENDENCIES,
            dependencies__depends_on_id__in=ended,
        )
        .order_by("created_at")
        .values_list("id", flat=True)
        .distinct()
    )
    settle(list(waiting))


def catch_up(now: datetime, since: datetime | None = None) -> followups.CaughtUp:
    """Decide for the waiting jobs whose follow-up a crash may have lost: with `since`,
    those waiting on a job that ended since then and those created since then (their
    creator's re-check lost); without, every waiting job that could be decided (every
    dependency ended, or one did not succeed and they cancel)."""
    limit = settings.JOBS_SWEEP_BATCH
    if since is None:
        candidates = list(_decidable()[: limit + 1])
    else:
        candidates = _waiting_since(since, limit + 1)
    return followups.CaughtUp(settle(candidates[:limit], now), len(candidates) <= limit)


def _decidable():
    dependency = JobDependency.objects.filter(job_id=OuterRef("id"))
    active = Exists(dependency.filter(depends_on__status__in=ACTIVE_STATUSES))
    failed = Exists(dependency.filter(depends_on__status__in=RETRYABLE_STATUSES))
    return (
        Job.objects.filter(status=Status.QUEUED, held=Held.DEPENDENCIES)
        .filter(~active | (Q(on_dependency_failure=OnDependencyFailure.CANCEL) & failed))
        .order_by("created_at")
        .values_list("id", flat=True)
    )


def _waiting_since(since: datetime, limit: int) -> list[Any]:
    """Up to `limit` waiting jobs that could be decided, among those created since
    `since` and those waiting on a job that ended since then (through the retention
    indexes, jobdependency's depends_on index and job_waiting_dependencies: the rows read
    are the recent ends and their dependents). Only the decidable ones count towards
    `limit`, so that jobs still waiting cannot hold the follow-up's mark back."""
    waiting = Q(job__status=Status.QUEUED, job__held=Held.DEPENDENCIES)
    created = Job.objects.filter(
        status=Status.QUEUED, held=Held.DEPENDENCIES, created_at__gte=since
    ).values_list("id", "on_dependency_failure")
    policies = dict(created.order_by("created_at"))
    for ended in followups.ended_since(since, prefix="depends_on__"):
        after_ends = JobDependency.objects.filter(waiting, ended).order_by()
        policies |= dict(after_ends.values_list("job_id", "job__on_dependency_failure"))
    if not policies:
        return []
    statuses: dict[Any, list[str]] = {job_id: [] for job_id in policies}
    for job_id, status in JobDependency.objects.filter(job_id__in=list(policies)).values_list(
        "job_id", "depends_on__status"
    ):
        statuses[job_id].append(status)
    return [
        job_id for job_id, policy in policies.items() if _could_decide(policy, statuses[job_id])
    ][:limit]


def _could_decide(policy: str, statuses: list[str]) -> bool:
    """Whether a job waiting on dependencies in `statuses` is released or cancelled now."""
    failed = any(status in RETRYABLE_STATUSES for status in statuses)
    active = any(status in ACTIVE_STATUSES for status in statuses)
    return not active or (failed and policy == OnDependencyFailure.CANCEL)


def register() -> None:
    followups.register("dependencies", after_end=after_end, catch_up=catch_up)


def ids_of(job: Job) -> list[str]:
    """The ids of the jobs `job` depends on (prefetched `dependencies` when present)."""
    known = getattr(job, "dependency_ids", None)
    if known is not None:
        return [str(i) for i in known]
    return [str(d.depends_on_id) for d in sorted(job.dependencies.all(), key=lambda d: d.pk)]
