"""`make run` (python -m jobsite.run): the whole stack from nothing, a job end to end,
and Ctrl-C stopping every process. The embedded Redis asks for a password, kept in its
data directory and shown on no command line."""

import os
import re
import signal
import socket
import stat
import subprocess
import sys

import psutil
import pytest
import redis
import requests

from jobsite.embedded_redis import answers, free_port
from tests.support import ROOT, wait_for

pytestmark = pytest.mark.worker


def test_run_starts_redis_web_worker_beat_and_flower_and_stops_on_ctrl_c(tmp_path):
    web, flower, redis_port = free_port(), free_port(), free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"REDIS_URL", "DATABASE_URL", "CELERY_BROKER_URL"}
    }
    env.update(
        DATABASE_URL=f"sqlite:///{tmp_path / 'run.sqlite3'}",
        REDIS_PORT=str(redis_port),
        REDIS_DATA_DIR=str(tmp_path / "redis"),
        WEB_PORT=str(web),
        FLOWER_PORT=str(flower),
        ADMIN_PASSWORD="run-stack-password",
        WORKER_CONCURRENCY="1",
        WEB_CONCURRENCY="1",
    )
    log_path = tmp_path / "run.log"
    with open(log_path, "wb") as log:
        stack = subprocess.Popen(
            [sys.executable, "-m", "jobsite.run"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{web}"
    try:
        wait_for(lambda: _status(f"{base}/health/") == 200, timeout=90, what="a healthy web")
        token = requests.post(
            f"{base}/api/auth/token/",
            json={"username": "admin", "password": "run-stack-password"},
        ).json()["access"]
        headers = {"Authorization": f"Bearer {token}"}
        job = requests.post(
            f"{base}/api/jobs/", json={"type": "system.noop"}, headers=headers
        ).json()

        wait_for(
            lambda: (
                requests.get(f"{base}/api/jobs/{job['id']}/status/", headers=headers).json()[
                    "status"
                ]
                == "succeeded"
            ),
            timeout=60,
            what="the job to succeed",
        )
        for node in ("default", "reports", "pages", "images", "maintenance"):
            wait_for(
                lambda node=node: (
                    f"{node}@" in log_path.read_text()
                    and re.search(rf"{node}@\S+ ready\.", log_path.read_text())
                ),
                timeout=60,
                what=f"the {node} worker",
            )
        flower_url = f"http://127.0.0.1:{flower}/"
        assert wait_for(lambda: _status(flower_url), timeout=60, what="flower") == 401
        assert requests.get(flower_url, auth=("admin", "run-stack-password")).ok
        assert (tmp_path / "redis" / "appendonly.aof").exists() or any(
            (tmp_path / "redis").glob("appendonly*")
        )
        password_file = tmp_path / "redis" / "password"
        password = password_file.read_text().strip()
        assert stat.S_IMODE(password_file.stat().st_mode) == 0o600 and len(password) >= 32
        assert unauthenticated_reply(redis_port, b"PING").startswith(b"-NOAUTH")
        assert redis.Redis(port=redis_port, password=password).ping()
        command_lines = stack_command_lines(stack.pid)
        assert any("redis-server" in line for line in command_lines)
        assert not [line for line in command_lines if password in line]
    finally:
        os.killpg(stack.pid, signal.SIGINT)
        stack.wait(timeout=60)
    output = log_path.read_text()
    assert "Flower" in output and f":{web}/api/" in output
    assert password not in output
    assert not answers(f"redis://:{password}@127.0.0.1:{redis_port}/0")


def unauthenticated_reply(port: int, command: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(command + b"\r\n")
        return connection.recv(1024)


def stack_command_lines(pid: int) -> list[str]:
    root = psutil.Process(pid)
    lines = []
    for process in [root, *root.children(recursive=True)]:
        try:
            lines.append(" ".join(process.cmdline()))
        except psutil.NoSuchProcess:
            pass
    return lines


def _status(url: str) -> int:
    try:
        return requests.get(url, timeout=5).status_code
    except requests.RequestException:
        return 0
