"""/dashboard/batches/ for staff: the batches, newest first, a page at a time and by
state, with their jobs counted by status, their progress and their callbacks; a batch's
page lists its jobs and names the failed ones. Cancelling a running batch takes the
cancel_job permission, as cancelling jobs in the admin does. Shows no payloads."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime
from typing import Any

from django.contrib import messages
from django.db.models import Q
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from . import batches, visibility
from .audit import Via
from .dashboard import _job_link, permission_required, staff_required
from .models import Batch, BatchState, Job, Status
from .visibility import one_line_error

BATCHES_LISTED = 25
JOBS_LISTED = 50
CALLBACKS = (
    ("on_success", "success_job", "on success"),
    ("on_complete", "complete_job", "on complete"),
)


class BadQuery(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


# --- pages of a list, by a cursor ------------------------------------------------------


def cursor_of(created_at: datetime, row_id: Any) -> str:
    raw = f"{created_at.isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def read_cursor(field: str, value: str) -> tuple[datetime, uuid.UUID]:
    """The (created_at, id) a cursor of `cursor_of` names; BadQuery naming `field` else."""
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        moment, row_id = raw.split("|")
        return datetime.fromisoformat(moment), uuid.UUID(row_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadQuery(field, "Not a page of this list: follow the page links.") from None


def choice(request: HttpRequest, field: str, allowed: list[str]) -> str:
    value = request.GET.get(field, "")
    if value and value not in allowed:
        raise BadQuery(field, f"Must be one of: {', '.join(allowed)}.")
    return value


def bad_query(exc: BadQuery) -> JsonResponse:
    return JsonResponse(
        {"detail": str(exc), "code": "invalid", "errors": {exc.field: [str(exc)]}}, status=400
    )


# --- the data ---------------------------------------------------------------------------


def batch_rows(state: str = "", before: str = "") -> dict[str, Any]:
    """A page of batches, newest first, in two queries whatever its size: the batches
    (with their owners and callback jobs) and their jobs counted."""
    found = Batch.objects.select_related("owner", "success_job", "complete_job")
    if state:
        found = found.filter(state=state)
    if before:
        moment, batch_id = read_cursor("before", before)
        found = found.filter(Q(created_at__lt=moment) | Q(created_at=moment, id__lt=batch_id))
    page = list(found.order_by("-created_at", "-id")[: BATCHES_LISTED + 1])
    more, page = len(page) > BATCHES_LISTED, page[:BATCHES_LISTED]
    tallies = batches.tallies([batch.id for batch in page])
    return {
        "batches": [batch_row(batch, tallies[batch.id]) for batch in page],
        "older": cursor_of(page[-1].created_at, page[-1].id) if more else None,
    }


def batch_row(batch: Batch, tally: batches.Tally) -> dict[str, Any]:
    return {
        "id": str(batch.id),
        "description": batch.description,
        "owner": batch.owner.get_username() if batch.owner_id else "system",
        "state": batch.state,
        "running": batch.state == BatchState.RUNNING,
        "cancel_requested": batch.cancel_requested,
        "created_at": batch.created_at.isoformat(),
        "finished_at": batch.finished_at.isoformat() if batch.finished_at else None,
        "total": tally.total,
        "counts": [{"status": s, "count": tally.counts[s]} for s in Status.values],
        "progress": tally.progress,
        "callbacks": [
            {
                "name": label,
                "type": getattr(batch, spec)["type"],
                "job": _job_link(getattr(batch, job)),
            }
            for spec, job, label in CALLBACKS
            if getattr(batch, spec)
        ],
        "url": reverse("dashboard-batch", args=[batch.id]),
    }


def batch_jobs(batch: Batch, status: str = "", after: str = "") -> dict[str, Any]:
    """A page of the batch's jobs, in the order they were created."""
    found = Job.objects.filter(batch=batch)
    if status:
        found = found.filter(status=status)
    if after:
        moment, job_id = read_cursor("after", after)
        found = found.filter(Q(created_at__gt=moment) | Q(created_at=moment, id__gt=job_id))
    fields = ("id", "type", "status", "progress", "attempts", "error", "message", "created_at")
    page = list(found.order_by("created_at", "id").values(*fields)[: JOBS_LISTED + 1])
    more, page = len(page) > JOBS_LISTED, page[:JOBS_LISTED]
    return {
        "jobs": [_job_row(job) for job in page],
        "later": cursor_of(page[-1]["created_at"], page[-1]["id"]) if more else None,
    }


def _job_row(job: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(job["id"]),
        "type": job["type"],
        "status": job["status"],
        "progress": job["progress"],
        "attempts": job["attempts"],
        "error": one_line_error(job["error"]) if job["status"] != Status.SUCCEEDED else "",
        "admin_url": reverse("admin:jobs_job_change", args=[job["id"]]),
    }


def batch_detail(batch: Batch) -> dict[str, Any]:
    summary = batches.batch_summary(batch)
    tally = batches.Tally(summary["counts"], summary["total"], summary["progress"])
    return {
        **batch_row(batch, tally),
        "failed_jobs": [
            {**job, "admin_url": reverse("admin:jobs_job_change", args=[job["id"]])}
            for job in summary["failed_jobs"]
        ],
        "failed_total": summary["counts"][Status.FAILED] + summary["counts"][Status.EXPIRED],
    }


# --- the views ----------------------------------------------------------------------------


def _may_cancel(user) -> bool:
    return user.has_perm(visibility.CANCEL_PERMISSION)


@staff_required
@require_GET
def batch_list(request: HttpRequest) -> HttpResponse:
    try:
        state = choice(request, "state", BatchState.values)
        data = batch_rows(state, request.GET.get("before", ""))
    except BadQuery as exc:
        return bad_query(exc)
    context = {
        **data,
        "state": state,
        "states": BatchState.choices,
        "paged": bool(request.GET.get("before")),
        "can_cancel": _may_cancel(request.user),
    }
    return render(request, "jobs/batches.html", context)


@staff_required
@require_GET
def batch_page(request: HttpRequest, batch_id) -> HttpResponse:
    batch = get_object_or_404(
        Batch.objects.select_related("owner", "success_job", "complete_job"), id=batch_id
    )
    try:
        status = choice(request, "status", Status.values)
        jobs = batch_jobs(batch, status, request.GET.get("after", ""))
    except BadQuery as exc:
        return bad_query(exc)
    context = {
        "batch": batch_detail(batch),
        **jobs,
        "status": status,
        "statuses": Status.choices,
        "paged": bool(request.GET.get("after")),
        "can_cancel": _may_cancel(request.user),
    }
    return render(request, "jobs/batch.html", context)


@staff_required
@permission_required(visibility.CANCEL_PERMISSION)
@require_POST
def cancel_batch(request: HttpRequest, batch_id) -> HttpResponse:
    batch = get_object_or_404(Batch, id=batch_id)
    try:
        batch = batches.cancel_batch(batch, by=request.user, via=Via.DASHBOARD)
        outcome, code = _cancelled(batch), 200
    except batches.BatchNotRunning as exc:
        batch, outcome, code = exc.batch, str(exc), 409
    if request.headers.get("X-Requested-With") == "fetch":
        return JsonResponse({"detail": outcome, "state": batch.state}, status=code)
    (messages.success if code == 200 else messages.error)(request, outcome)
    return redirect("dashboard-batch", batch_id=batch.id)


def _cancelled(batch: Batch) -> str:
    if batch.state == BatchState.RUNNING:
        return f"Batch {batch.id}: queued jobs cancelled, running ones asked to stop."
    return f"Batch {batch.id} {batch.state}."
