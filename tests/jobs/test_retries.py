"""Transient errors retry with exponential backoff; permanent ones fail at once."""

from datetime import datetime

import pytest

pytestmark = pytest.mark.worker


def _events(job, kind):
    return [e for e in job["events"] if e["kind"] == kind]


def test_it_retries_with_backoff_then_succeeds(api, worker):
    created = api.post(
        "/api/jobs/", {"type": "system.sleep", "payload": {"seconds": 0, "fail_times": 2}}
    ).json()

    job = api.wait_for_status(created["id"], "succeeded", timeout=60)

    assert job["attempts"] == 3
    assert job["result"] == {"slept": 0.0, "attempt": 3}
    retries = _events(job, "retry_scheduled")
    assert [r["attempt"] for r in retries] == [1, 2]
    assert "retry in 1s" in retries[0]["message"]
    assert "retry in 2s" in retries[1]["message"]
    starts = [datetime.fromisoformat(e["created_at"]) for e in _events(job, "started")]
    assert len(starts) == 3
    # Exponential backoff from a 1 s base: the waits are at least 1 s, then 2 s.
    assert (starts[1] - starts[0]).total_seconds() >= 1
    assert (starts[2] - starts[1]).total_seconds() >= 2


def test_it_fails_when_retries_are_exhausted(api, worker):
    created = api.post(
        "/api/jobs/", {"type": "system.sleep", "payload": {"seconds": 0, "fail_times": 10}}
    ).json()

    job = api.wait_for_status(created["id"], "failed", timeout=60)

    assert job["attempts"] == job["max_attempts"] == 3
    assert job["error"].startswith("DemoFailure: Asked to fail attempt 3")
    assert len(_events(job, "retry_scheduled")) == 2
    assert len(_events(job, "failed")) == 1


def test_a_permanent_error_fails_after_one_attempt(api, worker):
    created = api.post(
        "/api/jobs/", {"type": "system.sleep", "payload": {"seconds": 0, "permanent": True}}
    ).json()

    job = api.wait_for_status(created["id"], "failed")

    assert job["attempts"] == 1
    assert job["error"] == "Asked to fail permanently"
    assert _events(job, "retry_scheduled") == []
