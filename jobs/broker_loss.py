"""Noticing a broker that lost the messages it was sent.

A Redis restarted without persistence, flushed (FLUSHALL, FLUSHDB), or replaced by a
replica that lacks the latest writes answers as before, but the messages of jobs already
dispatched to it are gone. Those jobs stay `queued` with `dispatched_at` set, which the
dispatch sweeper would only resend after JOBS_REDISPATCH_AFTER.

The sweeper keeps a marker in the broker's own Redis, in the database the queues live
in: a hash holding the server's run id (INFO server), which changes whenever the
server process does. A missing marker (a server without the data, a flush) or another
run id (a restart, a failover) means messages may be gone, so every job still queued
that was dispatched before that moment is sent again. The marker records that moment as
`resend_before` until the resend is done: several sweepers may notice the change at
once, but only one records it, and a lock in the same Redis lets one sweeper at a time
resend. A duplicate of a message that was not lost is dropped by the claim.

Only Redis brokers are checked; for others (AMQP) `broker_redis` yields None.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import redis

from .messages import bounded_connection

MARKER_KEY = "jobs:broker-marker"
RESEND_LOCK_KEY = "jobs:broker-resend-lock"

# Records the moment a new run id (or a missing marker) is first seen, once: a sweeper
# that sees the marker already up to date gets back the resend still due, if any.
_NOTICE_CHANGE = """
if redis.call('HGET', KEYS[1], 'run_id') ~= ARGV[1] then
    redis.call('HSET', KEYS[1], 'run_id', ARGV[1], 'resend_before', ARGV[2])
end
return redis.call('HGET', KEYS[1], 'resend_before')
"""

# A newer change may have moved `resend_before` on while this resend ran: keep that one.
_FINISH_RESEND = """
if redis.call('HGET', KEYS[1], 'resend_before') == ARGV[1] then
    return redis.call('HDEL', KEYS[1], 'resend_before')
end
return 0
"""

_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


@contextmanager
def broker_redis() -> Iterator[redis.Redis | None]:
    """A client of the broker's Redis (the database its queues are in), or None when
    the broker is not Redis. A connection of its own: one of the app's pool, held
    while the jobs are resent, would leave one fewer for publishing them. Bounded like
    publishing, so a broker that hangs does not hold the sweep."""
    with bounded_connection() as connection:
        if connection.transport.driver_type != "redis":
            yield None
            return
        with connection.default_channel.conn_or_acquire() as client:
            yield client


def resend_due(client: redis.Redis, now: datetime) -> datetime | None:
    """Compare the broker with the marker, record a change at `now`, and return the
    moment before which dispatched messages may have been lost while their resend is
    not done; None when the broker is the one the jobs were sent to."""
    run_id = client.info("server")["run_id"]
    script = client.register_script(_NOTICE_CHANGE)
    due = script(keys=[MARKER_KEY], args=[run_id, now.isoformat()], client=client)
    return datetime.fromisoformat(_text(due)) if due else None


def finish_resend(client: redis.Redis, resend_before: datetime) -> None:
    """Record that every job dispatched before `resend_before` was sent again."""
    script = client.register_script(_FINISH_RESEND)
    script(keys=[MARKER_KEY], args=[resend_before.isoformat()], client=client)


@contextmanager
def resend_turn(client: redis.Redis, hold_for: float) -> Iterator[bool]:
    """True while this sweeper holds the turn to resend (for at most `hold_for`
    seconds, in case it dies holding it); False when another sweeper does."""
    with held_turn(client, RESEND_LOCK_KEY, hold_for) as mine:
        yield mine


@contextmanager
def held_turn(client: redis.Redis, key: str, hold_for: float) -> Iterator[bool]:
    """True while this process holds the lock `key` (for at most `hold_for` seconds, in
    case it dies holding it); False when another process does."""
    token = uuid.uuid4().hex
    if not client.set(key, token, nx=True, px=max(1, int(hold_for * 1000))):
        yield False
        return
    try:
        yield True
    finally:
        release = client.register_script(_RELEASE_LOCK)
        release(keys=[key], args=[token], client=client)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
