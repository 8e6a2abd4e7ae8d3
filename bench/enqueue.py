"""Benchmark 2: bulk enqueue. `enqueue_many` of N jobs (validated rows, their events,
and one message each in the broker) against a loop of N raw `apply_async` calls to the
same broker."""

from __future__ import annotations

import os
import time
import uuid

from bench import harness

JOBS = int(os.environ.get("BENCH_ENQUEUE_JOBS", "10000"))
ROUNDS = int(os.environ.get("BENCH_ENQUEUE_ROUNDS", "3"))


def raw_loop_seconds(n: int) -> float:
    from bench.app import raw_noop

    harness.flush_broker()
    ids = [str(uuid.uuid4()) for _ in range(n)]
    start = time.perf_counter()
    for job_id in ids:
        raw_noop.apply_async(args=[job_id], queue="default", routing_key="default")
    elapsed = time.perf_counter() - start
    harness.flush_broker()
    return elapsed


def enqueue_many_seconds(n: int) -> float:
    from jobs import services
    from jobs.models import Job

    harness.flush_broker()
    harness.empty_job_tables()
    specs = [services.JobSpec("system.noop") for _ in range(n)]
    start = time.perf_counter()
    services.enqueue_many(specs)
    elapsed = time.perf_counter() - start
    queued = harness.redis_client().llen("default") + sum(
        harness.redis_client().llen(f"default:{step}") for step in (3, 6, 9)
    )
    if queued != n or Job.objects.filter(dispatched_at__isnull=False).count() != n:
        raise AssertionError(f"expected {n} dispatched jobs, found {queued} messages")
    harness.flush_broker()
    return elapsed


def main() -> harness.Results:
    results = harness.Results("enqueue", f"enqueue_many of {JOBS:,} jobs vs an apply_async loop")
    harness.setup_django()
    raw, bulk = [], []
    for _ in range(ROUNDS):  # interleaved, the best of each
        raw.append(raw_loop_seconds(JOBS))
        bulk.append(enqueue_many_seconds(JOBS))
    harness.empty_job_tables()
    results.detail("raw_seconds", raw)
    results.detail("enqueue_many_seconds", bulk)
    results.figure("apply_async loop", JOBS / min(raw), "tasks/s")
    results.figure("enqueue_many", JOBS / min(bulk), "jobs/s")
    ratio = min(raw) / min(bulk)
    results.figure("enqueue_many / apply_async loop", ratio, "x", target=">= 3", met=ratio >= 3)
    results.write()
    return results


if __name__ == "__main__":
    main()
