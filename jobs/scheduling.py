"""Schedules at work: the declarations (jobs/schedules.py) synced into django-celery-beat's
tables, and the jobs their firings create, one per window."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from celery.schedules import BaseSchedule
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from . import schedules
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

    The declaration owns the task, its arguments, the timing, the enabled flag and the
    options it declares (queue, expiry); an admin's edits to anything else (description,
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
        "enabled": schedule.is_enabled(),
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
