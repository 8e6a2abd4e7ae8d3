"""/metrics: jobs by type and status, failures, queue depth and run times, for Prometheus."""

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from jobs import services
from jobs.models import Job, JobEvent, Status

pytestmark = pytest.mark.django_db(transaction=True)


def scrape(client: Client, **extra) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics", **extra)
    assert response.status_code == 200, response.content
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def finished(type_name: str, status: str, seconds: float) -> Job:
    end = timezone.now() - timedelta(minutes=1)
    return Job.objects.create(
        type=type_name, status=status, started_at=end - timedelta(seconds=seconds), finished_at=end
    )


def test_jobs_are_counted_by_type_and_status(client):
    finished("email.send", Status.SUCCEEDED, 1)
    failed = finished("email.send", Status.FAILED, 2)
    finished("email.send", Status.FAILED, 2)
    JobEvent.objects.create(job=failed, kind="retry_scheduled")
    JobEvent.objects.create(job=failed, kind="failed")

    samples = scrape(client)

    assert samples[("jobsite_jobs", (("status", "failed"), ("type", "email.send")))] == 2
    assert samples[("jobsite_jobs", (("status", "succeeded"), ("type", "email.send")))] == 1
    assert samples[("jobsite_job_failed_attempts", (("type", "email.send"),))] == 2


def test_run_times_form_a_histogram_per_type(client):
    for seconds in (0.03, 0.3, 3, 40):
        finished("system.sleep", Status.SUCCEEDED, seconds)

    samples = scrape(client)

    def bucket(le: str) -> float:
        return samples[
            ("jobsite_job_duration_seconds_bucket", (("le", le), ("type", "system.sleep")))
        ]

    assert (bucket("0.05"), bucket("0.5"), bucket("5.0"), bucket("60.0"), bucket("+Inf")) == (
        1,
        2,
        3,
        4,
        4,
    )
    assert samples[("jobsite_job_duration_seconds_count", (("type", "system.sleep"),))] == 4
    total = samples[("jobsite_job_duration_seconds_sum", (("type", "system.sleep"),))]
    assert total == pytest.approx(43.33, abs=0.01)


def test_queue_depth_counts_messages_waiting_in_the_broker(client):
    def depth(queue: str) -> float:
        return scrape(client)[("jobsite_queue_depth", (("queue", queue),))]

    before = depth("emails")
    for _ in range(3):
        services.enqueue("email.send", {"to": ["a@example.com"], "subject": "s", "body": "b"})
    services.enqueue(
        "email.send", {"to": ["a@example.com"], "subject": "s", "body": "b"}, priority="high"
    )

    assert depth("emails") == before + 4


def test_metrics_are_closed_to_strangers(client, user, staff_user):
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 403
    client.force_login(user)
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 403
    client.force_login(staff_user)
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200


def test_with_a_token_only_the_token_opens_them(client, settings):
    settings.METRICS_TOKEN = "scrape-me"

    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-me").status_code == 200
