"""Benchmark 1: end-to-end throughput of `system.noop` jobs through the whole platform
(enqueue_many -> dispatch -> claim -> succeed, with every row and event written) against
raw Celery no-op tasks published in a loop, each drained by an identically configured
worker. Also the building block of benchmark 8 (pools and prefetch)."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass

from bench import harness

JOBS = int(os.environ.get("BENCH_E2E_JOBS", "5000"))
ROUNDS = int(os.environ.get("BENCH_E2E_ROUNDS", "5"))


@dataclass(frozen=True)
class WorkerSettings:
    pool: str = "prefork"
    concurrency: int = 2
    prefetch: int | None = None  # None: the project's default

    @property
    def label(self) -> str:
        prefetch = "default" if self.prefetch is None else self.prefetch
        return f"{self.pool}, concurrency {self.concurrency}, prefetch {prefetch}"


def _done_count() -> int:
    from bench.app import DONE_COUNTER

    return int(harness.redis_client().get(DONE_COUNTER) or 0)


def _start_counting() -> None:
    from bench.app import DONE_COUNTER

    harness.redis_client().delete(DONE_COUNTER)


@dataclass
class Run:
    seconds: float
    cpu_ms_per_item: dict[str, float]


def raw_run(n: int, settings: WorkerSettings) -> Run:
    """Publish n raw no-op tasks in a loop; seconds from the first publish to the last end."""
    from bench.app import raw_noop

    harness.flush_broker()
    with _worker(settings) as worker:
        _start_counting()
        ids = [str(uuid.uuid4()) for _ in range(n)]
        cpu_before = harness.cpu_seconds(worker.process.pid)
        start = time.monotonic()
        for job_id in ids:
            raw_noop.apply_async(args=[job_id], queue="default", routing_key="default")
        end = harness.wait_until(lambda: _done_count() >= n, timeout=600, what="raw tasks")
        cpu = harness.cpu_per_item(cpu_before, harness.cpu_seconds(worker.process.pid), n)
    return Run(end - start, cpu)


def platform_run(n: int, settings: WorkerSettings) -> Run:
    """enqueue_many n system.noop jobs; seconds from the call to the last job's end."""
    from jobs import services
    from jobs.models import Job, Status

    harness.flush_broker()
    harness.empty_job_tables()
    with _worker(settings) as worker:
        _start_counting()
        cpu_before = harness.cpu_seconds(worker.process.pid)
        start = time.monotonic()
        services.enqueue_many([services.JobSpec("system.noop") for _ in range(n)])
        end = harness.wait_until(lambda: _done_count() >= n, timeout=600, what="jobs")
        cpu = harness.cpu_per_item(cpu_before, harness.cpu_seconds(worker.process.pid), n)
    succeeded = Job.objects.filter(status=Status.SUCCEEDED).count()
    if succeeded != n:
        raise AssertionError(f"{succeeded} of {n} jobs succeeded")
    harness.close_connections()
    return Run(end - start, cpu)


def _worker(settings: WorkerSettings):
    return harness.worker(
        pool=settings.pool,
        concurrency=settings.concurrency,
        prefetch=settings.prefetch,
        env={"BENCH_DONE_COUNTER": "1"},
    )


def compare(n: int, settings: WorkerSettings, rounds: int = ROUNDS) -> dict:
    """`rounds` pairs of a raw run and a platform run, back to back and in alternating
    order, so that drift in the machine's speed (it is shared) touches both sides of a
    pair alike. The figure is the median of the pairs' ratios."""
    raw, plat = [], []
    for round_ in range(rounds):
        if round_ % 2:
            plat.append(platform_run(n, settings))
            raw.append(raw_run(n, settings))
        else:
            raw.append(raw_run(n, settings))
            plat.append(platform_run(n, settings))
    ratios = [r.seconds / p.seconds for r, p in zip(raw, plat, strict=True)]
    median_pair = sorted(range(rounds), key=lambda i: ratios[i])[rounds // 2]
    return {
        "settings": settings.label,
        "jobs": n,
        "raw_seconds": [r.seconds for r in raw],
        "platform_seconds": [r.seconds for r in plat],
        "ratios": ratios,
        "raw_per_second": n / raw[median_pair].seconds,
        "platform_per_second": n / plat[median_pair].seconds,
        "ratio": harness.median(ratios),
        "raw_cpu_ms_per_task": raw[median_pair].cpu_ms_per_item,
        "platform_cpu_ms_per_job": plat[median_pair].cpu_ms_per_item,
    }


def main() -> harness.Results:
    results = harness.Results("e2e", "end-to-end no-op throughput: platform vs raw Celery")
    harness.setup_django()
    outcome = compare(JOBS, WorkerSettings())
    results.detail("runs", outcome)
    results.figure("raw Celery", outcome["raw_per_second"], "tasks/s")
    results.figure("platform", outcome["platform_per_second"], "jobs/s")
    ratio = outcome["ratio"]
    results.figure("platform / raw", ratio, "", target=">= 0.7", met=ratio >= 0.7)
    for label, key in [("raw task", "raw_cpu_ms_per_task"), ("job", "platform_cpu_ms_per_job")]:
        cpu = outcome[key]
        results.figure(
            f"CPU per {label}",
            sum(cpu.values()),
            "ms",
            note=", ".join(f"{kind} {ms:.2f}" for kind, ms in cpu.items()),
        )
    results.write()
    return results


if __name__ == "__main__":
    main()
