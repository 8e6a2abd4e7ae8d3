"""Cancellation of queued and running jobs, and manual retry."""

import pytest

from jobs.models import Job


def test_a_queued_job_is_cancelled_at_once(api):
    created = api.post("/api/jobs/", {"type": "system.sleep", "payload": {"seconds": 5}}).json()

    response = api.post(f"/api/jobs/{created['id']}/cancel/")

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["finished_at"]
    assert Job.objects.get(id=created["id"]).status == "cancelled"


def test_delete_cancels_too(api):
    created = api.post("/api/jobs/", {"type": "system.noop"}).json()

    response = api.delete(f"/api/jobs/{created['id']}/")

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"


@pytest.mark.worker
def test_a_running_job_stops_at_its_next_checkpoint(api, worker):
    created = api.post("/api/jobs/", {"type": "system.sleep", "payload": {"seconds": 30}}).json()
    api.wait_for_status(created["id"], "running")

    response = api.post(f"/api/jobs/{created['id']}/cancel/")

    assert response.status_code == 200
    assert response.json()["cancel_requested"] is True
    job = api.wait_for_status(created["id"], "cancelled", timeout=10)
    assert job["progress"] < 100
    assert job["attempts"] == 1
    kinds = [e["kind"] for e in job["events"]]
    assert kinds[-2:] == ["cancel_requested", "cancelled"]


@pytest.mark.worker
def test_cancelling_a_finished_job_is_a_409(api, worker):
    created = api.post("/api/jobs/", {"type": "system.noop"}).json()
    api.wait_for_status(created["id"], "succeeded")

    response = api.post(f"/api/jobs/{created['id']}/cancel/")

    assert response.status_code == 409
    assert response.json()["code"] == "not_cancellable"
    assert response.json()["status"] == "succeeded"


@pytest.mark.worker
def test_a_failed_job_is_retried_with_a_fresh_round_of_attempts(api, worker):
    created = api.post(
        "/api/jobs/", {"type": "system.sleep", "payload": {"seconds": 0, "fail_times": 3}}
    ).json()
    api.wait_for_status(created["id"], "failed", timeout=60)
    # With the count reset, attempt 1 fails again and attempt 2 succeeds; a count
    # carried over would start at 4 and succeed at once.
    Job.objects.filter(id=created["id"]).update(payload={"seconds": 0, "fail_times": 1})

    response = api.post(f"/api/jobs/{created['id']}/retry/")

    assert response.status_code == 202
    assert response.json()["status"] == "queued"
    assert response.json()["attempts"] == 0
    assert response.json()["error"] == ""
    job = api.wait_for_status(created["id"], "succeeded", timeout=30)
    assert job["attempts"] == 2
    assert "retried" in [e["kind"] for e in job["events"]]


@pytest.mark.worker
def test_a_cancelled_job_can_be_retried(api, worker):
    created = api.post("/api/jobs/", {"type": "system.sleep", "payload": {"seconds": 0.2}}).json()
    api.wait_for_status(created["id"], "succeeded")
    Job.objects.filter(id=created["id"]).update(status="cancelled")

    assert api.post(f"/api/jobs/{created['id']}/retry/").status_code == 202
    assert api.wait_for_status(created["id"], "succeeded")["attempts"] == 1


def test_retrying_a_queued_job_is_a_409(api):
    created = api.post("/api/jobs/", {"type": "system.noop"}).json()

    response = api.post(f"/api/jobs/{created['id']}/retry/")

    assert response.status_code == 409
    assert response.json()["code"] == "not_retryable"
