"""The fault schedule: SIGKILLs of random worker processes every few seconds, and in
turn the other kinds (Redis paused, Redis restarted with and without its data,
PostgreSQL restarted, two Beats at once, a worker stopped with SIGTERM mid-job).

Each fault is recorded with when it began and when it was over: the killed process dead,
Redis answering again, PostgreSQL accepting connections again, the second Beat stopped,
the SIGTERMed worker exited.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from dataclasses import dataclass

import psutil

from chaos.stack import ChaosStack

ROTATING = ("pause", "redis-restart", "redis-flush", "pg-restart", "two-beats", "sigterm")


@dataclass
class Fault:
    kind: str
    detail: str
    began: float
    ended: float


class FaultSchedule:
    def __init__(self, stack: ChaosStack, config):
        self.stack = stack
        self.config = config
        self.rng = random.Random(config.seed + 2)
        self.faults: list[Fault] = []
        self.rotating = [kind for kind in ROTATING if kind in config.faults]
        self.round_done = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: list[str] = []

    def start(self) -> None:
        if "kill" in self.config.faults:
            self._threads.append(threading.Thread(target=self._kill_loop, daemon=True))
        if self.rotating:
            self._threads.append(threading.Thread(target=self._rotate, daemon=True))
        else:
            self.round_done.set()
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    # --- SIGKILL -------------------------------------------------------------------------

    def _kill_loop(self) -> None:
        while not self._stop.wait(self.config.kill_every):
            try:
                self.kill_random_worker_process()
            except Exception as exc:  # a fault that could not be made is reported, not fatal
                self.errors.append(f"kill: {exc!r}")

    def kill_random_worker_process(self) -> None:
        """SIGKILL a main or pool process of a worker; most often of the worker that runs
        the load (queues default and emails), which is where a kill interrupts jobs."""
        workers = [w for w in self.stack.workers() if w.alive()]
        if not workers:
            return
        busy = [w for w in workers if w.name == "worker"]
        worker = self.rng.choice(busy if busy and self.rng.random() < 0.75 else workers)
        targets = []
        if "main" in self.config.kill_targets:
            targets.append((worker.pid, "main"))
        if "pool" in self.config.kill_targets:
            targets += [(pid, "pool") for pid in self.stack.children(worker)]
        if not targets:
            return
        pid, role = self.rng.choice(targets)
        began = time.time()
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        _wait_gone(pid)
        self._record("kill", f"{worker.name} {role} {pid}", began)

    # --- the others, in turn -------------------------------------------------------------

    def _rotate(self) -> None:
        done: set[str] = set()
        index = 0
        while not self._stop.wait(self.config.fault_every):
            kind = self.rotating[index % len(self.rotating)]
            index += 1
            try:
                getattr(self, "fault_" + kind.replace("-", "_"))()
            except Exception as exc:
                self.errors.append(f"{kind}: {exc!r}")
            done.add(kind)
            if done >= set(self.rotating):
                self.round_done.set()

    def fault_pause(self) -> None:
        began = time.time()
        self.stack.pause_redis()
        time.sleep(self.config.pause_seconds)  # the fault's length
        self.stack.resume_redis()
        self._record("pause", f"Redis SIGSTOPped for {self.config.pause_seconds:g}s", began)

    def fault_redis_restart(self) -> None:
        began = time.time()
        self.stack.restart_redis(keep_data=True)
        self._record("redis-restart", "Redis restarted with its append-only file", began)

    def fault_redis_flush(self) -> None:
        began = time.time()
        self.stack.restart_redis(keep_data=False)
        self._record("redis-flush", "Redis restarted without its data", began)

    def fault_pg_restart(self) -> None:
        began = time.time()
        self.stack.postgres.stop("fast")
        time.sleep(self.config.pg_down_seconds)  # the fault's length
        self.stack.postgres.start()
        self._record("pg-restart", f"PostgreSQL down for {self.config.pg_down_seconds:g}s", began)

    def fault_two_beats(self) -> None:
        began = time.time()
        beat = self.stack.start_extra_beat()
        time.sleep(self.config.two_beats_seconds)  # the fault's length
        beat.stop()
        self._record("two-beats", f"a second Beat for {self.config.two_beats_seconds:g}s", began)

    def fault_sigterm(self) -> None:
        worker = self.stack.process("worker")
        if not worker.alive():
            return
        began = time.time()
        pid = worker.pid
        worker.terminate()
        _wait_gone(pid, timeout=120)
        self._record("sigterm", f"worker main {pid} stopped with SIGTERM", began)

    def _record(self, kind: str, detail: str, began: float) -> None:
        self.faults.append(Fault(kind, detail, began, time.time()))


def _wait_gone(pid: int, timeout: float = 10) -> None:
    """Until `pid` is dead (gone or a zombie), without reaping it: the supervisor does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.02)
