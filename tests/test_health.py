"""/health/: database, broker, cache and worker liveness from the workers' own heartbeats.
Anyone gets the status; staff sessions and the HEALTH_TOKEN bearer token the details."""

import os
import subprocess
import sys
import time
from datetime import timedelta

import pytest
import requests
from django.utils import timezone

from jobs.models import WorkerHeartbeat
from tests.support import ROOT, wait_for

TOKEN = "health-probe"
PUBLIC_FIELDS = {"status"}


@pytest.fixture(autouse=True)
def health_token(settings):
    settings.HEALTH_TOKEN = TOKEN


def health(live_server, token: str | None = TOKEN, **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(f"{live_server.url}/health/", headers=headers, timeout=10, **kwargs)


@pytest.mark.worker
def test_healthy_with_a_live_worker(live_server, worker):
    wait_for(lambda: health(live_server).status_code == 200, timeout=30, what="healthy")

    body = health(live_server).json()
    assert body["status"] == "ok" and body["failing"] == []
    assert body["uptime_seconds"] >= 0 and body["memory_max_rss_kb"] > 0
    [alive] = body["checks"]["workers"]["alive"]
    assert alive["hostname"].startswith(worker.name)
    assert "maintenance" in alive["queues"]
    assert body["checks"]["workers"]["queues_without_workers"] == []


def beating_worker(queues: list[str]) -> WorkerHeartbeat:
    """The heartbeat row of a worker alive on `queues`, as the worker itself writes it."""
    return WorkerHeartbeat.objects.create(
        hostname="w1@box", pid=1, queues=queues, started_at=timezone.now(), seen_at=timezone.now()
    )


def test_a_queue_without_a_worker_is_reported(live_server, transactional_db):
    beating_worker(["default", "emails"])
    assert health(live_server).status_code == 200

    workers = health(live_server).json()["checks"]["workers"]

    assert set(workers["queues_without_workers"]) == {"reports", "pages", "images", "maintenance"}


def test_503_naming_the_workers_when_no_heartbeat_is_fresh(live_server, transactional_db):
    WorkerHeartbeat.objects.create(
        hostname="gone@box",
        pid=1,
        queues=["default"],
        started_at=timezone.now() - timedelta(hours=1),
        seen_at=timezone.now() - timedelta(minutes=5),
    )

    response = health(live_server)

    assert response.status_code == 503
    assert response.json()["failing"] == ["workers"]
    assert "no worker heartbeat" in response.json()["checks"]["workers"]["error"]


@pytest.mark.worker
def test_a_worker_that_stops_cleanly_takes_its_heartbeat_with_it(live_server, start_worker):
    worker = start_worker()
    wait_for(lambda: health(live_server).status_code == 200, timeout=30, what="healthy")

    worker.stop()

    assert not WorkerHeartbeat.objects.exists()
    assert health(live_server).json()["failing"] == ["workers"]


def test_503_naming_the_broker_when_it_is_down(live_server, transactional_db, private_broker):
    private_broker.stop()

    response = health(live_server)

    assert response.status_code == 503
    assert "broker" in response.json()["failing"]
    assert response.json()["checks"]["database"]["ok"] is True


def test_a_paused_broker_is_reported_unreachable_at_once(
    live_server, transactional_db, private_broker
):
    private_broker.pause()
    try:
        started = time.monotonic()
        response = health(live_server)
        elapsed = time.monotonic() - started
    finally:
        private_broker.resume()

    assert response.status_code == 503
    assert response.json()["failing"] == ["broker", "workers"]
    assert "broker unreachable" in response.json()["checks"]["broker"]["error"]
    # Each check is bounded: a paused Redis would otherwise hold this for 10 s and more.
    assert elapsed < 3, elapsed

    wait_for(
        lambda: health(live_server).json()["checks"]["broker"]["ok"],
        timeout=10,
        what="the broker check to pass again",
    )


def test_anonymous_callers_get_the_status_alone(live_server, transactional_db, settings):
    settings.DEBUG = False
    beating_worker(settings.JOBS_QUEUES)
    assert health(live_server).status_code == 200

    response = health(live_server, token=None)

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_anonymous_callers_learn_nothing_of_a_failure_but_the_503(
    live_server, transactional_db, private_broker, settings
):
    settings.DEBUG = False
    private_broker.stop()

    response = health(live_server, token=None)

    assert response.status_code == 503
    assert response.json() == {"status": "unavailable"}
    assert "Error" not in response.text and "127.0.0.1" not in response.text


def test_a_wrong_token_or_a_user_session_gets_the_status_alone(
    live_server, transactional_db, client, user
):
    assert set(health(live_server, token="wrong").json()) == PUBLIC_FIELDS
    client.force_login(user)
    cookies = {"sessionid": client.cookies["sessionid"].value}
    assert set(health(live_server, token=None, cookies=cookies).json()) == PUBLIC_FIELDS


def test_a_staff_session_gets_the_details(live_server, transactional_db, client, staff_user):
    client.force_login(staff_user)
    cookies = {"sessionid": client.cookies["sessionid"].value}

    body = health(live_server, token=None, cookies=cookies).json()

    assert {"failing", "checks", "pid", "uptime_seconds"} <= set(body)


def test_the_health_token_defaults_to_the_metrics_token(monkeypatch):
    monkeypatch.setenv("METRICS_TOKEN", "shared")
    monkeypatch.delenv("HEALTH_TOKEN", raising=False)
    code = "from django.conf import settings; print(settings.HEALTH_TOKEN)"
    shown = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {code}"],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "jobsite.settings"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert shown.stdout.strip() == "shared"
