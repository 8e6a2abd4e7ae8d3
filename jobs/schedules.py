"""Schedules: declared once in `settings.JOBS_SCHEDULES`, synced into django-celery-beat's
tables (after `migrate` and by `manage.py sync_schedules`), fired by Beat.

A declaration names either a job type (`job`, with a `payload`) or a plain Celery task
(`task`), and either a `cron` expression ("m h dom mon dow") or an interval in seconds
(`every`). Scheduled jobs go through `jobs.services.enqueue` with a key derived from the
schedule's window, so however many Beats fire for one window, one job is created
(jobs/scheduling.py). Only
Beat's firings have a window (Beat stamps them with `FIRED_AT_HEADER`, see jobs/beat.py);
a run started by hand (the admin's "Run selected tasks") or from code is keyed by its own
message, so it never takes, or suppresses, a window's scheduled job.

`DISABLE_<NAME>_CRON=1` in the environment disables one schedule: NAME is the schedule's
name in upper case with every run of other characters turned into "_" (the schedule
"image-cleanup" is switched off by `DISABLE_IMAGE_CLEANUP_CRON`).

This module is imported by the settings module: no models at import time.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import schedules as celery_schedules
from django.core.exceptions import ImproperlyConfigured

ENQUEUE_TASK = "jobs.enqueue_scheduled"
# The header that marks a django-celery-beat row as ours, holding the declaration's name.
MANAGED_HEADER = "jobsite_schedule"
# The header that marks a row an operator switched off (dashboard, admin): `sync` keeps it
# off, as the operator left it, until someone switches it on again.
SWITCHED_OFF_HEADER = "jobsite_switched_off"
# The header with which Beat marks a scheduled firing, holding when it fired (a Unix time).
FIRED_AT_HEADER = "jobsite_fired_at"
# Beat fires a cron entry at its minute, a little late under load. A fire time within
# this of an occurrence belongs to that occurrence (cron occurrences are >= 60 s apart).
CRON_TOLERANCE = timedelta(seconds=30)
TRUE_WORDS = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Schedule:
    name: str
    job: str | None = None
    task: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    cron: str | None = None
    every: float | None = None
    enabled: bool = True
    run_at_startup: bool = False
    queue: str | None = None
    expire_seconds: int | None = None
    description: str = ""

    @property
    def disable_switch(self) -> str:
        return disable_switch(self.name)

    def is_enabled(self) -> bool:
        switched_off = os.environ.get(self.disable_switch, "").strip().lower() in TRUE_WORDS
        return self.enabled and not switched_off

    def task_name(self) -> str:
        return self.task or ENQUEUE_TASK

    def task_kwargs(self) -> dict[str, Any]:
        if self.job:
            return {"type": self.job, "payload": self.payload, "schedule": self.name}
        return {}

    def celery_schedule(self) -> celery_schedules.BaseSchedule:
        if self.cron:
            return crontab_from(self.cron)
        return celery_schedules.schedule(timedelta(seconds=self.every))

    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"queue": self.queue or "default"}
        if self.expire_seconds:
            options["expires"] = self.expire_seconds
        return options


def disable_switch(name: str) -> str:
    return f"DISABLE_{re.sub(r'[^A-Z0-9]+', '_', name.upper()).strip('_')}_CRON"


def crontab_from(expression: str) -> celery_schedules.crontab:
    minute, hour, day_of_month, month_of_year, day_of_week = cron_fields(expression)
    return celery_schedules.crontab(
        minute=minute,
        hour=hour,
        day_of_month=day_of_month,
        month_of_year=month_of_year,
        day_of_week=day_of_week,
    )


def cron_fields(expression: str) -> list[str]:
    fields = expression.split()
    if len(fields) != 5:
        raise ImproperlyConfigured(
            f"Cron expression {expression!r} must have 5 fields: minute hour day month weekday"
        )
    return fields


def parse(declarations: dict[str, dict[str, Any]]) -> list[Schedule]:
    """Turn the settings' declarations into schedules, refusing malformed ones."""
    parsed = []
    for name, options in declarations.items():
        unknown = set(options) - (set(Schedule.__dataclass_fields__) - {"name"})
        if unknown:
            raise ImproperlyConfigured(f"Schedule {name!r}: unknown options {sorted(unknown)}")
        schedule = Schedule(name=name, **options)
        if bool(schedule.job) == bool(schedule.task):
            raise ImproperlyConfigured(f"Schedule {name!r}: give exactly one of job or task")
        if bool(schedule.cron) == (schedule.every is not None):
            raise ImproperlyConfigured(f"Schedule {name!r}: give exactly one of cron or every")
        if schedule.every is not None and schedule.every < 1:
            raise ImproperlyConfigured(f"Schedule {name!r}: every must be at least 1 second")
        schedule.celery_schedule()  # refuses a malformed cron expression
        parsed.append(schedule)
    return parsed


def beat_schedule(declarations: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The enabled declarations as a Celery `beat_schedule`, for a file-based Beat.

    The database scheduler does not read it: `sync` writes the same schedules into
    django-celery-beat's tables, where the admin can see and edit them.
    """
    return {
        s.name: {
            "task": s.task_name(),
            "schedule": s.celery_schedule(),
            "kwargs": s.task_kwargs(),
            "options": s.options(),
        }
        for s in parse(declarations)
        if s.is_enabled()
    }


def declared() -> list[Schedule]:
    from django.conf import settings

    return parse(settings.JOBS_SCHEDULES)


def get_declared(name: str) -> Schedule | None:
    return next((s for s in declared() if s.name == name), None)


# --- windows ---------------------------------------------------------------------------


def window_for(schedule: celery_schedules.BaseSchedule, fired_at: datetime) -> datetime:
    """The occurrence of `schedule` that a firing at `fired_at` belongs to.

    It is the nearest occurrence, not the last one before `fired_at`: a Beat whose
    clock runs a little ahead fires just before the occurrence and must land in the
    same window as one that fires just after it.
    """
    if isinstance(schedule, celery_schedules.crontab):
        start = fired_at - CRON_TOLERANCE
        last_run_at, delta, _ = schedule.remaining_delta(start)
        return (last_run_at + delta).replace(second=0, microsecond=0).astimezone(UTC)
    if isinstance(schedule, celery_schedules.schedule):
        period = schedule.run_every.total_seconds()
        if period > 0:
            return datetime.fromtimestamp(round(fired_at.timestamp() / period) * period, UTC)
    return fired_at.replace(microsecond=0).astimezone(UTC)


def window_key(name: str, window: datetime) -> str:
    return f"schedule:{name}:{window.strftime('%Y-%m-%dT%H:%M:%SZ')}"


def manual_run_key(name: str, run_id: str) -> str:
    """The key of a run Beat did not fire; never equal to a window's key."""
    return f"schedule:{name}:manual:{run_id}"
