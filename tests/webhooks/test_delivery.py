"""Deliveries sent by a real worker to a real receiver on this machine: signed as
docs/webhooks.md says, retried with backoff, bounded by timeouts, refused at delivery
time when the address is private and the operator does not allow it."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest
from django.test import override_settings

from jobs.models import EventKind, Job, Status
from tests.support import wait_for
from tests.webhooks.receiver import HANG, Answer, Receiver
from webhooks.models import WebhookDelivery

# The worker may call this machine over plain http, with short waits between attempts.
LOCAL = {
    "WEBHOOKS_ALLOW_HTTP": "1",
    "WEBHOOKS_ALLOWED_PRIVATE_NETWORKS": "127.0.0.0/8,::1/128",
    "WEBHOOKS_BACKOFF_BASE": "0.5",
    "WEBHOOKS_CONNECT_TIMEOUT": "2",
    "WEBHOOKS_READ_TIMEOUT": "1",
}
# ... and so may this process, where endpoints are registered.
local_settings = override_settings(
    WEBHOOKS_ALLOW_HTTP=True, WEBHOOKS_ALLOWED_PRIVATE_NETWORKS=["127.0.0.0/8", "::1/128"]
)


def verify_signature(secret: str, body: bytes, header: str, tolerance: int = 300) -> bool:
    """The recipe of docs/webhooks.md, as a receiver would copy it."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    timestamp = int(fields["t"])
    if abs(time.time() - timestamp) > tolerance:
        return False
    signed = f"{timestamp}.".encode() + body
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"])


@pytest.fixture
def receiver():
    with Receiver() as server:
        yield server


@pytest.fixture
def local_worker(start_worker):
    return start_worker(env=LOCAL)


def register(api, url: str, events: list[str] | None = None) -> dict:
    with local_settings:
        created = api.post(
            "/api/webhooks/", json={"url": url, **({"events": events} if events else {})}
        )
    assert created.status_code == 201, created.text
    return created.json()


def delivery_of(delivery_id: str, *statuses: str) -> WebhookDelivery:
    return wait_for(
        lambda: (d := WebhookDelivery.objects.get(id=delivery_id)).status in statuses and d,
        what=f"delivery {delivery_id} to be {' or '.join(statuses)}",
    )


def test_a_job_that_ends_is_delivered_signed_and_a_replay_is_signed_afresh(
    api, receiver, local_worker
):
    endpoint = register(api, receiver.url("/in?source=jobsite"), ["job.succeeded"])
    job = api.post("/api/jobs/", json={"type": "system.noop"}).json()

    [request] = wait_for(lambda: receiver.requests, what="the delivery")

    delivery = WebhookDelivery.objects.get(subject_id=job["id"])
    assert request.path == "/in?source=jobsite"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Jobsite-Event"] == "job.succeeded"
    assert request.headers["Jobsite-Delivery"] == str(delivery.id)
    assert verify_signature(endpoint["secret"], request.body, request.headers["Jobsite-Signature"])
    assert not verify_signature("whsec_other", request.body, request.headers["Jobsite-Signature"])
    sent = json.loads(request.body)
    assert sent["event"] == "job.succeeded"
    assert (sent["data"]["job"]["id"], sent["data"]["job"]["status"]) == (job["id"], "succeeded")
    delivered = delivery_of(str(delivery.id), "delivered")
    assert (delivered.attempts, delivered.response_status) == (1, 200)
    wait_for(lambda: Job.objects.get(id=delivered.job_id).status == Status.SUCCEEDED)
    # No webhook about the delivery job's own end.
    assert WebhookDelivery.objects.count() == 1

    replayed = api.post(f"/api/webhooks/deliveries/{delivery.id}/replay/").json()

    second = wait_for(lambda: receiver.requests[1:], what="the replay")[0]
    assert second.body == request.body
    assert second.headers["Jobsite-Delivery"] == replayed["id"] != str(delivery.id)
    assert verify_signature(endpoint["secret"], second.body, second.headers["Jobsite-Signature"])
    delivery_of(replayed["id"], "delivered")


def test_a_receiver_answering_500_gets_the_delivery_again_after_a_backoff(
    api, receiver, local_worker
):
    receiver.answers = [Answer(500)]
    endpoint = register(api, receiver.url())

    ping = api.post(f"/api/webhooks/{endpoint['id']}/test/").json()

    delivery = delivery_of(ping["id"], "delivered", "failed")
    assert delivery.status == "delivered"
    assert [(a.number, a.response_status) for a in delivery.log.all()] == [(1, 500), (2, 200)]
    assert "500" in delivery.log.first().error
    job = wait_for(lambda: (j := Job.objects.get(id=delivery.job_id)).is_finished and j)
    assert (job.status, job.attempts) == (Status.SUCCEEDED, 2)
    assert EventKind.RETRY_SCHEDULED in job.events.values_list("kind", flat=True)
    assert len(receiver.requests) == 2


def test_a_receiver_that_never_answers_times_out_and_the_worker_goes_on(
    api, receiver, local_worker
):
    receiver.answers = [HANG]
    endpoint = register(api, receiver.url())

    ping = api.post(f"/api/webhooks/{endpoint['id']}/test/").json()
    other = api.post("/api/jobs/", json={"type": "system.noop"}).json()

    delivery = delivery_of(ping["id"], "delivered", "failed")
    assert delivery.status == "delivered"
    first, second = delivery.log.all()
    assert (first.response_status, second.response_status) == (None, 200)
    assert "timed out" in first.error.lower()
    assert api.wait_for_status(other["id"], "succeeded")["status"] == "succeeded"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_private_addresses_are_refused_at_delivery_time(api, receiver, start_worker, host):
    # This worker's operator allows http but no private network.
    start_worker(env={**LOCAL, "WEBHOOKS_ALLOWED_PRIVATE_NETWORKS": ""})
    endpoint = register(api, receiver.url(host=host))

    ping = api.post(f"/api/webhooks/{endpoint['id']}/test/").json()

    delivery = delivery_of(ping["id"], "failed")
    assert "public addresses" in delivery.last_error
    assert [a.response_status for a in delivery.log.all()] == [None]
    job = wait_for(lambda: (j := Job.objects.get(id=delivery.job_id)).is_finished and j)
    assert (job.status, job.attempts) == (Status.FAILED, 1)
    assert receiver.requests == []
