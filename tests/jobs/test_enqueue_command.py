"""`manage.py enqueue_job`: the system producer, with no HTTP in between.

The command runs from its command line in the test process, as `manage.py` runs it
(argument parsing, exit status, output streams); one test runs `manage.py` itself."""

import io
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout

import pytest
from django.core.management import execute_from_command_line

from jobs.models import Job
from tests.support import ROOT


@pytest.fixture
def enqueue_job(transactional_db):
    def run(*args: str) -> subprocess.CompletedProcess:
        argv = ["manage.py", "enqueue_job", *args]
        stdout, stderr = io.StringIO(), io.StringIO()
        returncode = 0
        with redirect_stdout(stdout), redirect_stderr(stderr):
            try:
                execute_from_command_line(argv)
            except SystemExit as exc:
                returncode = exc.code or 0
        return subprocess.CompletedProcess(argv, returncode, stdout.getvalue(), stderr.getvalue())

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


def test_it_takes_an_expiry_and_overrides_of_attempts_and_time_limit(enqueue_job):
    result = enqueue_job(
        "system.sleep",
        "--payload",
        '{"seconds": 1}',
        "--expires-in",
        "600",
        "--max-attempts",
        "1",
        "--time-limit",
        "20",
    )

    assert result.returncode == 0, result.stderr
    job = Job.objects.get(id=result.stdout.strip())
    assert 590 < (job.expires_at - job.created_at).total_seconds() <= 600
    assert (job.max_attempts, job.time_limit) == (1, 20)


def test_it_creates_a_job_waiting_for_others(enqueue_job):
    first = enqueue_job("system.noop").stdout.strip()

    result = enqueue_job("system.noop", "--depends-on", first, "--on-dependency-failure", "run")

    assert result.returncode == 0, result.stderr
    job = Job.objects.get(id=result.stdout.strip())
    assert job.held == "dependencies"
    assert job.on_dependency_failure == "run"
    assert [str(d.depends_on_id) for d in job.dependencies.all()] == [first]


@pytest.mark.parametrize(
    "args, message",
    [
        (["no.such.type"], "Unknown job type 'no.such.type'. Known types:"),
        (["system.sleep", "--payload", "{oops"], "--payload is not valid JSON"),
        (["system.sleep", "--payload", '{"seconds": "x"}'], '"seconds"'),
        (["system.noop", "--run-at", "tomorrow"], "--run-at must be an ISO 8601 time"),
        (["system.noop", "--priority", "urgent"], "invalid choice: 'urgent'"),
        (["system.noop", "--expires-in", "0"], "--expires-in must be"),
        (["system.noop", "--max-attempts", "99"], '"max_attempts"'),
        (["system.noop", "--time-limit", "0"], '"time_limit"'),
        (["system.noop", "--depends-on", "nope"], '"depends_on"'),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(enqueue_job, args, message):
    result = enqueue_job(*args)

    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""
    assert Job.objects.count() == 0


def test_manage_py_itself_prints_the_id_and_exits_2_on_bad_input(database_url):
    def manage(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", "enqueue_job", *args],
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": database_url},
            capture_output=True,
            text=True,
            timeout=60,
        )

    created = manage("system.noop", "--key", "cli-3")
    refused = manage("system.noop", "--priority", "urgent")

    assert created.returncode == 0, created.stderr
    assert Job.objects.get(idempotency_key="cli-3").id.hex == created.stdout.strip().replace(
        "-", ""
    )
    assert refused.returncode == 2 and "invalid choice: 'urgent'" in refused.stderr
    assert refused.stdout == ""
