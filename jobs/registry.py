"""The registry of job types.

A job type is registered once, in its app's `jobs.py`, with the `job_type` decorator:

    @job_type("email.send", serializer=SendEmailSerializer, queue="emails")
    def send_email(ctx: JobContext) -> dict: ...

Each type becomes a Celery task of the same name, so Flower and the result admin
show meaningful names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from rest_framework import serializers

if TYPE_CHECKING:
    from .context import JobContext

Handler = Callable[["JobContext"], Any]


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

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retrying after failed attempt number `attempt`."""
        return min(self.backoff_base * 2 ** max(attempt - 1, 0), self.backoff_max)

    def payload_fields(self) -> dict[str, dict[str, Any]]:
        return {
            name: {
                "type": type(f).__name__.removesuffix("Field").lower() or "field",
                "required": f.required,
                "help_text": str(f.help_text or ""),
            }
            for name, f in self.serializer().fields.items()
        }


class UnknownJobType(KeyError):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"Unknown job type {self.name!r}. Known types: {', '.join(names())}."


_registry: dict[str, JobType] = {}


def register(jt: JobType) -> JobType:
    from .tasks import make_task

    if jt.name in _registry and _registry[jt.name].handler is not jt.handler:
        raise ValueError(f"Job type {jt.name!r} is already registered")
    _registry[jt.name] = jt
    make_task(jt)
    return jt


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
