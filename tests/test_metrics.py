"""/metrics: jobs by type and status, failures, queue depth and run times, for Prometheus;
readable with the METRICS_TOKEN bearer token or a staff session, by nobody else."""

from datetime import timedelta

import pytest
import requests
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from jobs import services
from jobs.models import Job, JobEvent, Status

pytestmark = pytest.mark.django_db

TOKEN = "scrape-me"


@pytest.fixture(autouse=True)
def metrics_token(settings):
    settings.METRICS_TOKEN = TOKEN


def scrape(client: Client) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
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


def test_queue_depth_counts_messages_waiting_in_the_broker(
    client, django_capture_on_commit_callbacks
):
    def depth(queue: str) -> float:
        return scrape(client)[("jobsite_queue_depth", (("queue", queue),))]

    before = depth("emails")
    with django_capture_on_commit_callbacks(execute=True):  # as at commit: to the broker
        for _ in range(3):
            services.enqueue("email.send", {"to": ["a@example.com"], "subject": "s", "body": "b"})
        services.enqueue(
            "email.send", {"to": ["a@example.com"], "subject": "s", "body": "b"}, priority="high"
        )

    assert depth("emails") == before + 4


def test_a_broker_that_does_not_answer_is_a_figure_not_a_failed_scrape(client, private_broker):
    finished("system.noop", Status.SUCCEEDED, 0.1)
    assert scrape(client)[("jobsite_broker_up", ())] == 1

    private_broker.pause()
    try:
        samples = scrape(client)
    finally:
        private_broker.resume()

    assert samples[("jobsite_broker_up", ())] == 0
    assert not any(name == "jobsite_queue_depth" for name, _ in samples)
    assert samples[("jobsite_jobs", (("status", "succeeded"), ("type", "system.noop")))] == 1


def metrics(live_server, session: requests.Session | None = None, **headers) -> requests.Response:
    return (session or requests).get(f"{live_server.url}/metrics", headers=headers, timeout=10)


def signed_in(client: Client, user) -> requests.Session:
    """A real HTTP session carrying `user`'s Django session cookie."""
    client.force_login(user)
    session = requests.Session()
    session.cookies.set("sessionid", client.cookies["sessionid"].value)
    return session


@pytest.mark.parametrize("token", [TOKEN, ""])
@pytest.mark.parametrize("debug", [False, True])
def test_anonymous_scrapes_are_refused_even_from_loopback(live_server, settings, debug, token):
    settings.DEBUG, settings.METRICS_TOKEN = debug, token

    response = metrics(live_server)  # from 127.0.0.1, like a proxy on the same host

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["code"] == "not_authenticated"
    assert "jobsite_jobs" not in response.text


def test_a_wrong_token_or_a_missing_one_is_refused(live_server, settings):
    settings.DEBUG = False

    assert metrics(live_server, Authorization="Bearer wrong").status_code == 403
    assert metrics(live_server, Authorization=f"Basic {TOKEN}").status_code == 401
    settings.METRICS_TOKEN = ""
    assert metrics(live_server, Authorization="Bearer ").status_code == 401


def test_the_token_opens_them(live_server, settings):
    settings.DEBUG = False

    response = metrics(live_server, Authorization=f"Bearer {TOKEN}")

    assert response.status_code == 200
    assert "jobsite_queue_depth" in response.text


def test_a_staff_session_opens_them_and_a_user_session_does_not(
    live_server, settings, client, user, staff_user
):
    settings.DEBUG = False
    settings.METRICS_TOKEN = ""

    assert metrics(live_server, signed_in(client, user)).status_code == 403
    assert metrics(live_server, signed_in(Client(), staff_user)).status_code == 200
