"""The soak's own stack: a PostgreSQL made with initdb, an embedded Redis with an
append-only file (so it can restart with its data, or without), and the Procfile's
processes (`tests.stack.Stack`: gunicorn, a worker per worker group, Beat).

A supervisor restarts a worker, web or Beat process that exits, as systemd or Kubernetes
would (after ending what is left of its process group, as they do), unless the soak
stopped it on purpose.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import psutil

from jobsite.embedded_redis import EmbeddedRedis
from tests.servers import PostgresServer
from tests.stack import Stack, StackProcess, procfile
from tests.support import SmtpSink

DATABASE = "jobsite_chaos"
STAFF_USERNAME = "chaos"
STAFF_PASSWORD = "chaos-password-correct-horse"


class ChaosStack:
    def __init__(self, config, smtp: SmtpSink):
        self.config = config
        self.smtp = smtp
        self.root = Path(tempfile.mkdtemp(prefix="jobsite-chaos-"))
        self.log_dir = self.root / "logs"
        self.postgres = PostgresServer()
        self.redis = EmbeddedRedis(data_dir=self.root / "redis", persist=True)
        self.stack: Stack | None = None
        self.extra_beats: list[StackProcess] = []
        self.restarts = 0
        self.supervisor_errors: list[str] = []
        self._stopped_on_purpose: set[str] = set()
        self._supervising = threading.Event()
        self._supervisor: threading.Thread | None = None

    @property
    def database_url(self) -> str:
        return self.postgres.url(DATABASE)

    @property
    def base_url(self) -> str:
        return self.stack.url

    def start(self) -> None:
        self.postgres.start()
        self.postgres.create_database(DATABASE)
        self.redis.start()
        self.stack = Stack(
            database_url=self.database_url,
            redis_url=self.redis.url,
            log_dir=self.log_dir,
            # The other groups see no load here; one process each leaves the cores to it.
            concurrency={
                "worker": self.config.worker_concurrency,
                "worker-pages": 1,
                "worker-images": 1,
            },
            sweep_interval=self.config.sweep_interval,
            lock_duration=self.config.lock_duration,
            smtp=self.smtp,
            env={
                "RATE_LIMIT_USER": "100000000/min",
                "RATE_LIMIT_TOKEN": "100000000/min",
                "JWT_ACCESS_LIFETIME": "86400",
                "MEDIA_ROOT": str(self.root / "media"),
                # The reminder fires every minute, so that two Beats have windows to
                # share; the other timed schedules stay off (purge would delete the
                # finished jobs the checks count).
                "DISABLE_REMINDER_CRON": "0",
                "REMINDER_CRON": "* * * * *",
                **self.config.env,
            },
        )
        self.stack.start()
        self.stack.create_user(STAFF_USERNAME, STAFF_PASSWORD, staff=True)
        self._supervising.set()
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)
        self._supervisor.start()

    def token(self) -> str:
        return self.stack.token(STAFF_USERNAME, STAFF_PASSWORD)

    def stop(self, keep_files: bool = False) -> None:
        self._supervising.clear()
        if self._supervisor:
            self._supervisor.join(timeout=10)
        for beat in self.extra_beats:
            beat.stop()
        if self.stack:
            self.stack.stop()
        self.resume_redis()
        self.redis.stop()
        self.postgres.destroy()
        if not keep_files:
            shutil.rmtree(self.root, ignore_errors=True)

    # --- the parts faults act on -----------------------------------------------------

    def workers(self) -> list[StackProcess]:
        return self.stack.workers

    def process(self, name: str) -> StackProcess:
        return self.stack[name]

    @staticmethod
    def children(process: StackProcess) -> list[int]:
        try:
            return [child.pid for child in psutil.Process(process.pid).children()]
        except psutil.Error:
            return []

    def pause_redis(self) -> None:
        self.redis.process.send_signal(signal.SIGSTOP)

    def resume_redis(self) -> None:
        if self.redis.process and self.redis.process.poll() is None:
            self.redis.process.send_signal(signal.SIGCONT)

    def restart_redis(self, keep_data: bool) -> None:
        """Stop Redis (it writes its append-only file as it stops) and start it again on
        the same port, with its data or with none (as a Redis without persistence, or a
        failover to an empty replica)."""
        self.redis.stop()
        if not keep_data:
            for path in self.redis.data_dir.iterdir():
                if path.name.startswith(("appendonly", "dump")):
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        self.redis.start()

    def start_extra_beat(self) -> StackProcess:
        name = f"beat-{len(self.extra_beats) + 2}"
        beat = StackProcess(
            name,
            f"{procfile()['beat']} --pidfile= --schedule {self.log_dir / name}-schedule",
            self.stack.env,
            self.log_dir,
            r"beat: Starting\.\.\.",
        )
        beat.start(wait=False)
        self.extra_beats.append(beat)
        return beat

    # --- the supervisor --------------------------------------------------------------

    def _supervise(self) -> None:
        while self._supervising.is_set():
            for process in self.stack.processes.values():
                if not process.alive() and self._supervising.is_set():
                    try:
                        process.stop()  # what is left of its group: orphaned pool processes
                        process.start(wait=False)
                    except Exception as exc:  # tried again at the next pass
                        self.supervisor_errors.append(f"{process.name}: {exc!r}")
                        continue
                    self.restarts += 1
            time.sleep(0.5)
