"""Jobsite as a backend for Django's Tasks framework (the `django-tasks` package, the
`django.tasks` of Django 6.0).

Every `@task` function runs as a job of one engine type, `tasks.run`, whose payload
names the task (its module path), its arguments and how it was enqueued. The engine's
guarantees hold for it as for any job: the fenced claim, heartbeats and stall recovery,
retries with backoff, cancellation at checkpoints, limits, pauses, the dashboards.

A worker imports a task only from a module its backend's OPTIONS["MODULES"] allows, and
runs it only if that module's attribute is a `@task` of the same path: a payload never
names arbitrary code. See docs/django-tasks.md.
"""

from __future__ import annotations

import contextvars
import importlib
import math
import re
import traceback
import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core import checks
from django.utils.version import PY311
from django_tasks import TaskContext, TaskResult, TaskResultStatus, task_backends
from django_tasks.backends.base import BaseTaskBackend
from django_tasks.base import Task, TaskError
from django_tasks.exceptions import InvalidTaskError, TaskResultDoesNotExist
from django_tasks.signals import task_enqueued, task_finished, task_started
from django_tasks.utils import get_module_path, normalize_json
from rest_framework import serializers

from . import followups, registry, services
from .context import JobContext
from .errors import PermanentError
from .models import Job, Priority, Status

TYPE_NAME = "tasks.run"
# The most attempts and the longest soft time limit (seconds) a task may ask for.
MAX_ATTEMPTS_CEILING = 20
TIME_LIMIT_CEILING = 3600
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_TIME_LIMIT = 300

STATUSES = {
    Status.QUEUED: TaskResultStatus.READY,
    Status.RUNNING: TaskResultStatus.RUNNING,
    Status.SUCCEEDED: TaskResultStatus.SUCCESSFUL,
    Status.FAILED: TaskResultStatus.FAILED,
    Status.CANCELLED: TaskResultStatus.FAILED,
    Status.EXPIRED: TaskResultStatus.FAILED,
}

_current_job: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar(
    "current_job", default=None
)


class TaskCancelled(Exception):
    """The class of a cancelled task's error: its job was cancelled."""


class TaskExpired(Exception):
    """The class of an expired task's error: its job was not started before its expiry."""


class TaskFailed(Exception):
    """The class of an error the engine decided (too many stalls, snoozes, dependencies)."""


class InvalidTaskArguments(InvalidTaskError, TypeError):
    """A task's arguments are not plain JSON: nothing was enqueued."""


def current_job() -> JobContext:
    """The engine's JobContext of the task running in this thread: its checkpoints
    (`progress`, `check_cancelled`), `effect()` and `attempt`. Only inside a task."""
    ctx = _current_job.get()
    if ctx is None:
        raise RuntimeError("current_job() is only available while a task runs in a worker.")
    return ctx


def engine_priority(priority: int) -> str:
    """The framework's -100..100 as the engine's three priorities: below 0 low, 0
    normal, above 0 high."""
    if priority < 0:
        return Priority.LOW.label
    if priority > 0:
        return Priority.HIGH.label
    return Priority.NORMAL.label


@dataclass(frozen=True, slots=PY311, kw_only=True)
class JobsiteTask(Task):
    """A task with the engine's options: `max_attempts` and `time_limit` (a soft limit
    in seconds) declared with `@task(...)`, and an idempotency key given per enqueue
    through `using(idempotency_key=...)`."""

    max_attempts: int | None = None
    time_limit: int | None = None
    idempotency_key: str | None = None

    def using(self, *, idempotency_key: str | None = None, **changes: Any) -> JobsiteTask:
        # (Task.using by name: a slotted dataclass has no zero-argument super().)
        task = Task.using(self, **changes)
        if idempotency_key is not None:
            task = replace(task, idempotency_key=idempotency_key)
        return task


class JobsiteBackend(BaseTaskBackend):
    """Runs tasks as jobs of the engine type `tasks.run`.

    QUEUES: the queues tasks may use (each one of JOBS_QUEUES). OPTIONS: MODULES, the
    modules (or packages) whose tasks workers may import; MAX_ATTEMPTS and TIME_LIMIT
    (seconds), a task's attempts and soft time limit unless it declares its own."""

    task_class = JobsiteTask
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict) -> None:
        super().__init__(alias, params)
        self.modules = tuple(self.options.get("MODULES", ()))
        self.max_attempts = int(self.options.get("MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS))
        self.time_limit = int(self.options.get("TIME_LIMIT", DEFAULT_TIME_LIMIT))

    # --- the framework's side ----------------------------------------------------------

    def validate_task(self, task: Task) -> None:
        super().validate_task(task)
        if task.queue_name not in settings.JOBS_QUEUES:
            raise InvalidTaskError(
                f"Queue {task.queue_name!r} is not a queue workers consume "
                f"({', '.join(settings.JOBS_QUEUES)})."
            )
        max_attempts = getattr(task, "max_attempts", None)
        if max_attempts is not None and not 1 <= max_attempts <= MAX_ATTEMPTS_CEILING:
            raise InvalidTaskError(f"max_attempts must be between 1 and {MAX_ATTEMPTS_CEILING}.")
        time_limit = getattr(task, "time_limit", None)
        if time_limit is not None and not 1 <= time_limit <= TIME_LIMIT_CEILING:
            raise InvalidTaskError(
                f"time_limit must be between 1 and {TIME_LIMIT_CEILING} seconds."
            )

    def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        self.validate_task(task)
        self._check_runnable(task)
        payload = {
            "task": task.module_path,
            "args": plain_json(args, "args"),
            "kwargs": plain_json(kwargs, "kwargs"),
            "priority": task.priority,
            "queue_name": task.queue_name,
            "backend": self.alias,
            "run_after": task.run_after.isoformat() if task.run_after else None,
        }
        try:
            enqueued = services.enqueue(
                TYPE_NAME,
                payload,
                idempotency_key=getattr(task, "idempotency_key", None),
                priority=engine_priority(task.priority),
                run_at=task.run_after,
                max_attempts=getattr(task, "max_attempts", None) or self.max_attempts,
                time_limit=getattr(task, "time_limit", None) or self.time_limit,
                queue=task.queue_name,
            )
        except serializers.ValidationError as exc:
            raise InvalidTaskError(f"Could not enqueue {task.module_path}: {exc.detail}") from exc
        result = self.result_of(enqueued.job, task)
        if enqueued.created:
            task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> TaskResult:
        try:
            job = Job.objects.get(id=uuid.UUID(str(result_id)), type=TYPE_NAME)
        except (ValueError, Job.DoesNotExist):
            raise TaskResultDoesNotExist(result_id) from None
        if job.payload.get("backend") != self.alias:
            raise TaskResultDoesNotExist(result_id)
        try:
            task = self.task_as_enqueued(job.payload)
        except PermanentError as exc:
            raise TaskResultDoesNotExist(f"{result_id}: {exc}") from None
        return self.result_of(job, task)

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        found = []
        if unknown := sorted(self.queues - set(settings.JOBS_QUEUES)):
            found.append(
                checks.Error(
                    f"Task backend {self.alias!r}: QUEUES {', '.join(unknown)} are not in "
                    f"JOBS_QUEUES, so no worker would run them.",
                    id="jobs.E101",
                )
            )
        if not 1 <= self.max_attempts <= MAX_ATTEMPTS_CEILING:
            found.append(
                checks.Error(
                    f"Task backend {self.alias!r}: MAX_ATTEMPTS must be between 1 and "
                    f"{MAX_ATTEMPTS_CEILING}.",
                    id="jobs.E102",
                )
            )
        if not 1 <= self.time_limit <= TIME_LIMIT_CEILING:
            found.append(
                checks.Error(
                    f"Task backend {self.alias!r}: TIME_LIMIT must be between 1 and "
                    f"{TIME_LIMIT_CEILING} seconds.",
                    id="jobs.E103",
                )
            )
        return found

    # --- tasks as jobs -------------------------------------------------------------------

    def allows(self, module: str) -> bool:
        return any(module == m or module.startswith(f"{m}.") for m in self.modules)

    def _check_runnable(self, task: Task) -> None:
        """Refuse, before anything is written, a task a worker would not run."""
        if not self.allows(task.func.__module__):
            raise InvalidTaskError(
                f"Task {task.module_path} is not in a module of this backend's "
                f"OPTIONS['MODULES'] ({', '.join(self.modules) or 'none'})."
            )
        try:
            found = self.find_task(task.module_path)
        except PermanentError as exc:
            raise InvalidTaskError(str(exc)) from None
        if found.func is not task.func:
            raise InvalidTaskError(f"{task.module_path} names another function than this task.")

    def find_task(self, path: str) -> Task:
        """The `@task` at `path`, imported only from an allowed module; PermanentError
        for anything else."""
        module, _, name = str(path).rpartition(".")
        if not re.fullmatch(r"[A-Za-z_][\w.]*", module) or not name.isidentifier():
            raise PermanentError(f"{path!r} is not a task's path.")
        if not self.allows(module):
            raise PermanentError(f"Tasks of module {module} may not run here (MODULES).")
        try:
            found = getattr(importlib.import_module(module), name, None)
        except ImportError as exc:
            raise PermanentError(f"Cannot import {module}: {exc}") from None
        if not isinstance(found, Task) or found.module_path != path:
            raise PermanentError(f"{path} is not a @task function.")
        return found

    def task_as_enqueued(self, payload: dict[str, Any]) -> Task:
        task = self.find_task(payload["task"])
        run_after = payload.get("run_after")
        return replace(
            task,
            priority=payload["priority"],
            queue_name=payload["queue_name"],
            backend=self.alias,
            run_after=datetime.fromisoformat(run_after) if run_after else None,
        )

    def result_of(self, job: Job, task: Task) -> TaskResult:
        starts = list(
            job.events.filter(kind="started")
            .order_by("created_at")
            .values_list("created_at", flat=True)[:1]
        )
        status = STATUSES[job.status]
        result = TaskResult(
            task=task,
            id=str(job.id),
            status=status,
            enqueued_at=job.created_at,
            started_at=starts[0] if starts else None,
            last_attempted_at=job.started_at,
            finished_at=job.finished_at if job.is_finished else None,
            args=job.payload["args"],
            kwargs=job.payload["kwargs"],
            backend=self.alias,
            errors=errors_of(job),
            worker_ids=[f"{job.id}:{n}" for n in range(1, job.attempts + 1)],
        )
        if status == TaskResultStatus.SUCCESSFUL:
            object.__setattr__(result, "_return_value", job.result)
        return result


def backend_named(alias: str) -> JobsiteBackend:
    try:
        backend = task_backends[alias]
    except Exception:
        raise PermanentError(f"No task backend {alias!r}.") from None
    if not isinstance(backend, JobsiteBackend):
        raise PermanentError(f"Task backend {alias!r} is not a Jobsite backend.")
    return backend


# --- JSON ----------------------------------------------------------------------------


def plain_json(value: Any, where: str) -> Any:
    """`value` as the framework normalises it (tuples as lists), refused with an error
    naming the first part that would not come back the same from JSON."""
    try:
        normalized = normalize_json(value)
    except (TypeError, ValueError) as exc:
        raise InvalidTaskArguments(f"{where}: {exc}; task arguments must be JSON.") from None
    if problem := _json_problem(normalized, where):
        raise InvalidTaskArguments(f"{problem}; task arguments must be JSON.")
    return normalized


def _json_problem(value: Any, where: str) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where}: {value!r} is not a JSON number"
    if isinstance(value, list):
        for i, item in enumerate(value):
            if problem := _json_problem(item, f"{where}[{i}]"):
                return problem
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{where}: key {key!r} is not a string"
            if problem := _json_problem(item, f"{where}[{key!r}]"):
                return problem
    return None


# --- errors ---------------------------------------------------------------------------

_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*)(?::|$)")


def errors_of(job: Job) -> list[TaskError]:
    """The error a finished task failed with, as the framework's TaskError."""
    if job.status == Status.CANCELLED:
        return [
            TaskError(
                exception_class_path=get_module_path(TaskCancelled),
                traceback=job.error or job.message,
            )
        ]
    if job.status == Status.EXPIRED:
        return [
            TaskError(
                exception_class_path=get_module_path(TaskExpired),
                traceback=job.error or job.message,
            )
        ]
    if job.status != Status.FAILED:
        return []
    summary, _, detail = job.error.partition("\n\n")
    path = _class_path(summary, detail)
    if path is None:
        return [TaskError(exception_class_path=get_module_path(TaskFailed), traceback=job.error)]
    return [TaskError(exception_class_path=path, traceback=detail or summary)]


def _class_path(summary: str, detail: str) -> str | None:
    """The exception's class path: the last line of its traceback names it with its
    module (none for builtins)."""
    match = _EXCEPTION_LINE.match(summary)
    if match is None or " " in match.group(1):
        return None
    name = match.group(1)
    for line in reversed(detail.splitlines()):
        found = _EXCEPTION_LINE.match(line)
        if found and (found.group(1) == name or found.group(1).endswith(f".{name}")):
            path = found.group(1)
            return path if "." in path else f"builtins.{path}"
    return name if "." in name else None


# --- the job type ------------------------------------------------------------------------


class TaskPayload(serializers.Serializer):
    task = serializers.CharField(max_length=500, help_text="The task's module path")
    args = serializers.ListField(required=False, default=list)
    kwargs = serializers.DictField(required=False, default=dict)
    priority = serializers.IntegerField(min_value=-100, max_value=100, default=0)
    queue_name = serializers.CharField(max_length=64, default="default")
    backend = serializers.CharField(max_length=100, default="default")
    run_after = serializers.CharField(allow_null=True, required=False, default=None)


def run_task(ctx: JobContext) -> Any:
    """The handler of `tasks.run`: find the task, tell the framework it started, run it
    with the job's context available through `current_job()`."""
    backend = backend_named(ctx.payload["backend"])
    task = backend.task_as_enqueued(ctx.payload)
    result = backend.result_of(ctx.job, task)
    task_started.send(type(backend), task_result=result)
    args, kwargs = ctx.payload["args"], ctx.payload["kwargs"]
    token = _current_job.set(ctx)
    try:
        if task.takes_context:
            value = task.call(TaskContext(task_result=result), *args, **kwargs)
        else:
            value = task.call(*args, **kwargs)
    except PermanentError as exc:
        # Fails at once; the message names its class, as a traceback would.
        detail = "".join(traceback.format_exception(exc, limit=20))
        raise PermanentError(f"{get_module_path(type(exc))}: {exc}\n\n{detail}") from exc
    finally:
        _current_job.reset(token)
    try:
        return plain_json(value, "return value")
    except InvalidTaskArguments as exc:
        raise PermanentError(
            f"{task.module_path} returned a value that is not JSON: {exc}"
        ) from None


def _tell_finished(jobs: list[Job]) -> None:
    """Send the framework's task_finished for tasks whose job ended."""
    for job in jobs:
        if job.type != TYPE_NAME:
            continue
        try:
            backend = backend_named(job.payload.get("backend", "default"))
            result = backend.get_result(str(job.id))
        except (PermanentError, TaskResultDoesNotExist):
            continue
        task_finished.send(type(backend), task_result=result)


def _no_catch_up(now: datetime, since: datetime | None) -> int:
    # A signal is told in the process where the end happened, or not at all.
    return 0


def register() -> None:
    """Register the job type and the follow-up that sends task_finished (from the jobs
    app's ready())."""
    registry.register(
        registry.JobType(
            name=TYPE_NAME,
            handler=run_task,
            serializer=TaskPayload,
            max_attempts=MAX_ATTEMPTS_CEILING,
            soft_time_limit=TIME_LIMIT_CEILING,
            description="Run a function decorated with the Tasks framework's @task.",
        )
    )
    followups.register("django-tasks", after_end=_tell_finished, catch_up=_no_catch_up)
