"""The registry of job types.

A job type is registered once, in its app's `jobs.py`, with the `job_type` decorator:

    @job_type("email.send", serializer=SendEmailSerializer, queue="emails")
    def send_email(ctx: JobContext) -> dict: ...

Each type runs as a Celery task of the same name (bound when the app is ready, in
jobs/tasks.py), so Flower and the result admin show meaningful names. This module knows
nothing of Celery.

A type also says who may create it through the API (`exposure`); code
(`jobs.engine.enqueue`), schedules, the `enqueue_job` command and the apps' own
endpoints create any type. A type that says nothing is not creatable through the API.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from rest_framework import serializers

if TYPE_CHECKING:
    from .context import JobContext

Handler = Callable[["JobContext"], Any]
# A type's bounds for non-staff callers: its validated payload -> errors by payload field.
PayloadLimits = Callable[[dict[str, Any]], dict[str, list[str]]]


class Exposure(StrEnum):
    """Who may create jobs of a type through the API."""

    USERS = "users"  # any signed-in user
    STAFF = "staff"  # staff users only
    INTERNAL = "internal"  # nobody: only the application itself


class EmptyPayload(serializers.Serializer):
    pass


@dataclass(frozen=True)
class Retention:
    """How long finished jobs of a type are kept, and at most how many (None: no limit
    on the count, only on the age)."""

    succeeded_for: timedelta = timedelta(hours=24)
    succeeded_max: int | None = 1000
    failed_for: timedelta = timedelta(days=7)
    failed_max: int | None = 5000


@dataclass(frozen=True)
class Limits:
    """Global limits on a type's jobs, held across all workers (jobs/limits.py): at most
    `concurrency` running at once and at most `rate` started per `period` seconds, and
    the same per owner (`owner_concurrency`, `owner_rate`). None: no such limit."""

    concurrency: int | None = None
    owner_concurrency: int | None = None
    rate: int | None = None
    owner_rate: int | None = None
    period: float = 60.0

    @property
    def any(self) -> bool:
        return any(
            v is not None
            for v in (self.concurrency, self.owner_concurrency, self.rate, self.owner_rate)
        )


NO_LIMITS = Limits()


@dataclass(frozen=True)
class Unique:
    """Only one queued or running job of the type per owner and value of `fields`; a
    second create returns the first. With `debounce` (seconds), the job starts that long
    after the first create of a burst, and a create while it is still queued replaces
    its payload instead; a create while it runs queues a new job (see jobs/services.py).
    """

    fields: tuple[str, ...]
    debounce: float | None = None

    def key_for(self, owner_id: Any, payload: dict[str, Any]) -> str:
        """The job's unique key: a hash of its owner and the values of `fields` in its
        validated payload (a field it lacks counts as null). Fixed length, whatever the
        values."""
        values = {name: payload.get(name) for name in self.fields}
        canonical = json.dumps([owner_id, values], sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class JobType:
    name: str
    handler: Handler
    serializer: type[serializers.Serializer] = EmptyPayload
    queue: str = "default"
    max_attempts: int = 3
    backoff_base: float = 5.0
    backoff_max: float = 3600.0
    soft_time_limit: int = 300
    retention: Retention = field(default_factory=Retention)
    run_at_startup: bool = False
    description: str = ""
    exposure: Exposure = Exposure.INTERNAL
    # Payload fields only staff may set through the API; others sending one get a 400.
    staff_fields: frozenset[str] = frozenset()
    # Bounds on the payload for non-staff API callers, beyond the serializer's own.
    user_limits: PayloadLimits | None = None
    # Global limits on its jobs; staff may replace them at run time (jobs/controls.py).
    limits: Limits = NO_LIMITS
    unique: Unique | None = None
    # Exceptions retried while attempts remain; any other fails the job at once.
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    # Exceptions that fail the job at once even though retry_on covers them.
    fail_on: tuple[type[BaseException], ...] = ()

    def can_be_created_by(self, user) -> bool:
        """Whether `user` may create jobs of this type through the API."""
        if self.exposure == Exposure.USERS:
            return bool(user.is_authenticated)
        if self.exposure == Exposure.STAFF:
            return bool(user.is_staff)
        return False

    def payload_refusals(self, user, payload: dict[str, Any]) -> dict[str, list[str]]:
        """What `user` may not ask for in `payload` through the API, by payload field;
        empty when nothing is refused. Staff may set anything."""
        if user.is_staff:
            return {}
        refused = {
            name: ["Only staff may set this field."]
            for name in sorted(self.staff_fields & payload.keys())
        }
        if refused or self.user_limits is None:
            return refused
        serializer = self.serializer(data=payload)
        if not serializer.is_valid():
            return {}  # enqueueing names what is wrong with it
        return self.user_limits(serializer.validated_data)

    @property
    def time_limit(self) -> int:
        """The hard limit: the worker kills a run this long after it started, the soft
        limit having asked it to stop 30 s earlier."""
        return hard_time_limit(self.soft_time_limit)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retrying after failed attempt number `attempt`."""
        return min(self.backoff_base * 2 ** max(attempt - 1, 0), self.backoff_max)

    def payload_fields(self, *, staff_fields: bool = True) -> dict[str, dict[str, Any]]:
        return {
            name: {
                "type": type(f).__name__.removesuffix("Field").lower() or "field",
                "required": f.required,
                "help_text": str(f.help_text or ""),
            }
            for name, f in self.serializer().fields.items()
            if staff_fields or name not in self.staff_fields
        }


def hard_time_limit(soft_time_limit: int) -> int:
    """The hard limit that goes with a soft one: 30 s for the run to stop by itself."""
    return soft_time_limit + 30


class UnknownJobType(KeyError):
    # The message names no other type: callers that may list types choose which.
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"Unknown job type {self.name!r}."


_registry: dict[str, JobType] = {}


def register(jt: JobType) -> JobType:
    if jt.name in _registry and _registry[jt.name].handler is not jt.handler:
        raise ValueError(f"Job type {jt.name!r} is already registered")
    if unknown := jt.staff_fields - jt.serializer().fields.keys():
        raise ValueError(f"Job type {jt.name!r}: no payload field {', '.join(sorted(unknown))}")
    if jt.unique is not None:
        _check_unique(jt)
    _registry[jt.name] = jt
    return jt


def _check_unique(jt: JobType) -> None:
    unique = jt.unique
    if not unique.fields:
        raise ValueError(f"Job type {jt.name!r}: a unique type names at least one payload field")
    if unknown := set(unique.fields) - jt.serializer().fields.keys():
        raise ValueError(f"Job type {jt.name!r}: no payload field {', '.join(sorted(unknown))}")
    if unique.debounce is not None and unique.debounce <= 0:
        raise ValueError(f"Job type {jt.name!r}: debounce must be more than 0 seconds")


def unregister(name: str) -> None:
    """Forget job type `name` (a type a test registers for its own use)."""
    _registry.pop(name, None)


def job_type(name: str, **options: Any) -> Callable[[Handler], Handler]:
    """Register the decorated function as the handler of job type `name`."""

    def decorate(handler: Handler) -> Handler:
        register(JobType(name=name, handler=handler, **options))
        return handler

    return decorate


def get(name: str) -> JobType:
    try:
        return _registry[name]
    except KeyError:
        raise UnknownJobType(name) from None


def names() -> list[str]:
    return sorted(_registry)


def all_types() -> list[JobType]:
    return [_registry[n] for n in names()]


def creatable_by(user) -> list[JobType]:
    """The types `user` may create through the API, by name."""
    return [jt for jt in all_types() if jt.can_be_created_by(user)]
