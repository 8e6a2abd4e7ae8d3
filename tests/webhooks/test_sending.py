"""How a delivery's job judges the receiver's answer, run in this process against a real
local receiver: 2xx delivered, 4xx failed at once, 429/503 with Retry-After waited for,
5xx retried until the attempts run out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.test import override_settings

from jobs.models import Job, Status
from tests.engine import run, run_to_the_end
from tests.webhooks.receiver import Answer, Receiver
from webhooks import services
from webhooks.models import WebhookDelivery, WebhookEndpoint
from webhooks.sending import retry_after

pytestmark = pytest.mark.django_db

LOCAL = override_settings(
    WEBHOOKS_ALLOW_HTTP=True,
    WEBHOOKS_ALLOWED_PRIVATE_NETWORKS=["127.0.0.0/8", "::1/128"],
    WEBHOOKS_READ_TIMEOUT=2,
)


@pytest.fixture
def receiver():
    with LOCAL, Receiver() as server:
        yield server


def ping(user, url: str) -> tuple[WebhookDelivery, Job]:
    endpoint = WebhookEndpoint.objects.create(owner=user, url=url, events=[])
    delivery = services.ping(endpoint)
    return delivery, Job.objects.get(id=delivery.job_id)


def test_a_2xx_answer_delivers(user, receiver):
    delivery, job = ping(user, receiver.url())

    assert run(job) == "succeeded"

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.response_status) == ("delivered", 1, 200)
    assert delivery.delivered_at is not None
    assert Job.objects.get(id=job.id).result == {"delivered": True, "status": 200}


@pytest.mark.parametrize("status", [400, 401, 404, 410])
def test_a_client_error_fails_at_once(user, receiver, status):
    receiver.answers = [Answer(status)]
    delivery, job = ping(user, receiver.url())

    assert run(job) == "failed"

    delivery.refresh_from_db()
    assert (delivery.status, delivery.response_status) == ("failed", status)
    assert f"answered {status}" in delivery.last_error
    assert len(receiver.requests) == 1


@pytest.mark.parametrize("status", [408, 500, 502])
def test_timeouts_and_server_errors_are_retried_until_the_attempts_run_out(user, receiver, status):
    receiver.answers = [Answer(status)] * 3
    delivery, job = ping(user, receiver.url())
    Job.objects.filter(id=job.id).update(max_attempts=3)

    outcomes = run_to_the_end(job)

    assert outcomes == ["retry", "retry", "failed"]
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("failed", 3)
    assert [a.response_status for a in delivery.log.all()] == [status] * 3


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured_without_spending_an_attempt(user, receiver, status):
    receiver.answers = [Answer(status, {"Retry-After": "120"})]
    delivery, job = ping(user, receiver.url())

    assert run(job) == "snoozed"

    waiting = Job.objects.get(id=job.id)
    assert (waiting.status, waiting.attempts_used) == (Status.QUEUED, 0)
    assert timedelta(seconds=115) < waiting.run_at - waiting.updated_at <= timedelta(seconds=121)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.response_status) == ("pending", status)
    assert run(job, now=waiting.run_at) == "succeeded"
    assert [a.response_status for a in delivery.log.all()] == [status, 200]


def test_redirects_are_not_followed(user, receiver):
    receiver.answers = [Answer(302, {"Location": "http://10.0.0.1/elsewhere"})]
    delivery, job = ping(user, receiver.url())
    Job.objects.filter(id=job.id).update(max_attempts=1)

    assert run(job) == "failed"

    delivery.refresh_from_db()
    assert delivery.response_status == 302
    assert len(receiver.requests) == 1


def test_an_ipv6_loopback_receiver_is_refused_unless_allowed(user):
    with Receiver(host="::1") as receiver:
        with override_settings(WEBHOOKS_ALLOW_HTTP=True, WEBHOOKS_ALLOWED_PRIVATE_NETWORKS=[]):
            refused, refused_job = ping(user, receiver.url())
            assert run(refused_job) == "failed"
        with override_settings(
            WEBHOOKS_ALLOW_HTTP=True, WEBHOOKS_ALLOWED_PRIVATE_NETWORKS=["::1/128"]
        ):
            allowed, allowed_job = ping(user, receiver.url())
            assert run(allowed_job) == "succeeded"

    refused.refresh_from_db()
    assert "::1" in refused.last_error and refused.status == "failed"
    assert len(receiver.requests) == 1
    assert receiver.requests[0].headers["Host"] == f"[::1]:{receiver.port}"


def test_an_inactive_endpoint_is_not_called(user, receiver):
    delivery, job = ping(user, receiver.url())
    WebhookEndpoint.objects.update(active=False)

    assert run(job) == "succeeded"

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("failed", 0)
    assert receiver.requests == []


def test_retry_after_as_seconds_or_an_http_date():
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    assert retry_after("30", now) == 30
    assert retry_after("Thu, 01 Jan 2026 12:01:00 GMT", now) == 60
    assert retry_after("soon", now) is None
    assert retry_after(None, now) is None
