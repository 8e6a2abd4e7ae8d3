"""Schedules at work: the declarations (jobs/schedules.py) synced into django-celery-beat's
tables, and the jobs their firings create, one per window."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from celery.schedules import BaseSchedule, crontab
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask
from rest_framework import serializers

from . import audit, schedules
from .errors import IdempotencyConflict
from .models import Job, Status
from .services import enqueue, existing_for_key, validate_payload


def validate_jobs(declarations: list[schedules.Schedule]) -> None:
    """Refuse schedules naming an unknown job type or carrying an invalid payload."""
    for schedule in declarations:
        if schedule.job:
            try:
                validate_payload(schedule.job, schedule.payload)
            except Exception as exc:
                raise ImproperlyConfigured(f"Schedule {schedule.name!r}: {exc}") from exc


# --- sync into django-celery-beat ------------------------------------------------------


@dataclass
class SyncResult:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)


def sync(declarations: list[schedules.Schedule] | None = None) -> SyncResult:
    """Write the declarations into django-celery-beat's tables.

    The declaration owns the task, its arguments, the timing, the enabled flag (but a
    row an operator switched off stays off, see `set_enabled`) and the options it
    declares (queue, expiry); an admin's edits to anything else (description,
    priority, start time, one-off, expiry it did not declare) survive a sync. Rows of
    schedules no longer declared are disabled, never deleted; rows an admin created are
    left alone.
    """
    declarations = schedules.declared() if declarations is None else declarations
    validate_jobs(declarations)
    result = SyncResult()
    with transaction.atomic():
        for schedule in declarations:
            row = PeriodicTask.objects.filter(name=schedule.name).first()
            if row is None:
                row = PeriodicTask(name=schedule.name, description=schedule.description)
                _apply(schedule, row)
                row.save()
                result.created.append(schedule.name)
            elif _apply(schedule, row):
                row.save()
                result.updated.append(schedule.name)
            else:
                result.unchanged.append(schedule.name)
        names = {s.name for s in declarations}
        for row in PeriodicTask.objects.filter(enabled=True).exclude(name__in=names):
            if json.loads(row.headers or "{}").get(schedules.MANAGED_HEADER):
                row.enabled = False
                row.save()
                result.disabled.append(row.name)
    return result


def _apply(schedule: schedules.Schedule, row) -> bool:
    """Set the fields the declaration owns on `row`; True if anything changed."""
    headers = json.loads(row.headers or "{}")
    headers[schedules.MANAGED_HEADER] = schedule.name
    wanted: dict[str, Any] = {
        "task": schedule.task_name(),
        "args": "[]",
        "kwargs": json.dumps(schedule.task_kwargs(), sort_keys=True),
        "enabled": schedule.is_enabled() and not headers.get(schedules.SWITCHED_OFF_HEADER),
        "headers": json.dumps(headers, sort_keys=True),
        "interval": None,
        "crontab": None,
        "solar": None,
        "clocked": None,
    }
    if schedule.cron:
        minute, hour, day_of_month, month_of_year, day_of_week = schedules.cron_fields(
            schedule.cron
        )
        wanted["crontab"], _ = CrontabSchedule.objects.get_or_create(
            minute=minute,
            hour=hour,
            day_of_month=day_of_month,
            month_of_year=month_of_year,
            day_of_week=day_of_week,
            timezone=settings.TIME_ZONE,
        )
    else:
        wanted["interval"], _ = IntervalSchedule.objects.get_or_create(
            every=int(schedule.every), period=IntervalSchedule.SECONDS
        )
    if schedule.queue:
        wanted["queue"] = schedule.queue
    if schedule.expire_seconds:
        wanted["expire_seconds"] = schedule.expire_seconds

    changed = False
    for name, value in wanted.items():
        current = getattr(row, name)
        if name in ("kwargs", "headers"):
            current = json.dumps(json.loads(current or "{}"), sort_keys=True)
        if current != value:
            setattr(row, name, value)
            changed = True
    return changed


# --- the jobs of schedules ---------------------------------------------------------


def enqueue_for_schedule(
    schedule_name: str | None,
    type_name: str,
    payload: dict[str, Any] | None = None,
    *,
    priority: str = "normal",
    fired_at: datetime | None = None,
    run_id: str | None = None,
) -> Job:
    """Enqueue the job a schedule asked for.

    A firing of Beat (`fired_at`, when Beat fired it) is keyed by the schedule's window,
    so that two Beats, a restarted Beat or a redelivered message create one job per
    window. Any other run (the admin's "Run selected tasks", a call from code) is keyed
    by `run_id`, the id of its message, so a redelivered message still creates one job
    and the run never suppresses the window's scheduled job.
    """
    key = schedule_key(schedule_name, fired_at, run_id)
    try:
        return enqueue(type_name, payload, idempotency_key=key, priority=priority).job
    except IdempotencyConflict:
        # The schedule's payload changed within the window: the window already has its job.
        return existing_for_key(None, key)


def schedule_key(
    schedule_name: str | None, fired_at: datetime | None, run_id: str | None
) -> str | None:
    """A firing's window key, else a key of the run's own (None for no schedule)."""
    if not schedule_name:
        return None
    timing = schedule_of(schedule_name) if fired_at else None
    if timing is not None:
        return schedules.window_key(schedule_name, schedules.window_for(timing, fired_at))
    return schedules.manual_run_key(schedule_name, run_id or uuid.uuid4().hex)


def enqueue_startup_jobs(now: datetime | None = None) -> list[Job]:
    """Enqueue the schedules marked to run when a worker starts, unless one is already
    waiting or running; workers starting together share one job per minute."""
    if not settings.JOBS_STARTUP_JOBS:
        return []
    now = now or timezone.now()
    jobs = []
    for schedule in schedules.declared():
        if not (schedule.job and schedule.run_at_startup and schedule.is_enabled()):
            continue
        pending = Job.objects.filter(
            type=schedule.job,
            owner__isnull=True,
            status__in=[Status.QUEUED, Status.RUNNING],
            idempotency_key__startswith=f"schedule:{schedule.name}:",
        )
        if pending.exists():
            continue
        key = f"schedule:{schedule.name}:startup:{now.strftime('%Y-%m-%dT%H:%M')}"
        jobs.append(enqueue(schedule.job, schedule.payload, idempotency_key=key).job)
    return jobs


def schedule_of(name: str) -> BaseSchedule | None:
    """The timing of the schedule called `name`: its database row, else its declaration."""
    row = PeriodicTask.objects.filter(name=name).first()
    if row is not None:
        return row.schedule
    declaration = schedules.get_declared(name)
    return declaration.celery_schedule() if declaration else None


# --- what operators see and do -------------------------------------------------------

# Switching and running schedules, in the dashboard and the API (the admin's own check
# for editing periodic tasks).
CHANGE_PERMISSION = "django_celery_beat.change_periodictask"


class UnknownSchedule(serializers.ValidationError):
    """No schedule has the name asked for."""

    def __init__(self, name: str):
        self.name = name
        self.message = f"Unknown schedule {name!r}."
        super().__init__({"schedule": [self.message]})


@dataclass(frozen=True)
class Timing:
    """A schedule's timing in machine form: its kind and the fields of that kind (the
    others None)."""

    kind: str  # "cron", "interval", "solar", "clocked" or "none"
    cron: str | None = None  # "m h dom mon dow"
    timezone: str | None = None  # a cron's
    every_seconds: float | None = None
    solar_event: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    clocked_at: datetime | None = None


@dataclass
class ScheduleState:
    """One schedule as the dashboard and the API show it."""

    name: str
    description: str
    task: str
    job_type: str | None  # None for a schedule that sends a plain Celery task
    timing: str  # in words: "every 5 minutes", "At 07:00 AM (UTC)"
    timing_spec: Timing
    enabled: bool
    next_run_at: datetime | None  # None while disabled
    last_run_at: datetime | None  # when Beat last fired it
    last_job: Job | None  # the job of its latest window
    last_manual_job: Job | None  # the latest job started by hand


def overview(now: datetime | None = None) -> list[ScheduleState]:
    """Every schedule in django-celery-beat's table, by name."""
    now = now or timezone.now()
    rows = PeriodicTask.objects.select_related("interval", "crontab", "solar", "clocked")
    return [_state(row, now) for row in rows.order_by("name")]


def state(name: str, now: datetime | None = None) -> ScheduleState:
    """The schedule called `name`, or UnknownSchedule."""
    rows = PeriodicTask.objects.select_related("interval", "crontab", "solar", "clocked")
    row = _named(rows, name)
    if row is None:
        raise UnknownSchedule(name)
    return _state(row, now or timezone.now())


def _named(rows, name: str) -> PeriodicTask | None:
    # PostgreSQL refuses a NUL in a text parameter; no name holds one.
    return None if "\x00" in name else rows.filter(name=name).first()


def _state(row: PeriodicTask, now: datetime) -> ScheduleState:
    job_type = job_type_of(row)
    return ScheduleState(
        name=row.name,
        description=row.description,
        task=row.task,
        job_type=job_type,
        timing=timing_in_words(row),
        timing_spec=timing_of(row),
        enabled=row.enabled,
        next_run_at=next_run(row, now) if row.enabled else None,
        last_run_at=row.last_run_at,
        last_job=last_window_job(row.name, job_type) if job_type else None,
        last_manual_job=last_manual_job(row.name, job_type) if job_type else None,
    )


def job_type_of(row: PeriodicTask) -> str | None:
    if row.task != schedules.ENQUEUE_TASK:
        return None
    return _kwargs_of(row).get("type")


def _kwargs_of(row: PeriodicTask) -> dict[str, Any]:
    try:
        kwargs = json.loads(row.kwargs or "{}")
    except ValueError:
        return {}
    return kwargs if isinstance(kwargs, dict) else {}


def timing_in_words(row: PeriodicTask) -> str:
    if row.crontab is not None:
        cron = row.crontab
        fields = [cron.minute, cron.hour, cron.day_of_month, cron.month_of_year, cron.day_of_week]
        return f"{cron.human_readable} (cron {' '.join(fields)})"
    if row.interval is not None:
        return str(row.interval)
    return str(row.solar or row.clocked or "no timing")


def timing_of(row: PeriodicTask) -> Timing:
    if row.crontab is not None:
        cron = row.crontab
        fields = [cron.minute, cron.hour, cron.day_of_month, cron.month_of_year, cron.day_of_week]
        return Timing("cron", cron=" ".join(fields), timezone=str(cron.timezone))
    if row.interval is not None:
        return Timing("interval", every_seconds=row.interval.schedule.run_every.total_seconds())
    if row.solar is not None:
        solar = row.solar
        return Timing(
            "solar",
            solar_event=solar.event,
            latitude=float(solar.latitude),
            longitude=float(solar.longitude),
        )
    if row.clocked is not None:
        return Timing("clocked", clocked_at=row.clocked.clocked_time)
    return Timing("none")


def next_run(row: PeriodicTask, now: datetime) -> datetime:
    """When Beat next fires `row`: the next occurrence of a cron after its last firing
    (or now), an interval after its last firing (now if it never fired or is overdue)."""
    timing = row.schedule
    if isinstance(timing, crontab):
        # Rounded to the second: celery reads its own "now", a moment after ours.
        return _to_second(now + timing.remaining_estimate(now))
    if row.interval is not None and row.last_run_at is not None:
        return max(row.last_run_at + timing.run_every, now)
    return now


def _to_second(moment: datetime) -> datetime:
    return (moment + timedelta(microseconds=500_000)).replace(microsecond=0)


def _schedule_jobs(name: str, job_type: str):
    # The application's keyed jobs of one type: retention keeps a type's finished jobs
    # to a few thousand, so this reads a bounded slice however large the table grows
    # (through job_type_status or the system jobs' key index).
    return Job.objects.filter(
        type=job_type, owner__isnull=True, idempotency_key__startswith=f"schedule:{name}:"
    ).order_by("-created_at")


def last_window_job(name: str, job_type: str) -> Job | None:
    """The job of the schedule's latest window fired by Beat (not one run by hand or at a
    worker's start)."""
    prefix = f"schedule:{name}:"
    jobs = _schedule_jobs(name, job_type).exclude(idempotency_key__startswith=f"{prefix}manual:")
    return jobs.exclude(idempotency_key__startswith=f"{prefix}startup:").first()


def last_manual_job(name: str, job_type: str) -> Job | None:
    manual = f"schedule:{name}:manual:"
    return _schedule_jobs(name, job_type).filter(idempotency_key__startswith=manual).first()


def schedule_row(name: str) -> PeriodicTask:
    """The schedule called `name`, or UnknownSchedule (a ValidationError) naming it."""
    row = _named(PeriodicTask.objects, name)
    if row is None:
        raise UnknownSchedule(name)
    return row


def set_enabled(name: str, enabled: bool, *, by, via: str) -> PeriodicTask:
    """Switch a schedule on or off (django-celery-beat's `enabled`); Beat picks the change
    up at once. A schedule switched off stays off through `sync_schedules` until it is
    switched on again (a declaration or DISABLE_<NAME>_CRON can still keep it off)."""
    with transaction.atomic():
        row = schedule_row(name)
        row = PeriodicTask.objects.select_for_update().get(pk=row.pk)
        if row.enabled != enabled:
            row.enabled = enabled
            row.headers = switched_headers(row.headers, enabled)
            row.save()
            audit.record(by, "resume" if enabled else "pause", "schedule", name, via=via)
    return row


def switched_headers(headers: str | None, enabled: bool) -> str:
    """A row's headers, marked as switched off by an operator (or no longer)."""
    parsed = json.loads(headers or "{}")
    if enabled:
        parsed.pop(schedules.SWITCHED_OFF_HEADER, None)
    else:
        parsed[schedules.SWITCHED_OFF_HEADER] = True
    return json.dumps(parsed, sort_keys=True)


def run_now(name: str, *, by, via: str) -> Job:
    """Enqueue the schedule's job now, with the row's current arguments. The job is keyed
    as a run of its own (`schedules.manual_run_key`), so the next scheduled window still
    gets its job."""
    row = schedule_row(name)
    job_type = job_type_of(row)
    if job_type is None:
        raise serializers.ValidationError(
            {"schedule": [f"Schedule {name!r} sends the task {row.task}, not a job."]}
        )
    kwargs = _kwargs_of(row)
    with transaction.atomic():
        job = enqueue_for_schedule(
            name,
            job_type,
            kwargs.get("payload"),
            priority=kwargs.get("priority", "normal"),
            run_id=uuid.uuid4().hex,
        )
        audit.record(by, "run_now", "schedule", name, via=via, job=str(job.id))
    return job
