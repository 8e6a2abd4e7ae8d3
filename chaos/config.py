"""The soak's settings, from the environment (CHAOS_*)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

FAULT_KINDS = (
    "kill",
    "pause",
    "redis-restart",
    "redis-flush",
    "pg-restart",
    "two-beats",
    "sigterm",
)


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def _faults_from_env() -> tuple[str, ...]:
    raw = os.environ.get("CHAOS_FAULTS", ",".join(FAULT_KINDS)).strip()
    if raw in ("", "none"):
        return ()
    kinds = tuple(k.strip() for k in raw.split(",") if k.strip())
    unknown = [k for k in kinds if k not in FAULT_KINDS]
    if unknown:
        raise ValueError(f"Unknown fault kind(s) in CHAOS_FAULTS: {', '.join(unknown)}")
    return kinds


def _kill_targets_from_env() -> tuple[str, ...]:
    targets = tuple(t.strip() for t in os.environ.get("CHAOS_KILL", "main,pool").split(","))
    if not targets or set(targets) - {"main", "pool"}:
        raise ValueError("CHAOS_KILL takes main, pool or main,pool")
    return targets


@dataclass
class Config:
    jobs: int = 10_000
    # The load lasts at least this long: jobs are spread over it when the stack could
    # take them faster, so every kind of fault meets a load.
    min_seconds: float = 60.0
    # The generator holds back while this many jobs are queued or running.
    max_backlog: int = 300
    faults: tuple[str, ...] = FAULT_KINDS
    kill_every: float = 4.0
    # Which worker processes a kill may hit: their main process, their pool processes.
    kill_targets: tuple[str, ...] = ("main", "pool")
    fault_every: float = 12.0
    pause_seconds: float = 4.0
    pg_down_seconds: float = 3.0
    two_beats_seconds: float = 15.0
    drain_timeout: float = 600.0
    # Longest acceptable wait after a fault; by default the lock duration plus two
    # sweeps and a margin, which is what the engine promises for a lost worker.
    max_wait: float | None = None
    lock_duration: float = 60.0
    sweep_interval: float = 5.0
    # The default/emails worker's processes (WORKER_CONCURRENCY): sleeps hold a process
    # without using a core.
    worker_concurrency: int = 8
    seed: int = 12
    keep: bool = False
    env: dict[str, str] = field(default_factory=dict)

    @property
    def wait_bound(self) -> float:
        if self.max_wait is not None:
            return self.max_wait
        return self.lock_duration + 2 * self.sweep_interval + 15

    @classmethod
    def from_env(cls) -> Config:
        max_wait = os.environ.get("CHAOS_MAX_WAIT")
        return cls(
            jobs=int(os.environ.get("CHAOS_JOBS", 10_000)),
            min_seconds=_env_float("CHAOS_MIN_SECONDS", 60),
            max_backlog=int(os.environ.get("CHAOS_MAX_BACKLOG", 300)),
            faults=_faults_from_env(),
            kill_every=_env_float("CHAOS_KILL_EVERY", 4),
            kill_targets=_kill_targets_from_env(),
            fault_every=_env_float("CHAOS_FAULT_EVERY", 12),
            pause_seconds=_env_float("CHAOS_PAUSE_SECONDS", 4),
            pg_down_seconds=_env_float("CHAOS_PG_DOWN_SECONDS", 3),
            two_beats_seconds=_env_float("CHAOS_TWO_BEATS_SECONDS", 15),
            drain_timeout=_env_float("CHAOS_DRAIN_TIMEOUT", 600),
            max_wait=float(max_wait) if max_wait else None,
            lock_duration=_env_float("JOBS_LOCK_DURATION", 60),
            sweep_interval=_env_float("JOBS_SWEEP_INTERVAL", 5),
            worker_concurrency=int(os.environ.get("WORKER_CONCURRENCY", 8)),
            seed=int(os.environ.get("CHAOS_SEED", 12)),
            keep=os.environ.get("CHAOS_KEEP", "") == "1",
        )
