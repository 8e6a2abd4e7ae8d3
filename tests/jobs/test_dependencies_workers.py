"""Dependencies on real workers: the end of a job releases what waited on it, with no
sweeper involved, and a dependency whose worker was killed still releases its dependent
once it is recovered and succeeds."""

from datetime import datetime

import pytest

pytestmark = pytest.mark.worker

LOCK_DURATION = 3.0
SWEEP_INTERVAL = 1.0


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_a_chain_of_three_runs_in_order_released_by_each_end(api, start_worker):
    # No Beat in this worker: past the one sweep a worker runs as it starts (before
    # any job here could be decided), only the ends release the next jobs.
    start_worker(beat=False)
    sleep = {"type": "system.sleep", "payload": {"seconds": 0.3}}
    response = api.post(
        "/api/jobs/bulk/",
        {"jobs": [sleep, {**sleep, "depends_on": ["$0"]}, {**sleep, "depends_on": ["$1"]}]},
    )
    assert response.status_code == 202, response.text
    ids = [job["id"] for job in response.json()["jobs"]]
    assert api.job(ids[2])["message"] == "Waiting for 1 job it depends on"

    jobs = [api.wait_for_status(job_id, "succeeded", timeout=30) for job_id in ids]

    for before, after in zip(jobs, jobs[1:], strict=False):
        assert after["depends_on"] == [before["id"]]
        assert _at(after["started_at"]) >= _at(before["finished_at"])
        kinds = [e["kind"] for e in after["events"] if e["kind"] != "progress"]
        assert kinds == ["created", "held", "released", "dispatched", "started", "succeeded"]


def test_a_dependency_on_a_killed_worker_releases_its_dependent_once_recovered(api, start_worker):
    first = start_worker(lock_duration=LOCK_DURATION, sweep_interval=SWEEP_INTERVAL)
    dependency = api.post("/api/jobs/", {"type": "system.sleep", "payload": {"seconds": 3}}).json()
    dependent = api.post(
        "/api/jobs/",
        {"type": "system.sleep", "payload": {"seconds": 0}, "depends_on": [dependency["id"]]},
    ).json()
    api.wait_for_status(dependency["id"], "running")
    first.kill()

    start_worker(lock_duration=LOCK_DURATION, sweep_interval=SWEEP_INTERVAL)
    done = api.wait_for_status(dependent["id"], "succeeded", "cancelled", timeout=60)
    recovered = api.job(dependency["id"])

    assert recovered["status"] == "succeeded"
    assert recovered["attempts"] == 2
    assert done["status"] == "succeeded"
    assert done["attempts"] == 1
    assert _at(done["started_at"]) >= _at(recovered["finished_at"])
    kinds = [e["kind"] for e in done["events"]]
    assert kinds.count("released") == 1
    assert kinds.count("started") == 1
