"""Operators' controls: pausing and resuming a queue or a job type, and replacing a
type's declared limits at run time. Each change is recorded (jobs/audit.py).

A paused queue or type starts none of its jobs: a worker that receives one holds it
(`queued`, `held="paused"`) and resuming releases them. A type's limits are those it
declares (`JobType.limits`) unless staff replaced them; see jobs/limits.py for how they
hold across workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.conf import settings
from django.db import transaction
from django.db.models import Count
from rest_framework import serializers

from . import audit, limits, registry
from .limits import Rules, control_for, effective_limits, rules_for
from .models import Control, Held, Job, Scope, Status
from .registry import Limits

__all__ = ["Rules", "control_for", "effective_limits", "rules_for"]

# Who may act, besides being staff (superusers hold every permission).
PAUSE_PERMISSION = "jobs.pause_jobs"
LIMITS_PERMISSION = "jobs.change_limits"


def validate_target(scope: str, name: str) -> None:
    """Raise a ValidationError naming what is wrong unless `name` is a known queue or
    job type."""
    if scope == Scope.QUEUE:
        if name not in settings.JOBS_QUEUES:
            raise serializers.ValidationError(
                {"queue": [f"Unknown queue {name!r}; queues: {', '.join(settings.JOBS_QUEUES)}."]}
            )
    elif scope == Scope.TYPE:
        try:
            registry.get(name)
        except registry.UnknownJobType as exc:
            raise serializers.ValidationError({"type": [str(exc)]}) from None
    else:
        raise serializers.ValidationError({"scope": ["Must be 'queue' or 'type'."]})


def is_paused(scope: str, name: str) -> bool:
    return Control.objects.filter(scope=scope, name=name, paused=True).exists()


def paused() -> list[tuple[str, str]]:
    """(scope, name) of every paused queue and type."""
    paused_rows = Control.objects.filter(paused=True).order_by("scope", "name")
    return list(paused_rows.values_list("scope", "name"))


def pause(scope: str, name: str, *, by, via: str) -> Control:
    """Pause a queue or a job type: workers start none of its jobs until it is resumed."""
    validate_target(scope, name)
    with transaction.atomic():
        control = _locked(scope, name)
        was = control.paused
        control.paused = True
        _save(control, by)
        if not was:
            audit.record(by, "pause", scope, name, via=via)
    return control


def resume(scope: str, name: str, *, by, via: str) -> int:
    """Resume a paused queue or job type; its held jobs are sent to start. Returns how
    many were released now (the sweeper releases any left)."""
    validate_target(scope, name)
    with transaction.atomic():
        control = _locked(scope, name)
        was = control.paused
        control.paused = False
        _save(control, by)
        if was:
            audit.record(by, "resume", scope, name, via=via)
    return limits.release_paused()


def set_limits(type_name: str, new: Limits | None, *, by, via: str) -> Control:
    """Replace the limits of job type `type_name` with `new`; None goes back to what the
    type declares. Jobs held by the old limits are reconsidered at once."""
    validate_target(Scope.TYPE, type_name)
    if new is not None:
        validate_limits(new)
    with transaction.atomic():
        control = _locked(Scope.TYPE, type_name)
        before = limits.effective_limits(registry.get(type_name), control)
        control.overrides_limits = new is not None
        for name in ("concurrency", "owner_concurrency", "rate", "owner_rate", "period"):
            setattr(control, name, getattr(new, name) if new is not None else None)
        _save(control, by)
        after = limits.effective_limits(registry.get(type_name), control)
        audit.record(
            by,
            "set_limits" if new is not None else "reset_limits",
            Scope.TYPE,
            type_name,
            via=via,
            before=limits_as_dict(before),
            after=limits_as_dict(after),
        )
    limits.reconsider(type_name)
    return control


def limits_as_dict(value: Limits) -> dict:
    return {
        "concurrency": value.concurrency,
        "owner_concurrency": value.owner_concurrency,
        "rate": value.rate,
        "owner_rate": value.owner_rate,
        "period": value.period,
    }


def validate_limits(value: Limits) -> None:
    errors = {}
    for name in ("concurrency", "owner_concurrency", "rate", "owner_rate"):
        number = getattr(value, name)
        if number is not None and (not isinstance(number, int) or number < 1):
            errors[name] = ["Must be a whole number of at least 1, or null for no limit."]
    if not value.period or value.period <= 0:
        errors["period"] = ["Must be a number of seconds above 0."]
    if errors:
        raise serializers.ValidationError(errors)


def _locked(scope: str, name: str) -> Control:
    Control.objects.get_or_create(scope=scope, name=name)
    return Control.objects.select_for_update().get(scope=scope, name=name)


def _save(control: Control, by) -> None:
    control.gates = control.paused or (
        control.overrides_limits
        and any(
            getattr(control, n) is not None
            for n in ("concurrency", "owner_concurrency", "rate", "owner_rate")
        )
    )
    control.updated_by = by if by is not None and by.is_authenticated else None
    control.save()


# --- what operators see ------------------------------------------------------------------


@dataclass
class QueueControl:
    name: str
    paused: bool
    held: dict[str, int] = field(default_factory=dict)


@dataclass
class TypeControl:
    name: str
    queue: str
    paused: bool
    overrides_limits: bool
    limits: Limits  # in force
    declared_limits: Limits
    held: dict[str, int] = field(default_factory=dict)


@dataclass
class Overview:
    queues: list[QueueControl]
    types: list[TypeControl]


def overview() -> Overview:
    """Every queue and job type with its pause, its limits and how many of its queued
    jobs are held, and why (`paused`, `concurrency`, `rate`)."""
    rows = {(c.scope, c.name): c for c in Control.objects.all()}
    held_by_type: dict[str, dict[str, int]] = {}
    held_by_queue: dict[str, dict[str, int]] = {}
    for row in held_counts():
        for counts, key in ((held_by_type, row["type"]), (held_by_queue, row["queue"])):
            reasons = counts.setdefault(key, {})
            reasons[row["held"]] = reasons.get(row["held"], 0) + row["n"]
    queues = [
        QueueControl(
            name=name,
            paused=_paused(rows.get((Scope.QUEUE, name))),
            held=held_by_queue.get(name, {}),
        )
        for name in settings.JOBS_QUEUES
    ]
    types = []
    for jt in sorted(registry.all_types(), key=lambda t: t.name):
        control = rows.get((Scope.TYPE, jt.name))
        types.append(
            TypeControl(
                name=jt.name,
                queue=jt.queue,
                paused=_paused(control),
                overrides_limits=bool(control and control.overrides_limits),
                limits=effective_limits(jt, control),
                declared_limits=jt.limits,
                held=held_by_type.get(jt.name, {}),
            )
        )
    return Overview(queues=queues, types=types)


def held_counts() -> list[dict]:
    """Queued jobs held back, as rows of type, queue, held (the reason) and n."""
    held = Job.objects.filter(status=Status.QUEUED).exclude(held=Held.NO).order_by()
    return list(held.values("type", "queue", "held").annotate(n=Count("id")))


def _paused(control: Control | None) -> bool:
    return control is not None and control.paused
