"""Benchmark 10: the cost of a limit check per job. Jobs of `system.noop` are run
through the worker's own code path (`jobs.runner.execute`: claim, handler, finish) in
this process, without a limit, then with a concurrency cap and a rate limit that never
refuse (the check is made in full, under the type's lock, and always lets the job
start), in alternating rounds. Also: jobs of a type without limits while another type
is paused, which must cost the same as none (the claim's one look at the controls)."""

from __future__ import annotations

import os
import time

from bench import harness

JOBS = int(os.environ.get("BENCH_LIMITS_JOBS", "2000"))
ROUNDS = int(os.environ.get("BENCH_LIMITS_ROUNDS", "3"))
TYPE = "system.noop"
# A rate the run never reaches (a job takes over a millisecond): the check is made in
# full and always admits. A rate limit keeps its last `rate` starts, so its check costs
# more as the rate grows (BENCH_LIMITS_RATE).
RATE = int(os.environ.get("BENCH_LIMITS_RATE", "50"))
RATE_PERIOD = RATE / 1000


def seconds_per_job(n: int, setup) -> tuple[float, float]:
    """Seconds and SQL statements per job to run `n` queued jobs one after the other."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from jobs import runner, services
    from jobs.models import Control, LimitState

    harness.flush_broker()
    harness.empty_job_tables()
    Control.objects.all().delete()
    LimitState.objects.all().delete()
    setup()
    jobs = services.enqueue_many([services.JobSpec(TYPE) for _ in range(n)])
    ids = [str(e.job.id) for e in jobs]
    # The first job finds out whether the type is gated (the worker remembers it); the
    # statements counted are those of the second, as of every job after it.
    runner.execute(ids[0], type_name=TYPE)
    with CaptureQueriesContext(connection) as sample:
        runner.execute(ids[1], type_name=TYPE)
    start = time.perf_counter()
    for job_id in ids[2:]:
        outcome = runner.execute(job_id, type_name=TYPE)
        if outcome != "succeeded":
            raise AssertionError(f"job {job_id}: {outcome}")
    elapsed = time.perf_counter() - start
    harness.flush_broker()
    return elapsed / (n - 2), float(len(sample.captured_queries))


def no_limits() -> None:
    pass


def limited() -> None:
    from jobs import controls
    from jobs.registry import Limits

    generous = Limits(concurrency=1000, rate=RATE, period=RATE_PERIOD)
    controls.set_limits(TYPE, generous, by=None, via="command")


def another_type_paused() -> None:
    from jobs import controls
    from jobs.models import Scope

    controls.pause(Scope.TYPE, "system.sleep", by=None, via="command")


def main() -> harness.Results:
    results = harness.Results("limits", f"cost of a limit check per job ({JOBS:,} jobs a run)")
    harness.setup_django()
    runs: dict[str, list[tuple[float, float]]] = {"none": [], "limited": [], "paused": []}
    for round_ in range(ROUNDS):
        order = ["none", "limited", "paused"] if round_ % 2 == 0 else ["paused", "limited", "none"]
        for mode in order:
            setup = {"none": no_limits, "limited": limited, "paused": another_type_paused}[mode]
            runs[mode].append(seconds_per_job(JOBS, setup))
    harness.empty_job_tables()
    results.detail("runs", runs)
    best = {mode: min(seconds for seconds, _ in values) for mode, values in runs.items()}
    statements = {mode: values[0][1] for mode, values in runs.items()}
    results.figure(
        "job without limits",
        best["none"] * 1000,
        "ms/job",
        note=f"{statements['none']:.0f} SQL statements",
    )
    results.figure(
        "job with a concurrency cap and a rate limit",
        best["limited"] * 1000,
        "ms/job",
        note=f"{statements['limited']:.0f} SQL statements",
    )
    results.figure("limit check", (best["limited"] - best["none"]) * 1000, "ms/job")
    results.figure("limited / unlimited", best["limited"] / best["none"], "")
    paused_ratio = best["paused"] / best["none"]
    results.figure(
        "unlimited job while another type is paused / none paused",
        paused_ratio,
        "",
        target="<= 1.1",
        met=paused_ratio <= 1.1,
    )
    results.write()
    return results


if __name__ == "__main__":
    main()
