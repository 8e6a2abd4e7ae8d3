"""`python -m bench [NAME ...]`: run the benchmarks (all twelve by default), each in a
process of its own (each sets Django up for its own database), print their figures as
they come, and write bench/results/summary.json next to each bench/results/NAME.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime

from bench import harness

# In the order: end-to-end, enqueue, API, reports, scale, recovery, latency, pools;
# then the API with the broker paused; then the cost of a limit check; then live updates;
# then the history charts.
BENCHMARKS = [
    "e2e",
    "enqueue",
    "api",
    "reports",
    "scale",
    "recovery",
    "latency",
    "pools",
    "hang",
    "limits",
    "push",
    "history",
]


def main(argv: list[str]) -> int:
    names = argv or BENCHMARKS
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"Unknown benchmark(s): {', '.join(unknown)}. Known: {', '.join(BENCHMARKS)}")
        return 2
    started = time.monotonic()
    harness.configure_environment()
    harness.recreate_database()
    summary = {}
    for name in names:
        summary[name] = run(name)
    elapsed = time.monotonic() - started
    harness.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (harness.RESULTS_DIR / "summary.json").write_text(
        json.dumps(
            {"finished_at": datetime.now(UTC).isoformat(), "seconds": elapsed, "runs": summary},
            indent=2,
            default=str,
        )
        + "\n"
    )
    _print_summary(summary, elapsed)
    return 1 if any("error" in run for run in summary.values()) else 0


def run(name: str) -> dict:
    """Run one benchmark in a new process; its results file, or the error."""
    path = harness.RESULTS_DIR / f"{name}.json"
    path.unlink(missing_ok=True)
    finished = subprocess.run(
        [sys.executable, "-m", f"bench.{name}"], cwd=harness.ROOT, env=os.environ
    )
    if finished.returncode != 0 or not path.exists():
        return {"error": f"exit code {finished.returncode}"}
    results = json.loads(path.read_text())
    return {"title": results["title"], "seconds": results["seconds"], "figures": results["figures"]}


def _print_summary(summary: dict, elapsed: float) -> None:
    print(f"\n== summary ({elapsed / 60:.1f} min)")
    for name, run in summary.items():
        if "error" in run:
            print(f"{name}: FAILED ({run['error']})")
            continue
        for figure in run["figures"]:
            if figure["target"] is None:
                continue
            verdict = {True: "met", False: "MISSED", None: ""}[figure["met"]]
            print(
                f"{name}  {figure['key']}: {figure['value']:,.3f} {figure['unit']} "
                f"(target {figure['target']}) {verdict}"
            )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
