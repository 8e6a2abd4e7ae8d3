"""The production layout as real processes, for tests and the chaos soak that break it.

`Stack` runs what the Procfile runs (gunicorn, the worker groups, Beat) as subprocesses
against a given DATABASE_URL and REDIS_URL, each in a process group of its own and
logging to a file of its own, so a caller can SIGKILL, SIGTERM or restart any one of
them::

    stack = Stack(database_url=db.url("jobsite"), redis_url=redis.url, log_dir=tmp_path)
    stack.start()                      # migrate, web, every worker group, one Beat
    with stack.api("alice") as api:    # a user of its own, signed in with a JWT
        api.post("/api/jobs/", {"type": "system.noop"})
    stack["worker"].kill()             # SIGKILL the default worker and its pool
    stack["worker"].start()
    stack.stop()                       # every process group, always

Processes are named after their Procfile entry (`web`, `worker`, `worker-reports`, ...);
Beats are `beat`, `beat-2`, ... Settings reach every process through the environment:
`env=` for all of them, `worker_env=` for the workers only, `concurrency=` per worker.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import requests

from jobsite.embedded_redis import free_port
from tests.support import ROOT, Api, SmtpSink, _group_alive, access_token, wait_for

PROCFILE = ROOT / "Procfile"
BIN_DIR = Path(sys.executable).parent
WORKER_GROUPS = ["worker", "worker-reports", "worker-pages", "worker-images", "worker-maintenance"]
# The schedules that would fire at their cron time; a test that wants one asks for it.
TIMED_SCHEDULES = (
    "PURGE",
    "RESULT_CLEANUP",
    "TOKEN_CLEANUP",
    "DIGEST",
    "IMAGE_CLEANUP",
    "REMINDER",
)


def procfile() -> dict[str, str]:
    entries = {}
    for line in PROCFILE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, command = line.split(":", 1)
            entries[name.strip()] = command.strip()
    return entries


class StackProcess:
    """One process of the stack: its command runs under `sh -c` (so the Procfile's
    `${VAR:-default}` expand as in production) in a new session and process group."""

    def __init__(self, name: str, command: str, env: dict[str, str], log_dir: Path, ready: str):
        self.name = name
        self.command = command
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.ready = ready
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.process, f"{self.name} was never started"
        return self.process.pid

    def start(self, timeout: float = 60, wait: bool = True) -> None:
        """Start it (again), appending to its log; wait for its ready line unless told not to."""
        self._ready_from = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                ["sh", "-c", f"exec {self.command}"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        if wait:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60) -> None:
        wait_for(
            lambda: re.search(self.ready, self.log()[self._ready_from :]) or not self.alive(),
            timeout=timeout,
            what=f"{self.name} to be ready",
        )
        if not self.alive():
            raise RuntimeError(f"{self.name} exited:\n{self.log()[-5000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return bool(self.process) and self.process.poll() is None

    def signal(self, signum: int, group: bool = False) -> None:
        """Send `signum` to the main process, or with `group=True` to every process of it
        (a worker's pool children, gunicorn's workers)."""
        if not self.alive():
            return
        if group:
            os.killpg(self.pid, signum)
        else:
            self.process.send_signal(signum)

    def terminate(self) -> None:
        """SIGTERM to the main process, as a supervisor stopping it does (a worker finishes
        its jobs within WORKER_SHUTDOWN_GRACE, then exits)."""
        self.signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the whole process group at once, as a crashed host would."""
        if self.process:
            _kill_group(self.process)

    def restart(self, timeout: float = 60) -> None:
        self.stop()
        self.start(timeout=timeout)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM the group, SIGKILL what is left after `timeout`; return once none is left."""
        if not self.process:
            return
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        _kill_group(self.process)


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()  # the group lives on while its leader is an unreaped zombie
    wait_for(
        lambda: not _group_alive(process.pid), timeout=10, what=f"{process.pid}'s group to exit"
    )


class Stack:
    """Web, workers and Beats of the Procfile on `database_url` and `redis_url`.

    - `workers`: the Procfile worker groups to run (default: all of them).
    - `concurrency`: `{group: n}` overriding a group's `--concurrency`.
    - `beats`: how many Beat processes (django-celery-beat's database scheduler).
    - `sweep_interval`, `lock_duration`: JOBS_SWEEP_INTERVAL and JOBS_LOCK_DURATION.
    - `smtp`: a `tests.support.SmtpSink` that receives every e-mail.
    - `env`: more environment for every process; `worker_env` for the workers only.
    - `timed_schedules`: keep the cron schedules (purge, digest, ...); off by default so
      that only the sweeper and what the caller enqueues run.
    - `collect_static`: run `collectstatic` first (~6 s), for tests that render pages
      with static files under DEBUG off.
    """

    def __init__(
        self,
        *,
        database_url: str,
        redis_url: str,
        log_dir: Path,
        workers: list[str] | None = None,
        concurrency: dict[str, int] | None = None,
        beats: int = 1,
        web: bool = True,
        web_concurrency: int = 2,
        sweep_interval: float = 1.0,
        lock_duration: float = 60.0,
        smtp: SmtpSink | None = None,
        env: dict[str, str] | None = None,
        worker_env: dict[str, str] | None = None,
        timed_schedules: bool = False,
        collect_static: bool = False,
    ):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.web_port = free_port()
        self.url = f"http://127.0.0.1:{self.web_port}"
        self.collect_static = collect_static
        self.web_concurrency = web_concurrency
        self.env = self._environment(
            database_url, redis_url, sweep_interval, lock_duration, smtp, timed_schedules, env
        )
        self.processes: dict[str, StackProcess] = {}
        entries = procfile()
        if web:
            self._add("web", entries["web"], self.env, r"Booting worker with pid")
        worker_environment = {**self.env, **(worker_env or {})}
        for group in workers if workers is not None else WORKER_GROUPS:
            command = _with_concurrency(entries[group], (concurrency or {}).get(group))
            self._add(group, command, worker_environment, r"@\S+ ready\.")
        for number in range(1, beats + 1):
            name = "beat" if number == 1 else f"beat-{number}"
            # Each Beat keeps its pid and schedule files apart from the others'.
            command = f"{entries['beat']} --pidfile= --schedule {self.log_dir / name}-schedule"
            self._add(name, command, self.env, r"beat: Starting\.\.\.")

    def _environment(
        self,
        database_url: str,
        redis_url: str,
        sweep_interval: float,
        lock_duration: float,
        smtp: SmtpSink | None,
        timed_schedules: bool,
        extra: dict[str, str] | None,
    ) -> dict[str, str]:
        inherited = {
            key: value
            for key, value in os.environ.items()
            if key not in {"DATABASE_TEST_NAME", "CELERY_BROKER_URL", "CACHE_URL"}
        }
        return {
            **inherited,
            "PATH": f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "DJANGO_DEBUG": "0",
            "DJANGO_SECRET_KEY": "stack-secret-key",
            "DJANGO_SECURE_SSL_REDIRECT": "0",
            "STATIC_ROOT": str(self.log_dir / "static"),
            "WEB_PORT": str(self.web_port),
            "WEB_CONCURRENCY": str(self.web_concurrency),
            "JOBS_SWEEP_INTERVAL": str(sweep_interval),
            "JOBS_LOCK_DURATION": str(lock_duration),
            "JOBS_STARTUP_JOBS": "0",
            "PYTHONUNBUFFERED": "1",
            **({} if timed_schedules else {f"DISABLE_{n}_CRON": "1" for n in TIMED_SCHEDULES}),
            **(smtp.env() if smtp else {}),
            **(extra or {}),
        }

    def _add(self, name: str, command: str, env: dict[str, str], ready: str) -> None:
        self.processes[name] = StackProcess(name, command, env, self.log_dir, ready)

    def __getitem__(self, name: str) -> StackProcess:
        return self.processes[name]

    @property
    def workers(self) -> list[StackProcess]:
        return [p for name, p in self.processes.items() if name.startswith("worker")]

    @property
    def beats(self) -> list[StackProcess]:
        return [p for name, p in self.processes.items() if name.startswith("beat")]

    def manage(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> str:
        """Run `manage.py <args>` with the stack's environment; return its output."""
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stderr[-5000:]}")
        return result.stdout

    def migrate(self) -> None:
        """Create the tables and sync the schedules, as a deployment's release step does."""
        self.manage("migrate", "--noinput")
        if self.collect_static:
            self.manage("collectstatic", "--noinput", "-v0")

    def start(self, migrate: bool = True) -> None:
        """Migrate, then start every process and wait until each is ready."""
        if migrate:
            self.migrate()
        for process in self.processes.values():
            process.start(wait=False)
        for process in self.processes.values():
            process.wait_ready()
        wait_for(lambda: _answers(self.url + "/health/"), timeout=30, what="the web to answer")

    def create_user(self, username: str, password: str, staff: bool = False) -> None:
        """Create a user (staff: not held to the per-user job limits) in the database."""
        self.manage(
            "shell",
            "-c",
            "import os; from django.contrib.auth import get_user_model; "
            "name = os.environ['STACK_USER']; get_user_model().objects.create_user("
            "name, name + '@example.com', os.environ['STACK_PASSWORD'], "
            "is_staff=os.environ['STACK_STAFF'] == '1')",
            env={
                "STACK_USER": username,
                "STACK_PASSWORD": password,
                "STACK_STAFF": str(int(staff)),
            },
        )

    def token(self, username: str, password: str) -> str:
        return access_token(self.url, username, password)

    def api(self, username: str = "alice", staff: bool = False) -> Api:
        """A new user signed in with a JWT: an `Api` client on the stack's web server."""
        password = "stack-password-correct-horse"
        self.create_user(username, password, staff=staff)
        return Api(self.url, self.token(username, password))

    def logs(self) -> str:
        """The tail of every process's log, for a failing test's output."""
        return "\n".join(
            f"--- {name} ---\n{process.log()[-8000:]}" for name, process in self.processes.items()
        )

    def stop(self) -> None:
        """End every process group (SIGTERM, then SIGKILL what remains)."""
        for process in self.processes.values():
            process.signal(signal.SIGTERM, group=True)
        for process in self.processes.values():
            process.stop()


def _with_concurrency(command: str, concurrency: int | None) -> str:
    if concurrency is None:
        return command
    return re.sub(r"--concurrency \S+", f"--concurrency {concurrency}", command)


def _answers(url: str) -> bool:
    try:
        requests.get(url, timeout=10)  # 503 until a worker's first heartbeat: still up
    except requests.RequestException:
        return False
    return True
