"""Servers of a test's own, for tests (and the chaos soak) that stop, restart or pause
them: never the machine's shared services.

`PostgresServer` is a PostgreSQL cluster made with `initdb` in a temporary folder and
run on a free port. PostgreSQL refuses to run as root, so when the tests run as root the
cluster belongs to the `postgres` user. Redis has `jobsite.embedded_redis.EmbeddedRedis`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from jobsite.embedded_redis import free_port


def postgres_bin_dir() -> Path | None:
    """The newest installed server's bin folder (Debian keeps them outside PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _version(path: str) -> tuple[int, ...]:
    number = Path(path).parent.parent.name
    return tuple(int(part) for part in number.split(".") if part.isdigit())


class PostgresServer:
    """A throwaway PostgreSQL: `start()`, `stop()`, `restart()`, `kill()`, `url(db)`."""

    def __init__(self, port: int | None = None):
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise RuntimeError("no PostgreSQL server is installed (initdb not found)")
        self.bin_dir = bin_dir
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="jobsite-postgres-"))
        self.data_dir = self.root / "data"
        self.log_path = self.root / "server.log"
        self._user = "postgres" if os.geteuid() == 0 else None
        if self._user:
            owner = pwd.getpwnam(self._user)
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self._initialized = False

    def url(self, database: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 30) -> None:
        if not self._initialized:
            self._run(
                "initdb", "-D", str(self.data_dir), "-U", "postgres", "-A", "trust",
                "-E", "UTF8", "--no-sync", "--no-instructions",
            )  # fmt: skip
            self._initialized = True
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root}"
            " -c fsync=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            "pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_path), "-o", options,
            "-w", "-t", str(int(timeout)),
        )  # fmt: skip
        self.wait_until_ready(timeout)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: `fast` ends sessions and shuts down cleanly, `immediate` quits
        at once (the next start recovers from the log, as after a crash)."""
        if self.running():
            self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", mode, "-w")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def kill(self) -> None:
        """SIGKILL the postmaster, as the OOM killer would; its backends then quit."""
        pid = self.pid()
        if pid:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while self.running() and time.monotonic() < deadline:
                time.sleep(0.05)

    def pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def running(self) -> bool:
        pid = self.pid()
        if not pid:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def wait_until_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def create_database(self, name: str) -> str:
        """Create database `name` and return its URL."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        """Stop the server at once and delete its files."""
        if self.running():
            try:
                self.stop("immediate")
            except subprocess.CalledProcessError:
                self.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        subprocess.run(
            [str(self.bin_dir / program), *args],
            check=True,
            user=self._user,
            cwd=self.root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
