"""Benchmark 4: the job-activity report over 10,000 jobs.

The bench user owns 10,000 finished jobs spread over 30 days, in the scale benchmark's
mix (five types, about three quarters succeeded, a fifth failed with their errors). A
job-activity report for those 30 days is generated here the way a worker runs it:
`jobs.runner.execute` of its `reports.generate` job claims it, gathers, computes, renders
the PDF with WeasyPrint, stores it, e-mails the owner (locmem backend) and finishes.

Figures: seconds per report (median of the runs) and seconds per PDF page (pages counted
with pypdf in the stored file). The job's own timeline (its 50% and 75% progress events
open and close the rendering) splits a run into gathering and computing, rendering, and
storing and finishing. An empty report (a range with no jobs), generated in turns with
the full one, shows the fixed cost.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from datetime import date, timedelta
from typing import Any

from bench import harness

DATABASE_URL = os.environ.get(
    "BENCH_REPORTS_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/jobsite_bench_reports"
)
JOBS = int(os.environ.get("BENCH_REPORTS_JOBS", "10000"))
RUNS = int(os.environ.get("BENCH_REPORTS_RUNS", "5"))
DAYS = 30


def generate(user, start: date, end: date) -> dict[str, Any]:
    """Request a job-activity report and run its job here; its time, pages and phases."""
    from pypdf import PdfReader

    from jobs import runner
    from reports import services

    report = services.request_report(
        user, "job_activity", {"start": start.isoformat(), "end": end.isoformat()}
    )
    started = time.perf_counter()
    outcome = runner.execute(str(report.job_id))
    seconds = time.perf_counter() - started
    if outcome != "succeeded":
        raise AssertionError(f"The report job ended {outcome}")
    report.refresh_from_db()
    with report.file.open("rb") as pdf:
        pages = len(PdfReader(pdf).pages)
    return {
        "seconds": seconds,
        "pages": pages,
        "bytes": report.size,
        **phases(report.job_id),
    }


def phases(job_id) -> dict[str, float]:
    """Seconds of each phase, from the job's timeline: started -> 50% (rendering begins)
    -> 75% (rendering done, storing) -> succeeded."""
    from jobs.models import JobEvent

    at = {}
    for kind, message, created_at in JobEvent.objects.filter(job_id=job_id).values_list(
        "kind", "message", "created_at"
    ):
        at.setdefault(message.split(" ", 1)[0] if kind == "progress" else kind, created_at)
    return {
        "gather_and_compute": (at["50%"] - at["started"]).total_seconds(),
        "render": (at["75%"] - at["50%"]).total_seconds(),
        "store_and_finish": (at["succeeded"] - at["75%"]).total_seconds(),
    }


def main() -> harness.Results:
    results = harness.Results("reports", f"job-activity report over {JOBS:,} jobs")
    os.environ.setdefault("EMAIL_BACKEND", "django.core.mail.backends.locmem.EmailBackend")
    os.environ.setdefault("MEDIA_ROOT", tempfile.mkdtemp(prefix="jobsite-bench-reports-"))
    harness.recreate_database(DATABASE_URL)
    harness.setup_django(DATABASE_URL)
    # WeasyPrint warns at every render that it subsets fonts with fontTools.
    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    from django.utils import timezone

    from bench import scale

    users = scale.bench_users()
    scale.add_history(JOBS, users, days=DAYS - 1, bench_share=1.0)
    scale.vacuum_analyze()
    today = timezone.localdate()
    start = today - timedelta(days=DAYS - 1)
    before = (start - timedelta(days=DAYS), start - timedelta(days=1))  # no jobs there

    generate(users["bench"], start, today)  # warm: imports, fonts, template
    runs, empty = [], []
    for _ in range(RUNS):
        runs.append(generate(users["bench"], start, today))
        empty.append(generate(users["bench"], *before))
    harness.flush_broker()
    harness.close_connections()

    seconds = harness.median([r["seconds"] for r in runs])
    pages = runs[0]["pages"]
    empty_seconds = harness.median([r["seconds"] for r in empty])
    results.figure("seconds per report", seconds, "s", note=f"{pages} pages, median of {RUNS}")
    results.figure("seconds per page", seconds / pages, "s/page")
    results.figure(
        "report / empty report",
        seconds / empty_seconds,
        "x",
        note=f"an empty report (no jobs in its range) takes {empty_seconds:.3f} s",
    )
    for phase in ("gather_and_compute", "render", "store_and_finish"):
        results.figure(f"{phase.replace('_', ' ')}", harness.median([r[phase] for r in runs]), "s")
    results.detail("runs", runs)
    results.detail("empty_runs", empty)
    results.write()
    return results


if __name__ == "__main__":
    main()
