"""Messages a lost worker had taken from the broker are put back in their queues within
seconds, not after the visibility timeout.

A worker takes messages ahead of running them (prefetch multiplier × concurrency), and
holds retry messages until their ETA. On Redis, kombu records each message delivered and
not yet acknowledged in the `unacked` hash and, by delivery time, in a sorted-set index;
it puts a message back in its queue only once it has waited longer than the visibility
timeout (an hour). When a worker's main process is killed, or loses its broker
connection (Celery then drops the requests it had reserved), those jobs would wait that
long, or until the dispatch sweeper resends them after JOBS_REDISPATCH_AFTER.

So each worker's consuming connection keeps an index of its own, `unacked_index:<worker
hostname>` (the hash stays shared; publishers do not touch either):

- when the worker's consumer connects (at start, and again after every lost
  connection), before it consumes, it puts back every message left in its index: they
  were taken by a previous process with the same hostname (killed, then restarted by
  its supervisor) or over the connection just lost;
- the sweeper puts back the messages in the indexes of workers whose liveness heartbeat
  (jobs/worker_liveness.py) is older than WORKER_HEARTBEAT_TIMEOUT or gone, and those in the
  shared index workers used before (`unacked_index`) once they are that old.

A message put back whose job is running or has ended is dropped by the claim. Putting a
message back is one transaction per message that watches the hash, so two processes
putting back the same message (or one acknowledging it meanwhile) send it once at most.
Only Redis brokers have these indexes; for others nothing is done.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from kombu import Connection
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from .broker_loss import held_turn
from .messages import bounded_connection

log = logging.getLogger(__name__)

INDEX_PREFIX = "unacked_index:"
SHARED_INDEX = "unacked_index"  # kombu's default, shared by every worker before
RESTORE_LOCK_KEY = "jobs:worker-loss-lock"


def index_key(hostname: str) -> str:
    return f"{INDEX_PREFIX}{hostname}"


def use_own_index(connection: Connection, hostname: str) -> None:
    """Have `connection` (a worker's consuming connection, not yet connected) record the
    messages it delivers in the index of worker `hostname`."""
    if connection.transport.driver_type != "redis":
        return
    connection.transport_options.update(
        unacked_index_key=index_key(hostname),
        # The visibility-timeout restore of one index needs no lock shared with others.
        unacked_mutex_key=f"unacked_mutex:{hostname}",
    )


def restore_own(connection: Connection) -> int:
    """Put back in their queues the messages left in the index of `connection`, the
    worker's consuming connection, just connected. Returns how many."""
    if connection.transport.driver_type != "redis":
        return 0
    channel = connection.default_channel
    restored = restore(channel, channel.unacked_index_key)
    if restored:
        log.warning(
            "Put back %d message(s) this worker had taken before it restarted or lost "
            "its broker connection",
            restored,
        )
    return restored


def restore(channel, index: str, delivered_before: float = float("inf"), limit: int = 0) -> int:
    """Put back the messages in `index` delivered before `delivered_before` (a Unix
    time), the oldest first, at most `limit` of them (0: all). Returns how many were
    put back; entries whose message is gone (acknowledged meanwhile) are just removed."""
    with channel.conn_or_acquire() as client:
        paging = {"start": 0, "num": limit} if limit else {}
        tags = client.zrangebyscore(index, "-inf", f"({delivered_before}", **paging)
        return sum(_restore_tag(channel, client, index, tag) for tag in tags)


def _restore_tag(channel, client, index: str, tag: bytes) -> bool:
    # kombu's QoS.restore_by_tag, for an index other than the channel's own.
    restored = False

    def restore_transaction(pipe) -> None:
        nonlocal restored
        raw = pipe.hget(channel.unacked_key, tag)
        pipe.multi()
        pipe.zrem(index, tag).hdel(channel.unacked_key, tag)
        restored = raw is not None
        if raw is not None:
            message, exchange, routing_key = loads(bytes_to_str(raw))
            channel._do_restore_message(message, exchange, routing_key, pipe)

    client.transaction(restore_transaction, channel.unacked_key)
    return restored


@contextmanager
def broker_channel() -> Iterator:
    """A channel on a connection of the broker's own, bounded like publishing (a broker
    that hangs does not hold the sweep), or None when the broker is not Redis."""
    with bounded_connection() as connection:
        if connection.transport.driver_type != "redis":
            yield None
            return
        yield connection.default_channel


def indexed_workers(channel) -> list[str]:
    """Hostnames of the workers whose index holds messages (an emptied index is gone)."""
    with channel.conn_or_acquire() as client:
        keys = client.scan_iter(match=f"{INDEX_PREFIX}*", count=1000)
        return sorted({bytes_to_str(key)[len(INDEX_PREFIX) :] for key in keys})


@contextmanager
def restore_turn(channel, hold_for: float) -> Iterator[bool]:
    """True while this sweeper holds the turn to put messages back (for at most
    `hold_for` seconds); False when another sweeper does."""
    with channel.conn_or_acquire() as client, held_turn(client, RESTORE_LOCK_KEY, hold_for) as mine:
        yield mine
