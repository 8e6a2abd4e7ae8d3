"""What every benchmark shares: the bench database and broker, Django set up against
them with the production settings, real worker processes, Redis command counters, and
the results file.

The benchmarks run against PostgreSQL and Redis (`BENCH_DATABASE_URL`, `BENCH_REDIS_URL`;
by default the local servers, in a database and a Redis db of their own). Figures are
ratios of two things measured side by side in one run, never absolute times alone.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
DATABASE_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/jobsite_bench"
)
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
# The Celery app bench workers load: the project's app plus the raw baseline task.
WORKER_APP = "bench.app"


def configure_environment(database_url: str = DATABASE_URL) -> None:
    """Point this process (and the workers it starts) at the bench services, with the
    production settings (debug off)."""
    os.environ.update(
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": REDIS_URL,
            "CELERY_BROKER_URL": REDIS_URL,
            "DJANGO_DEBUG": "0",
            "DJANGO_SECRET_KEY": "bench-secret-key-bench-secret-key-bench-secret-key",
            # The API benchmark forwards requests as a TLS-terminating proxy would.
            "DJANGO_BEHIND_PROXY": "1",
            "DJANGO_SETTINGS_MODULE": "jobsite.settings",
            "RATE_LIMIT_USER": "100000000/min",
            "RATE_LIMIT_TOKEN": "100000000/min",
            "JOBS_STARTUP_JOBS": "0",
            "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
            **{
                f"DISABLE_{name}_CRON": "1"
                for name in ("PURGE", "RESULT_CLEANUP", "DIGEST", "IMAGE_CLEANUP", "REMINDER")
            },
        }
    )


def setup_django(database_url: str = DATABASE_URL) -> None:
    configure_environment(database_url)
    import django

    django.setup()


def recreate_database(database_url: str = DATABASE_URL) -> None:
    """Drop and create the bench database, then migrate it (PostgreSQL only)."""
    import psycopg

    parts = urlsplit(database_url)
    name = parts.path.lstrip("/")
    admin_url = urlunsplit(parts._replace(path="/postgres", query=""))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    run_manage("migrate", "--verbosity", "0", database_url=database_url)


def run_manage(*args: str, database_url: str = DATABASE_URL) -> None:
    configure_environment(database_url)
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, check=True, env=os.environ)


def close_connections() -> None:
    from django.db import connections

    connections.close_all()


def empty_job_tables() -> None:
    """Remove every job, event and dependent row at once, leaving no dead rows behind
    to slow the next measurement."""
    from django.db import connection

    from jobs.models import Job

    with connection.cursor() as cursor:
        cursor.execute(f'TRUNCATE "{Job._meta.db_table}" CASCADE')


def bench_user(username: str = "bench", *, staff: bool = False):
    from django.contrib.auth import get_user_model

    user, _ = get_user_model().objects.get_or_create(
        username=username, defaults={"email": f"{username}@example.com", "is_staff": staff}
    )
    user.set_password(PASSWORD)
    user.save()
    return user


PASSWORD = "bench-password-bench"


# --- Redis ---------------------------------------------------------------------------


@functools.cache
def redis_client():
    import redis

    return redis.Redis.from_url(REDIS_URL)


def flush_broker() -> None:
    """Empty the bench Redis db: queues, unacked messages, counters."""
    redis_client().flushdb()


def command_calls() -> dict[str, int]:
    """Calls per command since the last reset, from INFO commandstats (server-wide)."""
    stats = redis_client().info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def reset_command_stats() -> None:
    redis_client().config_resetstat()


# --- workers -------------------------------------------------------------------------


@contextmanager
def worker(
    *,
    queues: list[str] | None = None,
    concurrency: int = 2,
    pool: str = "prefork",
    prefetch: int | None = None,
    beat: bool = False,
    env: dict[str, str] | None = None,
    name: str = "bench",
) -> Iterator[Any]:
    """A real `celery worker` on the bench database and broker; stopped on exit."""
    from tests.support import WorkerProcess

    extra = dict(env or {})
    if prefetch is not None:
        extra["CELERY_WORKER_PREFETCH_MULTIPLIER"] = str(prefetch)
    log_dir = Path(tempfile.mkdtemp(prefix="jobsite-bench-"))
    process = WorkerProcess(
        database_url=os.environ["DATABASE_URL"],
        log_dir=log_dir,
        name=name,
        queues=queues or ["default"],
        concurrency=concurrency,
        beat=beat,
        env={"LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"), **extra},
        app=WORKER_APP,
        pool=pool,
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


def wait_until(
    condition: Callable[[], Any], timeout: float, interval: float = 0.01, what: str = ""
) -> float:
    """Poll `condition` until truthy; return the monotonic time it first held."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"Timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


def cpu_seconds(worker_pid: int) -> dict[tuple[str, int], float]:
    """CPU seconds used so far by each process on this machine that takes part, keyed by
    (kind, pid): the worker's main process, its pool processes, PostgreSQL, Redis and
    this process."""
    import psutil

    worker = psutil.Process(worker_pid)
    processes = [("worker main", worker), ("bench process", psutil.Process())]
    processes += [("worker pool", child) for child in worker.children()]
    for process in psutil.process_iter(["cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        if command.startswith("postgres"):
            processes.append(("postgres", process))
        elif "redis-server" in command:
            processes.append(("redis", process))
    used = {}
    for kind, process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        used[(kind, process.pid)] = times.user + times.system
    return used


def cpu_per_item(before: dict, after: dict, items: int) -> dict[str, float]:
    """Milliseconds of CPU per item by kind of process between two cpu_seconds(); a
    process that started in between counts from zero, one that ended is left out."""
    totals: dict[str, float] = {}
    for (kind, pid), seconds in after.items():
        totals[kind] = totals.get(kind, 0.0) + seconds - before.get((kind, pid), 0.0)
    return {kind: round(total / items * 1000, 3) for kind, total in sorted(totals.items())}


# --- figures -------------------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float:
    """The `pct` percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median(values: list[float]) -> float:
    return statistics.median(values)


class Results:
    """One benchmark's figures: printed a line each and written to bench/results/NAME.json."""

    def __init__(self, name: str, title: str):
        self.name = name
        self.title = title
        self.figures: list[dict[str, Any]] = []
        self.details: dict[str, Any] = {}
        self.started = time.monotonic()
        print(f"== {name}: {title}", flush=True)

    def figure(
        self,
        key: str,
        value: float,
        unit: str = "",
        *,
        target: str | None = None,
        met: bool | None = None,
        note: str = "",
    ) -> None:
        entry = {"key": key, "value": value, "unit": unit, "target": target, "met": met}
        if note:
            entry["note"] = note
        self.figures.append(entry)
        verdict = "" if met is None else ("  [target met]" if met else "  [TARGET MISSED]")
        shown = f"{value:,.3f}" if isinstance(value, float) else f"{value:,}"
        target_text = f" (target {target})" if target else ""
        print(f"{self.name}  {key}: {shown} {unit}{target_text}{verdict}", flush=True)
        if note:
            print(f"{self.name}    {note}", flush=True)

    def detail(self, key: str, value: Any) -> None:
        self.details[key] = value

    def write(self) -> Path:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{self.name}.json"
        body = {
            "benchmark": self.name,
            "title": self.title,
            "finished_at": datetime.now(UTC).isoformat(),
            "seconds": round(time.monotonic() - self.started, 1),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "figures": self.figures,
            "details": self.details,
        }
        path.write_text(json.dumps(body, indent=2, default=str) + "\n")
        return path
