"""`manage.py enqueue_job`: the system producer, with no HTTP in between."""

import os
import subprocess
import sys

import pytest

from jobs.models import Job
from tests.support import ROOT


@pytest.fixture
def enqueue_job(database_url):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", "enqueue_job", *args],
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": database_url},
            capture_output=True,
            text=True,
            timeout=60,
        )

    return run


def test_it_creates_a_system_job_and_prints_its_id(enqueue_job):
    result = enqueue_job(
        "system.sleep", "--payload", '{"seconds": 2}', "--priority", "high", "--key", "cli-1"
    )

    assert result.returncode == 0, result.stderr
    job = Job.objects.get(id=result.stdout.strip())
    assert job.owner is None
    assert job.payload == {"seconds": 2.0, "fail_times": 0, "permanent": False}
    assert job.priority_name == "high"
    assert job.idempotency_key == "cli-1"
    assert job.dispatched_at is not None


def test_a_repeated_key_prints_the_same_id(enqueue_job):
    first = enqueue_job("system.noop", "--key", "cli-2")
    again = enqueue_job("system.noop", "--key", "cli-2")

    assert again.returncode == 0
    assert again.stdout == first.stdout
    assert Job.objects.count() == 1


def test_it_takes_a_run_at_time(enqueue_job):
    result = enqueue_job("system.noop", "--run-at", "2030-01-01T09:00:00+00:00")

    assert result.returncode == 0, result.stderr
    job = Job.objects.get(id=result.stdout.strip())
    assert job.run_at.year == 2030
    assert job.dispatched_at is None


@pytest.mark.parametrize(
    "args, message",
    [
        (["no.such.type"], "Unknown job type 'no.such.type'. Known types:"),
        (["system.sleep", "--payload", "{oops"], "--payload is not valid JSON"),
        (["system.sleep", "--payload", '{"seconds": "x"}'], '"seconds"'),
        (["system.noop", "--run-at", "tomorrow"], "--run-at must be an ISO 8601 time"),
        (["system.noop", "--priority", "urgent"], "invalid choice: 'urgent'"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(enqueue_job, args, message):
    result = enqueue_job(*args)

    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""
    assert Job.objects.count() == 0
