"""/health/: database, broker, cache and worker liveness from the workers' own heartbeats."""

from datetime import timedelta

import pytest
import requests
from django.utils import timezone

from jobs.models import WorkerHeartbeat
from tests.support import wait_for

pytestmark = pytest.mark.worker


def health(live_server) -> requests.Response:
    return requests.get(f"{live_server.url}/health/", timeout=10)


def test_healthy_with_a_live_worker(live_server, worker):
    wait_for(lambda: health(live_server).status_code == 200, timeout=30, what="healthy")

    body = health(live_server).json()
    assert body["status"] == "ok" and body["failing"] == []
    assert body["uptime_seconds"] >= 0 and body["memory_max_rss_kb"] > 0
    [alive] = body["checks"]["workers"]["alive"]
    assert alive["hostname"].startswith(worker.name)
    assert "maintenance" in alive["queues"]
    assert body["checks"]["workers"]["queues_without_workers"] == []


def test_a_queue_without_a_worker_is_reported(live_server, start_worker):
    start_worker(queues=["default", "emails"])
    wait_for(lambda: health(live_server).status_code == 200, timeout=30, what="healthy")

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
