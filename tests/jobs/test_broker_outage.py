"""The broker stopped while jobs are posted: nothing is lost, nothing runs twice."""

import pytest

from jobs.models import Job, JobEvent

pytestmark = pytest.mark.worker


def test_jobs_posted_while_the_broker_is_down_all_run_once_it_is_back(
    api, start_worker, private_broker
):
    start_worker(broker_url=private_broker.url)
    private_broker.stop()

    responses = [
        api.post("/api/jobs/", {"type": "system.sleep", "payload": {"seconds": 0.1}})
        for _ in range(10)
    ]

    assert [r.status_code for r in responses] == [202] * 10, responses[0].text
    ids = [r.json()["id"] for r in responses]
    assert Job.objects.filter(id__in=ids, status="queued", dispatched_at__isnull=True).count() == 10
    assert not JobEvent.objects.filter(job_id__in=ids, kind="dispatched").exists()

    private_broker.start()
    for job_id in ids:
        api.wait_for_status(job_id, "succeeded", timeout=60)

    for job in Job.objects.filter(id__in=ids):
        assert job.attempts == 1
    starts = JobEvent.objects.filter(job_id__in=ids, kind="started").count()
    assert starts == 10
