"""`python -m bench [NAME ...]`: run the benchmarks (all eight by default), print each
figure as it comes and write bench/results/NAME.json plus bench/results/summary.json."""

from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
from datetime import UTC, datetime

from bench import harness

# In the order: end-to-end, enqueue, API, reports, scale, recovery, latency, pools.
BENCHMARKS = ["e2e", "enqueue", "api", "reports", "scale", "recovery", "latency", "pools"]


def main(argv: list[str]) -> int:
    names = argv or BENCHMARKS
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"Unknown benchmark(s): {', '.join(unknown)}. Known: {', '.join(BENCHMARKS)}")
        return 2
    started = time.monotonic()
    harness.configure_environment()
    harness.recreate_database()
    summary, failed = {}, []
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        try:
            results = module.main()
        except Exception:
            traceback.print_exc()
            failed.append(name)
            summary[name] = {"error": traceback.format_exc(limit=5)}
            continue
        finally:
            harness.close_connections()
        summary[name] = {"title": results.title, "figures": results.figures}
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
    return 1 if failed else 0


def _print_summary(summary: dict, elapsed: float) -> None:
    print(f"\n== summary ({elapsed / 60:.1f} min)")
    for name, run in summary.items():
        if "error" in run:
            print(f"{name}: FAILED")
            continue
        for figure in run["figures"]:
            if figure["target"] is None:
                continue
            verdict = "met" if figure["met"] else "MISSED" if figure["met"] is False else ""
            print(
                f"{name}  {figure['key']}: {figure['value']:,.3f} {figure['unit']} "
                f"(target {figure['target']}) {verdict}"
            )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
