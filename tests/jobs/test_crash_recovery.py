"""A worker killed in the middle of a job: the job runs again elsewhere, exactly once.
A job that stalls too often fails: test_sweepers.py."""

import time

import pytest

from jobs.models import Job

pytestmark = pytest.mark.worker

LOCK_DURATION = 3.0
SWEEP_INTERVAL = 1.0


def test_a_job_held_by_a_killed_worker_succeeds_exactly_once_on_another(api, start_worker):
    first = start_worker(lock_duration=LOCK_DURATION, sweep_interval=SWEEP_INTERVAL)
    created = api.post("/api/jobs/", {"type": "system.sleep", "payload": {"seconds": 4}}).json()
    api.wait_for_status(created["id"], "running")
    first.kill()
    killed_at = time.monotonic()

    start_worker(lock_duration=LOCK_DURATION, sweep_interval=SWEEP_INTERVAL)
    job = api.wait_for_status(created["id"], "running", "succeeded", timeout=30)
    restarted_after = time.monotonic() - killed_at
    job = api.wait_for_status(created["id"], "succeeded", timeout=30)

    assert job["attempts"] == 2
    assert job["result"] == {"slept": 4.0, "attempt": 2}
    kinds = [e["kind"] for e in job["events"]]
    assert kinds.count("recovered") == 1
    assert kinds.count("started") == 2
    assert kinds.count("succeeded") == 1
    assert kinds.index("recovered") < len(kinds) - 1 - kinds[::-1].index("started")
    assert Job.objects.get(id=created["id"]).stalled_count == 1
    # Back to running within the lock duration plus one sweep, with slack for
    # starting the new worker process.
    assert restarted_after < LOCK_DURATION + SWEEP_INTERVAL + 15
