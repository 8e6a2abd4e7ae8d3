"""kombu's Redis transport, with two savings on every message a worker takes.

- Ack emulation (the record of a delivered, not yet acknowledged message that lets
  Redis hand it out again if its worker vanishes) is written and removed with pipelines
  that are not wrapped in MULTI/EXEC: four commands fewer per message. The two commands
  of each pipeline still go in one round trip and run in order; the only other reader
  of those records, the restore of messages older than the visibility timeout, skips an
  entry whose other half is missing, and the database row decides whether a job runs.
- The channel keeps one redis-py client for its commands instead of building a new one
  for every acknowledgement and publish (redis-py fills a table of response callbacks
  for each new client, which cost the worker's main process more than the commands).

Used for `redis://` brokers (settings.CELERY_BROKER_TRANSPORT); any other broker URL
keeps kombu's own transport.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from kombu.transport import redis
from kombu.utils.objects import cached_property


class QoS(redis.QoS):
    @contextmanager
    def pipe_or_acquire(self, pipe=None, client=None) -> Iterator:
        if pipe:
            yield pipe
        else:
            with self.channel.conn_or_acquire(client) as client:
                yield client.pipeline(transaction=False)


class Channel(redis.Channel):
    QoS = QoS

    @cached_property
    def _commands_client(self):
        return super()._create_client()

    def _create_client(self, asynchronous: bool = False):
        if asynchronous:
            return super()._create_client(asynchronous=True)
        return self._commands_client


class Transport(redis.Transport):
    Channel = Channel
