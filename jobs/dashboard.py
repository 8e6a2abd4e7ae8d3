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
from rest_framework import serializers

from . import api, controls, history, metrics, queries, registry, scheduling, services
from .audit import Via
from .errors import InvalidTransition
from .models import Job, OperatorAction, Scope, Status
from .registry import Limits

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
        **operator_sections(),
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
            **operator_permissions(request.user),
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
        services.retry(job, by=request.user, via=Via.DASHBOARD)
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
    chosen = failed.filter(id__in=selected) if selected else failed
    count = services.retry_many(chosen, by=request.user, via=Via.DASHBOARD)
    return _answer(request, f"{count} failed job(s) queued again.", 200, retried=count)


def _answer(request: HttpRequest, outcome: str, code: int, retried: int) -> HttpResponse:
    if request.headers.get("X-Requested-With") == "fetch":
        return JsonResponse({"detail": outcome, "retried": retried}, status=code)
    (messages.success if code == 200 else messages.error)(request, outcome)
    return redirect("dashboard")


# --- controls, schedules and the audit log ---------------------------------------------

SCHEDULE_PERMISSION = scheduling.CHANGE_PERMISSION
AUDIT_LISTED = 20
LIMIT_FIELDS = ("concurrency", "owner_concurrency", "rate", "owner_rate", "period")


def operator_sections() -> dict[str, Any]:
    return {
        "controls": api.controls_data(),
        "schedules": [_schedule_row(s) for s in scheduling.overview()],
        "audit": [_audit_row(a) for a in OperatorAction.objects.all()[:AUDIT_LISTED]],
    }


def operator_permissions(user) -> dict[str, bool]:
    return {
        "can_pause": user.has_perm(controls.PAUSE_PERMISSION),
        "can_change_limits": user.has_perm(controls.LIMITS_PERMISSION),
        "can_change_schedules": user.has_perm(SCHEDULE_PERMISSION),
    }


def _schedule_row(state: scheduling.ScheduleState) -> dict[str, Any]:
    return {
        "name": state.name,
        "description": state.description,
        "job_type": state.job_type,
        "task": state.task,
        "timing": state.timing,
        "enabled": state.enabled,
        "next_run_at": _iso(state.next_run_at),
        "last_run_at": _iso(state.last_run_at),
        "last_job": _job_link(state.last_job),
        "last_manual_job": _job_link(state.last_manual_job),
    }


def _job_link(job: Job | None) -> dict[str, Any] | None:
    if job is None:
        return None
    return {
        "id": str(job.id),
        "status": job.status,
        "created_at": job.created_at.isoformat(),
        "admin_url": reverse("admin:jobs_job_change", args=[job.id]),
    }


def _audit_row(action: OperatorAction) -> dict[str, Any]:
    return {
        "created_at": action.created_at.isoformat(),
        "actor": action.actor_name or "system",
        "action": action.action,
        "target_kind": action.target_kind,
        "target": action.target,
        "via": action.via,
    }


def _iso(moment) -> str | None:
    return moment.isoformat() if moment else None


def permission_required(permission: str):
    def decorate(view):
        def check(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            if not request.user.has_perm(permission):
                raise PermissionDenied(f"Needs the {permission} permission")
            return view(request, *args, **kwargs)

        check.__name__ = view.__name__
        check.__doc__ = view.__doc__
        return check

    return decorate


@staff_required
@permission_required(controls.PAUSE_PERMISSION)
@require_POST
def pause_control(request: HttpRequest, scope: str, name: str) -> HttpResponse:
    return _operate(
        request,
        lambda: controls.pause(scope, name, by=request.user, via=Via.DASHBOARD),
        f"{Scope(scope).label} {name} paused.",
    )


@staff_required
@permission_required(controls.PAUSE_PERMISSION)
@require_POST
def resume_control(request: HttpRequest, scope: str, name: str) -> HttpResponse:
    return _operate(
        request,
        lambda: controls.resume(scope, name, by=request.user, via=Via.DASHBOARD),
        f"{Scope(scope).label} {name} resumed.",
    )


@staff_required
@permission_required(controls.LIMITS_PERMISSION)
@require_POST
def change_limits(request: HttpRequest, name: str) -> HttpResponse:
    """Replace a type's limits with the form's (an empty field is no such limit), or
    with `reset` go back to the declared ones."""

    def apply() -> None:
        controls.validate_target(Scope.TYPE, name)
        new = None if "reset" in request.POST else limits_from_form(request.POST, name)
        controls.set_limits(name, new, by=request.user, via=Via.DASHBOARD)

    return _operate(request, apply, f"Limits of {name} saved.")


def limits_from_form(form, type_name: str) -> Limits:
    errors, values = {}, {}
    for field_name in LIMIT_FIELDS:
        raw = form.get(field_name, "").strip()
        if not raw:
            continue
        try:
            values[field_name] = float(raw) if field_name == "period" else int(raw)
        except ValueError:
            errors[field_name] = ["Must be a number."]
    if errors:
        raise serializers.ValidationError(errors)
    return Limits(**{"period": registry.get(type_name).limits.period, **values})


@staff_required
@permission_required(SCHEDULE_PERMISSION)
@require_POST
def switch_schedule(request: HttpRequest, name: str) -> HttpResponse:
    """Switch a schedule on (`enabled=1`) or off (`enabled=0`)."""
    enabled = request.POST.get("enabled")

    def apply() -> None:
        if enabled not in ("0", "1"):
            raise serializers.ValidationError({"enabled": ["Must be 1 (on) or 0 (off)."]})
        scheduling.set_enabled(name, enabled == "1", by=request.user, via=Via.DASHBOARD)

    switched = "switched on" if enabled == "1" else "paused"
    return _operate(request, apply, f"Schedule {name} {switched}.")


@staff_required
@permission_required(SCHEDULE_PERMISSION)
@require_POST
def run_schedule(request: HttpRequest, name: str) -> HttpResponse:
    """Enqueue the schedule's job now; the next scheduled run still happens."""
    return _operate(
        request,
        lambda: scheduling.run_now(name, by=request.user, via=Via.DASHBOARD),
        f"Schedule {name} started now.",
    )


def _operate(request: HttpRequest, act, done: str) -> HttpResponse:
    try:
        act()
    except serializers.ValidationError as exc:
        detail = exc.detail if isinstance(exc.detail, dict) else {"detail": exc.detail}
        if request.headers.get("X-Requested-With") == "fetch":
            return JsonResponse({"detail": "Not done.", "errors": detail}, status=400)
        messages.error(request, _in_words(detail))
        return redirect("dashboard")
    if request.headers.get("X-Requested-With") == "fetch":
        return JsonResponse({"detail": done})
    messages.success(request, done)
    return redirect("dashboard")


def _in_words(errors: dict) -> str:
    return " ".join(f"{name}: {' '.join(map(str, texts))}" for name, texts in errors.items())
