"""Benchmark 7: latency and cost per job.

- Enqueue-to-start on an idle worker: one job at a time, created the way the API creates
  it (`jobs.services.enqueue`), from the call to the moment the worker's claim stamped
  `started_at`; p50 and p99.
- Redis commands per job, from INFO commandstats around a batch of jobs run end to end,
  next to the same figure for raw Celery tasks on an identical worker.
- SQL statements per job: counted by the worker processes themselves (every statement
  through Django's connections) and by this process for the enqueue side.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

from bench import harness

LATENCY_SAMPLES = int(os.environ.get("BENCH_LATENCY_SAMPLES", "200"))
COST_JOBS = int(os.environ.get("BENCH_COST_JOBS", "1000"))
# The bench's own reads of Redis while it waits for raw tasks (they count by INCR).
BENCH_COMMANDS = {"incr", "get", "config|resetstat", "info", "flushdb", "select", "hello"}


def enqueue_to_start(samples: int) -> list[float]:
    """Seconds from enqueue to claim for `samples` jobs sent one by one to an idle worker,
    each after a short random pause once the previous one finished."""
    from jobs import services
    from jobs.models import Job, Status

    latencies = []
    rng = random.Random(7)
    for _ in range(samples):
        time.sleep(rng.uniform(0, 0.05))  # the worker is idle, not just done
        sent = time.time()
        job = services.enqueue("system.noop").job
        harness.wait_until(
            lambda job=job: Job.objects.filter(id=job.id, status=Status.SUCCEEDED).exists(),
            timeout=30,
            what=f"job {job.id}",
        )
        started = Job.objects.values_list("started_at", flat=True).get(id=job.id)
        latencies.append(started.timestamp() - sent)
    return latencies


def _statement_counter():
    count = [0]

    def counting(execute, sql, params, many, context):
        count[0] += 1
        return execute(sql, params, many, context)

    return count, counting


def platform_cost(n: int, worker_env: dict[str, str] | None = None) -> dict:
    """Redis commands and SQL statements per job for n jobs run end to end."""
    from django.db import connection

    from jobs import services
    from jobs.models import Job, Status

    harness.flush_broker()
    harness.empty_job_tables()
    count_dir = Path(tempfile.mkdtemp(prefix="jobsite-sql-"))
    with harness.worker(env={"BENCH_SQL_COUNT_DIR": str(count_dir), **(worker_env or {})}):
        harness.reset_command_stats()
        enqueue_count, counting = _statement_counter()
        with connection.execute_wrapper(counting):
            services.enqueue_many([services.JobSpec("system.noop") for _ in range(n)])
        harness.wait_until(
            lambda: Job.objects.filter(status=Status.SUCCEEDED).count() >= n,
            timeout=300,
            interval=0.1,
            what="jobs",
        )
        commands = harness.command_calls()
    worker_statements = sum(int(p.read_text()) for p in count_dir.glob("*.count"))
    single_count, counting = _statement_counter()
    with connection.execute_wrapper(counting):
        for _ in range(100):
            services.enqueue("system.noop")
    harness.flush_broker()
    commands = {k: v for k, v in commands.items() if k not in BENCH_COMMANDS}
    return {
        "jobs": n,
        "redis_commands": commands,
        "redis_per_job": sum(commands.values()) / n,
        "sql_worker_per_job": worker_statements / n,
        "sql_enqueue_many_per_job": enqueue_count[0] / n,
        "sql_enqueue_single_per_job": single_count[0] / 100,
        "worker_processes_counted": len(list(count_dir.glob("*.count"))),
    }


def raw_cost(n: int) -> dict:
    """Redis commands per raw Celery no-op task, on an identical worker."""
    from bench.app import DONE_COUNTER, raw_noop

    harness.flush_broker()
    client = harness.redis_client()
    with harness.worker(env={"BENCH_DONE_COUNTER": "1"}):
        harness.reset_command_stats()
        for _ in range(n):
            raw_noop.apply_async(args=[str(uuid.uuid4())], queue="default", routing_key="default")
        harness.wait_until(
            lambda: int(client.get(DONE_COUNTER) or 0) >= n, timeout=300, interval=0.1
        )
        commands = harness.command_calls()
    harness.flush_broker()
    commands = {k: v for k, v in commands.items() if k not in BENCH_COMMANDS}
    return {"tasks": n, "redis_commands": commands, "redis_per_task": sum(commands.values()) / n}


def main() -> harness.Results:
    results = harness.Results("latency", "latency and cost per job")
    harness.setup_django()
    harness.flush_broker()
    with harness.worker():
        latencies = enqueue_to_start(LATENCY_SAMPLES)
    p50, p99 = harness.median(latencies) * 1000, harness.percentile(latencies, 99) * 1000
    results.detail("enqueue_to_start_ms", sorted(round(x * 1000, 2) for x in latencies))
    results.figure("enqueue-to-start p50", p50, "ms", target="<= 20", met=p50 <= 20)
    results.figure("enqueue-to-start p99", p99, "ms", target="<= 200", met=p99 <= 200)
    results.figure("enqueue-to-start max", max(latencies) * 1000, "ms")

    platform = platform_cost(COST_JOBS)
    raw = raw_cost(COST_JOBS)
    quiet = platform_cost(COST_JOBS, {"CELERY_WORKER_SEND_TASK_EVENTS": "0"})
    results.detail("platform", platform)
    results.detail("raw", raw)
    results.detail("platform_without_task_events", quiet)
    per_job = platform["redis_per_job"]
    results.figure("Redis commands per job", per_job, "", target="<= 8", met=per_job <= 8)
    results.figure("Redis commands per raw Celery task", raw["redis_per_task"], "")
    results.figure("Redis commands per job, task events off", quiet["redis_per_job"], "")
    top = Counter(platform["redis_commands"]).most_common()
    results.figure(
        "Redis commands by name (per job)",
        per_job,
        "",
        note=", ".join(f"{name} {calls / COST_JOBS:.2f}" for name, calls in top),
    )
    hot_path = platform["sql_worker_per_job"] + platform["sql_enqueue_many_per_job"]
    for label, key in [
        ("worker", "sql_worker_per_job"),
        ("enqueue_many", "sql_enqueue_many_per_job"),
        ("single enqueue", "sql_enqueue_single_per_job"),
    ]:
        results.figure(f"SQL statements per job, {label}", platform[key], "")
    results.figure(
        "SQL statements per job, hot path", hot_path, "", target="<= 4", met=hot_path <= 4
    )
    results.write()
    return results


if __name__ == "__main__":
    main()
