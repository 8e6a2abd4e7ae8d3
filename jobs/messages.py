"""The broker messages that run jobs, published cheaply in bulk.

A job's message is the Celery message `task.apply_async(args=[job_id])` would send. Most
of apply_async's cost is assembling the same headers again for every call, so the
message of each job type is built once by Celery (`app.amqp.create_task_message`) and
copied per job with the ids swapped in. It is published the way Celery's
`send_task_message` publishes to a queue on a direct exchange (through the default
exchange, routing key = queue name), with each queue declared once per batch rather
than once per message. Anything routed otherwise goes through `send_task_message`.

Publishing is done on connections of its own with short timeouts
(JOBS_PUBLISH_TIMEOUT), so a broker that hangs costs a request a fraction of a second,
not the 10 s read timeout the worker's consumer keeps; and after a failure a circuit
breaker skips the broker for JOBS_PUBLISH_BREAKER_SECONDS, the jobs being left to the
dispatch sweeper.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING, Any

from celery.app.amqp import task_message
from django.conf import settings
from kombu import Connection, Producer
from kombu.connection import ConnectionPool

from jobsite.celery_app import app
from jobsite.circuit import CircuitBreaker

from . import registry

if TYPE_CHECKING:
    from .models import Job

PLACEHOLDER = "00000000-0000-0000-0000-000000000000"
BATCH_SIZE = 1000


breaker = CircuitBreaker("the broker", lambda: settings.JOBS_PUBLISH_BREAKER_SECONDS)


def publishing_paused() -> bool:
    """True while the breaker is open: `publish` would refuse without trying."""
    return breaker.is_open()


def publish(jobs: Sequence[Job], now: datetime) -> None:
    """Send one message per job, in one broker round trip per BATCH_SIZE messages; a job
    whose `run_at` is still ahead is sent with that ETA. Raises if the broker fails or
    does not answer within JOBS_PUBLISH_TIMEOUT, and `CircuitOpen` without trying while
    the breaker is open."""
    with breaker.guard(), _producer() as producer:
        for queue_name in {job.queue for job in jobs}:
            if _uses_default_exchange(queue_name):
                producer.maybe_declare(app.amqp.queues[queue_name])
        if len(jobs) == 1:  # a batch costs more than it saves for one message
            _send(producer, jobs[0], _eta(jobs[0], now))
            return
        with producer.batch(max_size=BATCH_SIZE):
            for job in jobs:
                _send(producer, job, _eta(job, now))


def bounded_connection() -> Connection:
    """A broker connection (not yet connected) whose connect, read and write each give up
    after JOBS_PUBLISH_TIMEOUT, with no retries."""
    timeout = settings.JOBS_PUBLISH_TIMEOUT
    return app.connection_for_write(
        transport_options=_bounded_options(timeout), connect_timeout=timeout
    )


def _bounded_options(timeout: float) -> dict[str, Any]:
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "max_retries": 0,
        "retry_on_timeout": False,
    }


_pools: dict[str, ConnectionPool] = {}
_pools_lock = threading.Lock()


def _connection_pool() -> ConnectionPool:
    url = app.conf.broker_write_url or app.conf.broker_url
    pool = _pools.get(url)
    if pool is None:
        with _pools_lock:
            pool = _pools.get(url) or bounded_connection().Pool(limit=app.conf.broker_pool_limit)
            _pools[url] = pool
    return pool


@contextmanager
def _producer() -> Iterator[Producer]:
    """A producer on a pooled bounded connection. Waiting for a free connection is
    bounded too; a connection whose use raised is closed before it goes back to the pool
    (kombu's PooledConnection does that), so the next user connects afresh."""
    pool = _connection_pool()
    with pool.acquire(block=True, timeout=settings.JOBS_PUBLISH_TIMEOUT) as connection:
        yield Producer(connection)


def _forget_pools_after_fork() -> None:
    # The child must not close or share the parent's sockets: it starts with none.
    _pools.clear()


os.register_at_fork(after_in_child=_forget_pools_after_fork)


def _eta(job: Job, now: datetime) -> datetime | None:
    return job.run_at if job.run_at and job.run_at > now else None


def broker_priority(priority: int) -> int:
    """Celery priority for the broker in use: Redis serves 0 first, AMQP serves 9 first."""
    if app.conf.broker_url.startswith(("redis", "rediss")):
        return 9 - priority
    return priority


def message_for(
    type_name: str, job_id: str, eta: datetime | None = None, time_limit: int | None = None
) -> task_message:
    """The message that runs job `job_id` of type `type_name` (at `eta`, if given), with
    the job's own soft `time_limit` in seconds instead of its type's, if given."""
    template = _template(type_name)
    task_id = str(uuid.uuid4())
    headers = {
        **template.headers,
        "id": task_id,
        "root_id": task_id,
        "argsrepr": repr([job_id]),
        "eta": eta.isoformat() if eta else None,
    }
    if time_limit:
        # The worker's time limits for this message (hard, soft), as apply_async's
        # time_limit and soft_time_limit options send them.
        headers["timelimit"] = [registry.hard_time_limit(time_limit), time_limit]
    return task_message(
        headers=headers,
        properties={**template.properties, "correlation_id": task_id},
        body=([job_id], {}, template.body[2]),
        sent_event=None,
    )


def _send(producer, job: Job, eta: datetime | None) -> None:
    message = message_for(job.type, str(job.id), eta, job.time_limit)
    priority = broker_priority(job.priority)
    if not _uses_default_exchange(job.queue):
        app.amqp.send_task_message(
            producer, job.type, message, queue=job.queue, priority=priority, retry=False
        )
        return
    producer.publish(
        json.dumps(message.body),
        exchange="",
        routing_key=job.queue,
        content_type="application/json",
        content_encoding="utf-8",
        headers=message.headers,
        priority=priority,
        delivery_mode=_delivery_mode(job.queue),
        retry=False,
        **message.properties,
    )


@cache
def _template(type_name: str) -> task_message:
    jt = registry.get(type_name)
    return app.amqp.create_task_message(
        PLACEHOLDER,
        jt.name,
        [PLACEHOLDER],
        {},
        time_limit=jt.time_limit,
        soft_time_limit=jt.soft_time_limit,
        # Unset, so the worker's own JOBS_STORE_TASK_RESULTS decides.
        ignore_result=None,
    )


@cache
def _uses_default_exchange(queue_name: str) -> bool:
    """send_task_message publishes to a queue bound to a direct exchange through the
    default exchange, with the queue's name as the routing key."""
    queue = app.amqp.queues.get(queue_name)
    return queue is not None and queue.exchange is not None and queue.exchange.type == "direct"


@cache
def _delivery_mode(queue_name: str) -> int:
    queue = app.amqp.queues[queue_name]
    return queue.exchange.delivery_mode or app.conf.task_default_delivery_mode
