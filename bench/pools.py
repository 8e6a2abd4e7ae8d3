"""Benchmark 8: pools and prefetch. The end-to-end figure of benchmark 1 (platform jobs/s
against raw Celery tasks/s on an identical worker) for the prefork and threads pools
and prefetch multipliers 1, 4 and 16, so the shipped defaults for short jobs are the
measured best. Long jobs (reports, maintenance) run with prefetch 1 whatever this
says: a worker must not hold messages it will not start for minutes."""

from __future__ import annotations

import os

from bench import harness
from bench.e2e import WorkerSettings, compare

JOBS = int(os.environ.get("BENCH_POOLS_JOBS", "3000"))
POOLS = os.environ.get("BENCH_POOLS", "prefork,threads").split(",")
PREFETCHES = [int(p) for p in os.environ.get("BENCH_PREFETCHES", "1,4,16").split(",")]


def main() -> harness.Results:
    results = harness.Results("pools", "end-to-end throughput by pool and prefetch")
    harness.setup_django()
    from django.conf import settings

    outcomes = []
    for pool in POOLS:
        for prefetch in PREFETCHES:
            outcome = compare(JOBS, WorkerSettings(pool=pool, prefetch=prefetch), rounds=1)
            outcomes.append(outcome)
            results.figure(
                f"{pool}, prefetch {prefetch}",
                outcome["platform_per_second"],
                "jobs/s",
                note=f"raw {outcome['raw_per_second']:.0f} tasks/s, ratio {outcome['ratio']:.2f}",
            )
    best = max(outcomes, key=lambda o: o["platform_per_second"])
    shipped = f"prefork, concurrency 2, prefetch {settings.CELERY_WORKER_PREFETCH_MULTIPLIER}"
    results.detail("runs", outcomes)
    results.detail("best", best["settings"])
    results.detail("shipped", shipped)
    results.figure(
        "best platform setting",
        best["platform_per_second"],
        "jobs/s",
        note=f"{best['settings']} (shipped default: {shipped})",
    )
    results.write()
    return results


if __name__ == "__main__":
    main()
