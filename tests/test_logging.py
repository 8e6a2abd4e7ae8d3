"""LOG_FORMAT=json: one JSON object per line, and every line a job writes names the job."""

import json

import pytest

from jobs import services
from jobs.models import Status
from tests.support import wait_for

pytestmark = pytest.mark.worker


def test_every_line_a_job_writes_is_json_naming_the_job(transactional_db, start_worker):
    worker = start_worker(env={"LOG_FORMAT": "json"})
    job = services.enqueue("system.sleep", {"seconds": 0.2, "fail_times": 1}).job

    def finished() -> bool:
        job.refresh_from_db()
        return job.status == Status.SUCCEEDED

    wait_for(finished, timeout=30, what="the job to succeed after one retry")
    wait_for(lambda: "Job succeeded" in worker.log(), timeout=10, what="the last line")

    lines = [line for line in worker.log().splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    about_the_job = [r for r in records if r.get("job_id") == str(job.id)]
    assert len(about_the_job) >= 2  # failed and retrying, succeeded
    for record in about_the_job:
        assert record["job_type"] == "system.sleep"
        assert record["queue"] == "default"
        assert record["attempt"] in (1, 2)
        assert {"asctime", "levelname", "name", "message"} <= set(record)
    assert {r["attempt"] for r in about_the_job} == {1, 2}
    lines_naming_the_job = [line for line in worker.log().splitlines() if str(job.id) in line]
    assert all(line.startswith("{") for line in lines_naming_the_job)
