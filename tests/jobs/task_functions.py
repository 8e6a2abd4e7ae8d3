"""@task functions the Django Tasks tests enqueue (allowed by TASK_MODULES there and in
the workers they start)."""

import time

from asgiref.sync import sync_to_async
from django_tasks import task

from jobs.engine import PermanentError, current_job
from jobs.models import JobEffect

TASK_MODULES = "examples.tasks,tests.jobs.task_functions"


class TaskBoom(Exception):
    pass


@task
def add(a: int, b: int) -> int:
    return a + b


@task
def echo(*args, **kwargs) -> dict:
    return {"args": list(args), "kwargs": kwargs}


@task
async def add_later(a: int, b: int) -> int:
    return a + b


@task
async def reports_progress_async(percent: int) -> int:
    job = current_job()
    await sync_to_async(job.progress)(percent, "from async")
    return job.attempt


@task(takes_context=True)
def attempt_number(context, label: str) -> dict:
    return {"label": label, "attempt": context.attempt}


@task(max_attempts=2)
def fails_first_time(label: str) -> dict:
    if current_job().attempt == 1:
        raise TaskBoom(f"{label}: first attempt fails")
    return {"label": label, "attempt": current_job().attempt}


@task(max_attempts=1)
def always_fails() -> None:
    raise TaskBoom("broken")


@task
def refuses() -> None:
    raise PermanentError("retrying cannot help")


@task
def waits_for_cancel(steps: int) -> None:
    for step in range(steps):
        current_job().progress(100 * step / steps, f"Step {step}")
        time.sleep(0.2)


@task
def effect_then_sleep(seconds: float) -> dict:
    """Reserves its side effect once, then works `seconds`: a run killed while working
    leaves the effect reserved, and the next attempt skips it."""
    job = current_job()
    with job.effect("notify") as ours:
        pass
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        job.check_cancelled()
        time.sleep(0.1)
    return {
        "attempt": job.attempt,
        "effect_here": ours,
        "effects": JobEffect.objects.filter(job_id=job.job.id).count(),
    }


def not_a_task() -> str:
    return "plain function"
