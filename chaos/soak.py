"""`python -m chaos`: start the stack, run the load under the fault schedule, wait for
the jobs to drain, check the invariants and print the figures. Exit status 1 when an
invariant fails."""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from chaos import db
from chaos.checks import Report, check
from chaos.config import Config
from chaos.faults import FaultSchedule
from chaos.load import LoadGenerator
from chaos.sink import CountingSmtpSink
from chaos.stack import ChaosStack


def say(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(config: Config) -> Report:
    sink = CountingSmtpSink()
    sink.start()
    stack = ChaosStack(config, sink)
    started = time.monotonic()
    try:
        say(f"starting the stack in {stack.root}")
        stack.start()
        say(f"stack ready in {time.monotonic() - started:.0f}s; "
            f"{config.jobs:,} jobs, faults: {', '.join(config.faults) or 'none'}")  # fmt: skip
        load = LoadGenerator(stack.base_url, stack.token(), stack.database_url, config)
        faults = FaultSchedule(stack, config)
        progress = _Progress(stack, load, faults)
        progress.start()
        faults.start()
        result = load.run(until=faults.round_done)
        faults.stop()
        say(f"load done: {load.sent:,} jobs in {result.finished - result.started:.0f}s; "
            f"{len(faults.faults)} faults; draining")  # fmt: skip
        drain_seconds = _drain(stack, config.drain_timeout)
        progress.stop()
        report = check(
            stack.database_url, result, faults.faults, sink.deliveries(), drain_seconds,
            config.wait_bound, time.time(),
        )  # fmt: skip
        report.add("worker, web and Beat restarts", stack.restarts)
        report.add("soak duration (s)", round(time.monotonic() - started, 1))
        for error in faults.errors:
            say(f"fault not made: {error}")
        report.fault_log = faults.faults
        return report
    finally:
        stack.stop(keep_files=config.keep)
        sink.stop()
        if config.keep:
            say(f"logs kept in {stack.log_dir}")


RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"


def save(report: Report, config: Config) -> None:
    """The figures and the fault timeline, in chaos/results/latest.json."""
    RESULTS.parent.mkdir(exist_ok=True)
    data = {
        "finished_at": datetime.now(UTC).isoformat(),
        "config": {k: v for k, v in asdict(config).items() if k != "env"},
        "figures": [asdict(f) for f in report.figures],
        "longest_wait_by_fault": report.waits_by_kind,
        "stuck": report.stuck,
        "waited_longest": report.longest,
        "faults": [
            {**asdict(f), "began": _iso(f.began), "ended": _iso(f.ended)} for f in report.fault_log
        ],
    }
    RESULTS.write_text(json.dumps(data, indent=2, default=str) + "\n")


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


def _drain(stack: ChaosStack, timeout: float) -> float | None:
    """Seconds until no job is queued or running; None if that did not happen in time."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if db.active_count(stack.database_url) == 0:
            return time.monotonic() - began
        time.sleep(0.5)
    return None


class _Progress:
    """A line every ten seconds, so a long soak shows where it is."""

    def __init__(self, stack: ChaosStack, load: LoadGenerator, faults: FaultSchedule):
        self.stack, self.load, self.faults = stack, load, faults
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(10):
            active = db.active_count(self.stack.database_url)
            say(f"created {self.load.sent:,}, in flight {active if active is not None else '?'}, "
                f"faults {len(self.faults.faults)}, restarts {self.stack.restarts}")  # fmt: skip


def main() -> int:
    try:
        config = Config.from_env()
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    report = run(config)
    print(report.text(), flush=True)
    save(report, config)
    return 1 if report.failed else 0
