"""Deliveries over https to a real local TLS receiver whose certificates are made here by a
CA of the test's own (trustme): the certificate must chain to a trusted CA and name the
URL's host, which is also the server name asked for, although the connection goes to
the address that was checked. A certificate that fails is said so in the log and tried
again like a receiver that does not answer, until the attempts run out."""

from __future__ import annotations

import socket
import ssl

import pytest
import trustme
from django.test import override_settings

from jobs.models import Job
from tests.engine import run, run_to_the_end
from tests.support import wait_for
from tests.webhooks.receiver import Receiver
from webhooks import services
from webhooks.models import WebhookDelivery, WebhookEndpoint

pytestmark = pytest.mark.django_db

# localhost, as the webhook's check resolves it (the receiver listens there alone).
LOCALHOST = socket.getaddrinfo("localhost", 443, type=socket.SOCK_STREAM)[0][4][0]
LOCAL = {
    "WEBHOOKS_ALLOWED_PRIVATE_NETWORKS": ["127.0.0.0/8", "::1/128"],
    "WEBHOOKS_READ_TIMEOUT": 2,
}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_bundle(ca, tmp_path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def tls_receiver(ca: trustme.CA, *names: str) -> Receiver:
    """A receiver on localhost's address whose certificate names `names`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return Receiver(host=LOCALHOST, tls=context)


def ping(user, url: str) -> tuple[WebhookDelivery, Job]:
    endpoint = WebhookEndpoint.objects.create(owner=user, url=url, events=[])
    delivery = services.ping(endpoint)
    return delivery, Job.objects.get(id=delivery.job_id)


def test_a_certificate_of_a_trusted_ca_for_the_urls_host_is_delivered_to(user, ca, ca_bundle):
    with (
        override_settings(**LOCAL, WEBHOOKS_CA_BUNDLE=ca_bundle),
        tls_receiver(ca, "localhost") as receiver,
    ):
        url = f"https://localhost:{receiver.port}/hooks"
        delivery, job = ping(user, url)

        assert run(job) == "succeeded"

    delivery.refresh_from_db()
    assert (delivery.status, delivery.response_status, delivery.last_error) == (
        "delivered",
        200,
        "",
    )
    [request] = receiver.requests
    assert request.headers["Host"] == f"localhost:{receiver.port}"
    # Connected to the checked address, yet asked for the URL's host by name.
    assert receiver.server_names == ["localhost"]


def test_the_certificate_must_name_the_urls_host_not_the_address_connected_to(user, ca, ca_bundle):
    with (
        override_settings(**LOCAL, WEBHOOKS_CA_BUNDLE=ca_bundle),
        tls_receiver(ca, LOCALHOST) as receiver,
    ):
        delivery, job = ping(user, f"https://localhost:{receiver.port}/hooks")
        Job.objects.filter(id=job.id).update(max_attempts=1)

        assert run(job) == "failed"

    delivery.refresh_from_db()
    assert delivery.status == "failed"
    assert delivery.last_error.startswith("TLS error: the certificate is not for localhost")
    assert receiver.requests == []


def test_an_untrusted_certificate_is_a_tls_error_tried_again_until_the_attempts_run_out(user, ca):
    # certifi's bundle, which does not know the test's CA.
    with override_settings(**LOCAL, WEBHOOKS_CA_BUNDLE=""), tls_receiver(ca, "localhost") as rx:
        delivery, job = ping(user, f"https://localhost:{rx.port}/hooks")
        Job.objects.filter(id=job.id).update(max_attempts=3)

        outcomes = run_to_the_end(job)

    assert outcomes == ["retry", "retry", "failed"]
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.response_status) == ("failed", 3, None)
    errors = [attempt.error for attempt in delivery.log.all()]
    assert (
        errors
        == [
            "TLS error: the certificate of localhost could not be verified "
            "(unable to get local issuer certificate)."
        ]
        * 3
    )
    assert delivery.last_error == errors[-1]
    assert rx.requests == []


def test_a_worker_trusts_the_ca_bundle_the_environment_names(api, ca, ca_bundle, start_worker):
    start_worker(
        env={
            "WEBHOOKS_ALLOWED_PRIVATE_NETWORKS": "127.0.0.0/8,::1/128",
            "WEBHOOKS_CA_BUNDLE": ca_bundle,
        }
    )
    with tls_receiver(ca, "localhost") as receiver:
        with override_settings(**LOCAL):
            endpoint = api.post(
                "/api/webhooks/", json={"url": f"https://localhost:{receiver.port}/hooks"}
            ).json()
        ping = api.post(f"/api/webhooks/{endpoint['id']}/test/").json()

        delivered = wait_for(
            lambda: (d := WebhookDelivery.objects.get(id=ping["id"])).status != "pending" and d,
            what="the ping to be delivered",
        )

    assert (delivered.status, delivered.response_status) == ("delivered", 200)
    assert receiver.server_names == ["localhost"]
