"""/dashboard/ for staff: totals, types, recent and failed jobs, one-click and bulk retry
(for staff with the retry_job permission, as the admin's retry action). The page
refreshes its figures from /dashboard/data/ every few seconds, and draws its history
charts from /dashboard/history/ (jobs/history.py). It shows no payloads."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from . import history, metrics, queries, services
from .errors import InvalidTransition
from .models import Job, Status

RECENT = 20
FAILED_LISTED = 50


def staff_required(view):
    @login_required
    def check(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if not request.user.is_staff:
            raise PermissionDenied("Staff only")
        return view(request, *args, **kwargs)

    check.__name__ = view.__name__
    check.__doc__ = view.__doc__
    return check


RETRY_PERMISSION = "jobs.retry_job"


def retry_permission_required(view):
    def check(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if not request.user.has_perm(RETRY_PERMISSION):
            raise PermissionDenied("Retrying jobs needs the retry_job permission")
        return view(request, *args, **kwargs)

    check.__name__ = view.__name__
    check.__doc__ = view.__doc__
    return check


def snapshot() -> dict[str, Any]:
    """Everything the dashboard shows, as JSON-ready data."""
    stats = queries.stats(Job.objects.all())
    recent = Job.objects.select_related("owner").order_by("-created_at")[:RECENT]
    return {
        "totals": stats["by_status"],
        "by_type": [
            {"type": name, **{s.value: counts.get(s.value, 0) for s in Status}}
            for name, counts in sorted(stats["by_type"].items())
        ],
        "throughput": stats["throughput"],
        "recent": [_row(j) for j in recent],
        "failed": [_row(j) for j in latest_failed()],
        "failed_total": stats["by_status"][Status.FAILED],
    }


def latest_failed() -> QuerySet[Job]:
    """The most recently failed jobs, newest first (read through job_failed_finished)."""
    failed = Job.objects.select_related("owner").filter(status=Status.FAILED)
    return failed.order_by("-finished_at")[:FAILED_LISTED]


def _row(job: Job) -> dict[str, Any]:
    return {
        "id": str(job.id),
        "type": job.type,
        "status": job.status,
        "progress": job.progress,
        "owner": job.owner.get_username() if job.owner else "system",
        "error": (job.error or "")[:200],
        "attempts": job.attempts,
        "created_at": job.created_at.isoformat(),
        "admin_url": reverse("admin:jobs_job_change", args=[job.id]),
    }


@staff_required
@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "jobs/dashboard.html",
        {
            "data": snapshot(),
            "statuses": Status.choices,
            "flower_url": settings.FLOWER_URL,
            "can_retry": request.user.has_perm(RETRY_PERMISSION),
        },
    )


@staff_required
@require_GET
def dashboard_data(request: HttpRequest) -> JsonResponse:
    return JsonResponse(snapshot())


@staff_required
@require_GET
def dashboard_history(request: HttpRequest) -> JsonResponse:
    """The history charts' data for ?window=hour (the default) or ?window=day."""
    try:
        win = history.window(request.GET.get("window", "hour"))
    except history.UnknownWindow as exc:
        return JsonResponse(
            {"detail": str(exc), "code": "invalid", "errors": {"window": [str(exc)]}}, status=400
        )
    return JsonResponse(history.charts(win, broker=_broker_depths()))


def _broker_depths() -> dict[str, int] | None:
    """The broker's queue depths, or None while it does not answer (the charts then
    show the database's figures alone)."""
    try:
        return metrics.broker_queue_depths()
    except Exception:
        return None


@staff_required
@retry_permission_required
@require_POST
def retry_job(request: HttpRequest, job_id) -> HttpResponse:
    job = get_object_or_404(Job, id=job_id)
    try:
        services.retry(job)
        outcome, code = f"Job {job.id} queued again.", 200
    except InvalidTransition as exc:
        outcome, code = str(exc), 409
    return _answer(request, outcome, code, retried=1 if code == 200 else 0)


@staff_required
@retry_permission_required
@require_POST
def retry_failed(request: HttpRequest) -> HttpResponse:
    """Retry the selected failed jobs, or every failed job when none is selected."""
    selected = request.POST.getlist("job")
    failed = Job.objects.filter(status=Status.FAILED)
    count = services.retry_many(failed.filter(id__in=selected) if selected else failed)
    return _answer(request, f"{count} failed job(s) queued again.", 200, retried=count)


def _answer(request: HttpRequest, outcome: str, code: int, retried: int) -> HttpResponse:
    if request.headers.get("X-Requested-With") == "fetch":
        return JsonResponse({"detail": outcome, "retried": retried}, status=code)
    (messages.success if code == 200 else messages.error)(request, outcome)
    return redirect("dashboard")
