"""Bulk creation, delayed jobs and priorities."""

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs import services, sweepers
from jobs.models import Job
from tests.engine import run


def test_bulk_creates_every_job_and_dispatches_them(api):
    jobs = [{"type": "system.noop"} for _ in range(1000)]

    response = api.post("/api/jobs/bulk/", {"jobs": jobs})

    assert response.status_code == 202
    body = response.json()
    assert body["created"] == 1000
    assert len({j["id"] for j in body["jobs"]}) == 1000
    assert Job.objects.filter(owner__username="alice").count() == 1000
    assert Job.objects.filter(dispatched_at__isnull=True).count() == 0


def test_bulk_honours_idempotency_keys(api):
    first = api.post("/api/jobs/bulk/", {"jobs": [{"type": "system.noop", "idempotency_key": "a"}]})
    again = api.post(
        "/api/jobs/bulk/",
        {
            "jobs": [
                {"type": "system.noop", "idempotency_key": "a"},
                {"type": "system.noop", "idempotency_key": "b"},
            ]
        },
    )

    assert again.status_code == 202
    assert again.json()["created"] == 1
    assert again.json()["jobs"][0]["id"] == first.json()["jobs"][0]["id"]
    assert Job.objects.count() == 2


def test_a_job_far_in_the_future_waits_in_the_database(transactional_db):
    later = timezone.now() + timedelta(hours=2)

    job = services.enqueue("system.noop", run_at=later).job

    job.refresh_from_db()
    assert job.dispatched_at is None
    assert sweepers.dispatch_due() == 0
    assert sweepers.dispatch_due(now=later - timedelta(seconds=30)) == 1
    job.refresh_from_db()
    assert job.dispatched_at is not None


def test_the_sweeper_sends_jobs_whose_dispatch_failed(transactional_db):
    job = services.enqueue("system.noop").job
    Job.objects.filter(id=job.id).update(
        dispatched_at=None, updated_at=timezone.now() - timedelta(seconds=5)
    )

    assert sweepers.dispatch_due() == 1
    assert Job.objects.get(id=job.id).dispatched_at is not None
    assert sweepers.dispatch_due() == 0


def test_the_sweeper_resends_a_message_lost_long_ago(transactional_db, settings):
    job = services.enqueue("system.noop").job
    long_ago = timezone.now() - timedelta(seconds=settings.JOBS_REDISPATCH_AFTER + 10)
    Job.objects.filter(id=job.id).update(dispatched_at=long_ago)

    assert sweepers.dispatch_due() == 1
    assert sweepers.dispatch_due() == 0


def test_a_delayed_job_starts_when_its_time_comes(api):
    run_at = timezone.now() + timedelta(seconds=3)

    created = api.post("/api/jobs/", {"type": "system.noop", "run_at": run_at.isoformat()})

    assert created.status_code == 202
    job_id = created.json()["id"]
    # Its message, delivered before the time (a clock ahead), claims nothing.
    assert run(job_id, now=run_at - timedelta(seconds=2)) == "early"
    assert run(job_id, now=run_at) == "succeeded"
    assert api.job(job_id)["status"] == "succeeded"
    started = Job.objects.get(id=job_id).started_at
    assert started >= run_at - timedelta(seconds=1)


@pytest.mark.worker
def test_high_priority_jobs_run_before_low_ones(staff_api, start_worker):
    low = [
        staff_api.post("/api/jobs/", {"type": "system.noop", "priority": "low"}).json()["id"]
        for _ in range(10)
    ]
    high = staff_api.post("/api/jobs/", {"type": "system.noop", "priority": "high"}).json()["id"]

    start_worker(concurrency=1, env={"CELERY_WORKER_PREFETCH_MULTIPLIER": "1"})
    for job_id in [*low, high]:
        staff_api.wait_for_status(job_id, "succeeded")

    order = list(Job.objects.order_by("started_at").values_list("id", flat=True))
    assert str(order[0]) == high
