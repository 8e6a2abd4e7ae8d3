"""Benchmark 12: the dashboard's history and the /metrics history figures with 10,000 and
with 1,000,000 jobs finished within the last day.

The jobs table is built with 10,000 jobs finished over the last day (the scale
benchmark's mix, `bench.scale.add_history`), copied (a database made from it as
template) and the copy grown to 1,000,000 over the same day; both are vacuumed and
analysed, and the history's closed minutes rolled up (jobs.history.roll_up, as the
sweeper does) before anything is timed. Then, in turns (10 k, 1 M, 10 k, ...): one
/metrics history computation (jobs.metrics.history_families: both windows' counts and
percentiles, the queue depths) and one dashboard history read of each window
(jobs.history.charts, the body of GET /dashboard/history/). A figure is the median time
at 1 M divided by the median at 10 k.
"""

from __future__ import annotations

import os
import time

from bench import harness, scale

DATABASE_URL = os.environ.get("BENCH_HISTORY_DATABASE_URL", scale.DATABASE_URL + "_day")
GROWN_DATABASE_URL = DATABASE_URL + "_grown"
SMALL = int(os.environ.get("BENCH_HISTORY_SMALL", "10000"))
LARGE = int(os.environ.get("BENCH_HISTORY_LARGE", "1000000"))
REPEATS = int(os.environ.get("BENCH_HISTORY_REPEATS", "7"))
TARGET = 2.0


def roll_up_all() -> float:
    """Roll up every closed minute, as the sweeper does over time; returns the seconds."""
    from jobs import history

    started = time.monotonic()
    while getattr(history, "roll_up", lambda: 0)():
        pass
    return time.monotonic() - started


def actions() -> dict:
    from jobs import history, metrics

    return {
        "/metrics history": lambda: list(metrics.history_families()),
        "dashboard history, day": lambda: history.charts(history.WINDOWS["day"]),
        "dashboard history, hour": lambda: history.charts(history.WINDOWS["hour"]),
    }


def side_by_side(sizes: list[scale.Size], action) -> dict[int, float]:
    times: dict[int, list[float]] = {size.rows: [] for size in sizes}
    for turn in range(REPEATS + 1):
        for size in sizes:
            with size.current():
                start = time.perf_counter()
                action()
                elapsed = time.perf_counter() - start
            if turn:
                times[size.rows].append(elapsed)
    return {rows: harness.median(found) for rows, found in times.items()}


def main() -> harness.Results:
    small = scale.Size(SMALL, DATABASE_URL)
    large = scale.Size(LARGE, GROWN_DATABASE_URL)
    sizes = [small, large]
    results = harness.Results(
        "history", f"history charts and metrics: {large.label} jobs in a day against {small.label}"
    )
    harness.recreate_database(small.url)
    harness.setup_django(small.url)
    users = scale.bench_users()
    small.connect()
    with small.current():
        scale.add_history(SMALL, users, days=1)
        scale.vacuum_analyze()
    harness.close_connections()
    small.connection.close()
    scale.clone_database(small.url, large.url)
    large.connect()
    with large.current():
        scale.add_history(LARGE - SMALL, users, days=1)
        scale.vacuum_analyze()
    roll_up_seconds = {}
    for size in sizes:
        with size.current():
            roll_up_seconds[size.rows] = roll_up_all()
            print(
                f"history  {size.label}: {scale.table_counts()['jobs']:,} jobs, "
                f"rolled up in {roll_up_seconds[size.rows]:.1f}s",
                flush=True,
            )

    times = {key: side_by_side(sizes, action) for key, action in actions().items()}
    for size in sizes:
        size.connection.close()
    scale._admin(f'DROP DATABASE IF EXISTS "{scale._database_name(large.url)}" WITH (FORCE)')

    for key, by_size in times.items():
        ratio = by_size[large.rows] / by_size[small.rows]
        results.figure(
            f"{key}: {large.label} / {small.label}",
            ratio,
            "x",
            target=f"<= {TARGET:g}",
            met=ratio <= TARGET,
            note=(
                f"{by_size[small.rows] * 1000:.2f} ms at {small.label}, "
                f"{by_size[large.rows] * 1000:.2f} ms at {large.label}"
            ),
        )
    results.detail("seconds", times)
    results.detail("roll_up_seconds", roll_up_seconds)
    results.write()
    return results


if __name__ == "__main__":
    main()
