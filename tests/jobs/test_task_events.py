"""Celery's task events, which Flower shows, leave a worker in batches: every event of
every job arrives, in far fewer broker messages than events."""

import base64
import json
import time

import pytest
import redis
from django.conf import settings

from jobs import services

pytestmark = pytest.mark.worker

JOBS = 48


def _task_events(message: dict) -> list[dict]:
    """The task events one message on the events exchange carries (one, or a batch)."""
    envelope = json.loads(message["data"])
    body = envelope["body"]
    if envelope["properties"].get("body_encoding") == "base64":
        body = base64.b64decode(body)
    events = json.loads(body)
    events = events if isinstance(events, list) else [events]
    return [e for e in events if e.get("type", "").startswith("task-")]


def test_a_burst_of_jobs_reaches_monitors_in_batches_of_events(worker):
    monitor = redis.Redis.from_url(settings.CELERY_BROKER_URL).pubsub(
        ignore_subscribe_messages=True
    )
    monitor.psubscribe("*celeryev*")
    specs = [services.JobSpec("system.noop") for _ in range(JOBS)]
    job_ids = {str(result.job.id) for result in services.enqueue_many(specs)}

    received: dict[str, str] = {}  # task id -> job id
    succeeded: set[str] = set()
    messages = events = 0
    deadline = time.monotonic() + 60
    while len(received) < JOBS or not set(received) <= succeeded:
        assert time.monotonic() < deadline, f"{len(received)} received, {len(succeeded)} done"
        message = monitor.get_message(timeout=1)
        batch = _task_events(message) if message else []
        messages += bool(batch)
        events += len(batch)
        for event in batch:
            if event["type"] == "task-received":
                job_id = next((j for j in job_ids if j in event.get("args", "")), None)
                if job_id:
                    received[event["uuid"]] = job_id
            elif event["type"] == "task-succeeded":
                succeeded.add(event["uuid"])
    monitor.close()

    assert set(received.values()) == job_ids
    assert messages <= events / 2, f"{events} task events in {messages} messages"
