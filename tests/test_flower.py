"""Flower, as `make run` and compose start it: behind basic auth, persistent, showing the
platform's task names."""

import os
import signal
import subprocess
import sys

import pytest
import requests

from jobs import services
from tests.support import ROOT, free_port, wait_for

pytestmark = pytest.mark.worker

AUTH = ("ops", "flower-secret")


@pytest.fixture
def flower(tmp_path, database_url):
    port = free_port()
    log_path = tmp_path / "flower.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "jobsite",
                "flower",
                "--address=127.0.0.1",
                f"--port={port}",
                f"--basic-auth={AUTH[0]}:{AUTH[1]}",
                "--persistent=True",
                f"--db={tmp_path / 'flower.db'}",
            ],  # fmt: skip
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": database_url},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return requests.get(url, timeout=2).status_code == 401
        except requests.ConnectionError:
            return False

    wait_for(answers, timeout=30, what="flower to answer")
    yield url
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=20)


def test_flower_asks_for_the_password(flower):
    assert requests.get(flower, timeout=5).status_code == 401
    assert requests.get(flower, auth=("ops", "wrong"), timeout=5).status_code == 401
    assert requests.get(flower, auth=AUTH, timeout=5).status_code == 200


def test_flower_shows_jobs_under_their_type_names(flower, worker):
    job = services.enqueue("system.noop").job

    def listed_task() -> dict | None:
        tasks = requests.get(f"{flower}/api/tasks", auth=AUTH, timeout=5).json()
        return next(
            (
                t
                for t in tasks.values()
                if t.get("name") == "system.noop" and str(job.id) in (t.get("args") or "")
            ),
            None,
        )

    wait_for(
        lambda: (listed_task() or {}).get("state") == "SUCCESS",
        timeout=60,
        what="flower to show the job's task succeeded",
    )
    assert listed_task()["worker"].startswith(worker.name)
