"""The Redis transport workers use: kombu's ack emulation with fewer commands, and
still every delivered message either acknowledged or handed out again."""

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis
from django.conf import settings
from kombu import Queue

from jobs.broker import Transport
from jobsite.celery_app import app

pytestmark = pytest.mark.skipif(
    not settings.CELERY_BROKER_URL.startswith("redis://"), reason="a Redis broker"
)


@pytest.fixture
def queue_name():
    name = f"transport-test-{uuid.uuid4().hex[:8]}"
    yield name
    with app.connection_for_write() as conn:
        Queue(name, routing_key=name).bind(conn.default_channel).delete()


def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.CELERY_BROKER_URL)


@contextmanager
def _monitored() -> Iterator[list[dict]]:
    """The commands Redis runs inside the block, from every client (MONITOR)."""
    commands: list[dict] = []
    with _redis().monitor() as monitor:
        yield commands
        end = uuid.uuid4().hex
        _redis().echo(end)
        while end not in (command := monitor.next_command())["command"]:
            commands.append(command)


def _commands_of_client_that_ran(commands: list[dict], prefix: str) -> list[str]:
    """Every command name sent by the client that sent a command starting with prefix."""
    client = next(
        (c["client_address"], c["client_port"]) for c in commands if c["command"].startswith(prefix)
    )
    return [
        c["command"].split()[0].upper()
        for c in commands
        if (c["client_address"], c["client_port"]) == client
    ]


def _publish(conn, queue_name: str, body: dict) -> Queue:
    queue = Queue(queue_name, routing_key=queue_name).bind(conn.default_channel)
    queue.declare()
    conn.Producer().publish(body, routing_key=queue_name, declare=[queue])
    return queue


def test_workers_use_it_for_a_redis_broker():
    with app.connection_for_read() as conn:
        assert isinstance(conn.transport, Transport)


def test_a_message_taken_and_acknowledged_leaves_no_record_and_no_transaction(queue_name):
    with app.connection_for_write() as conn:
        queue = _publish(conn, queue_name, {"n": 1})

        with _monitored() as commands:
            message = queue.get(no_ack=False)
            assert _redis().hexists("unacked", message.delivery_tag)
            message.ack()

        assert message.payload == {"n": 1}
        assert not _redis().hexists("unacked", message.delivery_tag)
        assert not _redis().zscore("unacked_index", message.delivery_tag)
        sent_by_consumer = _commands_of_client_that_ran(
            commands, f"HDEL unacked {message.delivery_tag}"
        )
        assert sent_by_consumer.count("HDEL") == 1
        assert "MULTI" not in sent_by_consumer and "EXEC" not in sent_by_consumer


def test_a_message_taken_but_not_acknowledged_is_handed_out_again(queue_name):
    with app.connection_for_write() as conn:
        queue = _publish(conn, queue_name, {"n": 2})
        taken = queue.get(no_ack=False)
        assert taken.payload == {"n": 2}
        # The consumer goes away without acknowledging (as a worker shutting down does).
        conn.default_channel.close()

    with app.connection_for_write() as conn:
        again = Queue(queue_name, routing_key=queue_name).bind(conn.default_channel).get()
        assert again is not None and again.payload == {"n": 2}
