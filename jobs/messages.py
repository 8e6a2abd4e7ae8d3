"""Task messages for jobs, built cheaply in bulk.

A job's message is the Celery message `task.apply_async(args=[job_id])` would send. Most
of apply_async's cost is assembling the same headers again for every call, so the
message of each job type is built once by Celery (`app.amqp.create_task_message`) and
copied per job with the ids swapped in, then published on the queue's direct route the
way Celery's `send_task_message` does (which still sends anything routed otherwise).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from celery.app.amqp import task_message
from kombu import Queue

from jobsite.celery_app import app

PLACEHOLDER = "00000000-0000-0000-0000-000000000000"


@lru_cache(maxsize=None)
def _template(type_name: str) -> task_message:
    from .tasks import task_for

    task = task_for(type_name)
    return app.amqp.create_task_message(
        PLACEHOLDER,
        task.name,
        [PLACEHOLDER],
        {},
        time_limit=task.time_limit,
        soft_time_limit=task.soft_time_limit,
        ignore_result=task.ignore_result,
    )


def message_for(type_name: str, job_id: str, eta: datetime | None = None) -> task_message:
    """The message that runs job `job_id` of type `type_name` (at `eta`, if given)."""
    template = _template(type_name)
    task_id = str(uuid.uuid4())
    headers = {
        **template.headers,
        "id": task_id,
        "root_id": task_id,
        "argsrepr": repr([job_id]),
        "eta": eta.isoformat() if eta else None,
    }
    return task_message(
        headers=headers,
        properties={**template.properties, "correlation_id": task_id},
        body=([job_id], {}, template.body[2]),
        sent_event=None,
    )


def send(producer, type_name: str, job_id: str, *, queue: str, priority: int, eta=None) -> None:
    """Publish the job's message on `producer` (which may be batching)."""
    message = message_for(type_name, job_id, eta)
    route = _direct_route(queue)
    if route is None:
        app.amqp.send_task_message(
            producer, type_name, message, queue=queue, priority=priority, retry=False
        )
        return
    producer.publish(
        json.dumps(message.body),
        exchange="",
        routing_key=queue,
        content_type="application/json",
        content_encoding="utf-8",
        headers=message.headers,
        priority=priority,
        retry=False,
        delivery_mode=route.delivery_mode,
        declare=route.declare,
        **message.properties,
    )


@dataclass(frozen=True)
class _Route:
    delivery_mode: int
    declare: list[Queue]


@lru_cache(maxsize=None)
def _direct_route(queue_name: str) -> _Route | None:
    """How send_task_message publishes to a queue bound to a direct exchange: through
    the default exchange with the queue's name as the routing key."""
    queue = app.amqp.queues.get(queue_name)
    if queue is None or queue.exchange is None or queue.exchange.type != "direct":
        return None
    delivery_mode = queue.exchange.delivery_mode or app.conf.task_default_delivery_mode
    return _Route(delivery_mode=delivery_mode, declare=[queue])
