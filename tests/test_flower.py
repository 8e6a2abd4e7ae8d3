"""Flower, as `make run` and compose start it (the Procfile's command): behind basic
auth whose password comes from the environment and never shows in `ps`, persistent,
showing the platform's task names."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests
from django.conf import settings as django_settings

from jobs import services
from tests.support import ROOT, free_port, wait_for

pytestmark = pytest.mark.worker

AUTH = ("ops", "flower-secret-7f3a")


def procfile_command(name: str) -> str:
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} in the Procfile")


def start_flower(tmp_path: Path, database_url: str, **env: str) -> tuple[subprocess.Popen, int]:
    """The Procfile's flower command, run by a shell as honcho and compose run it."""
    port = free_port()
    command = procfile_command("flower").replace("var/flower.db", str(tmp_path / "flower.db"))
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DATABASE_URL": database_url,
        "FLOWER_BIND": "127.0.0.1",
        "FLOWER_PORT": str(port),
        **env,
    }
    with open(tmp_path / "flower.log", "wb") as log:
        process = subprocess.Popen(
            ["sh", "-c", command],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process, port


@pytest.fixture
def flower(tmp_path, database_url):
    process, port = start_flower(tmp_path, database_url, FLOWER_BASIC_AUTH=":".join(AUTH))
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return requests.get(url, timeout=2).status_code == 401
        except requests.ConnectionError:
            assert process.poll() is None, (tmp_path / "flower.log").read_text()
            return False

    wait_for(answers, timeout=30, what="flower to answer")
    yield process, url
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=20)


def test_flower_asks_for_the_password(flower):
    _, url = flower

    assert requests.get(url, timeout=5).status_code == 401
    assert requests.get(url, auth=("ops", "wrong"), timeout=5).status_code == 401
    assert requests.get(f"{url}/api/workers", timeout=5).status_code == 401
    assert requests.get(url, auth=AUTH, timeout=5).status_code == 200


def test_the_password_is_not_on_any_command_line(flower):
    process, _ = flower
    shell = psutil.Process(process.pid)
    processes = [shell, *shell.children(recursive=True)]

    command_lines = [" ".join(p.cmdline()) for p in processes]

    assert any("flower" in line for line in command_lines)
    assert not any(AUTH[1] in line for line in command_lines), command_lines


def test_flower_does_not_start_without_a_login(tmp_path, database_url):
    process, _ = start_flower(tmp_path, database_url, FLOWER_BASIC_AUTH="")

    assert process.wait(timeout=60) != 0
    assert "FLOWER_BASIC_AUTH" in (tmp_path / "flower.log").read_text()


def test_flower_shows_jobs_under_their_type_names(flower, worker):
    _, url = flower
    job = services.enqueue("system.noop").job

    def listed_task() -> dict | None:
        tasks = requests.get(f"{url}/api/tasks", auth=AUTH, timeout=5).json()
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


def test_flower_follows_the_workers_again_after_the_broker_hung(
    tmp_path, database_url, start_worker, private_broker
):
    worker = start_worker(broker_url=private_broker.url)
    process, port = start_flower(
        tmp_path,
        database_url,
        FLOWER_BASIC_AUTH=":".join(AUTH),
        CELERY_BROKER_URL=private_broker.url,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(url), timeout=30, what="flower to answer")
        # Longer than the consumers' socket timeout: Flower's and the worker's broker
        # connections break, and both must connect again by themselves.
        private_broker.pause()
        time.sleep(django_settings.CELERY_BROKER_TRANSPORT_OPTIONS["socket_timeout"] + 2)
        private_broker.resume()

        # Flower's event receiver reconnects on its own schedule: a job run before it is
        # back is not in its view, so keep running jobs until one shows.
        seen = wait_for(
            lambda: _a_job_run_seen(url),
            timeout=60,
            what="flower to show a job run after the broker came back",
        )
        assert worker.name in seen["worker"]
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)


def _a_job_run_seen(url: str) -> dict | None:
    """Run a job and return Flower's view of it if Flower shows it succeeded within 5 s."""
    job = services.enqueue("system.noop").job
    try:
        return wait_for(lambda: _succeeded(url, str(job.id)), timeout=5)
    except AssertionError:
        return None


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 401
    except requests.ConnectionError:
        return False


def _task(url: str, job_id: str) -> dict:
    tasks = requests.get(f"{url}/api/tasks", auth=AUTH, timeout=5).json()
    return next((t for t in tasks.values() if job_id in (t.get("args") or "")), {})


def _succeeded(url: str, job_id: str) -> dict | None:
    task = _task(url, job_id)
    return task if task.get("state") == "SUCCESS" else None
