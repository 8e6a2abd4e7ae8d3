"""The worker's consumer, with Celery's task events sent in batches.

Celery buffers a worker's task events (received, succeeded, failed, ...) and publishes
what the buffer holds at the next turn of the event loop, which under load is one
PUBLISH per event, two per job. Waiting EVENTS_FLUSH_DELAY before publishing sends all
the events of that moment in one message: Flower and other monitors see them at most
that much later, and the broker and the worker's main process do a fraction of the work.

It also keeps the messages the worker takes in an index of the worker's own, and puts
back in their queues those a previous process or connection left there before it
consumes (jobs/worker_loss.py).

Used by every worker through settings.CELERY_WORKER_CONSUMER.
"""

from __future__ import annotations

import threading

from celery.worker.consumer import Consumer as CeleryConsumer
from kombu import Connection
from vine import promise

from . import worker_loss

EVENTS_FLUSH_DELAY = 0.1  # seconds


class Consumer(CeleryConsumer):
    def __init__(self, *args, **kwargs) -> None:
        self._events_flush_lock = threading.Lock()
        self._events_flush_scheduled = False
        super().__init__(*args, **kwargs)
        self._schedule_events_flush_promise = promise(self._schedule_events_flush)

    def connection_for_read(self, heartbeat: float | None = None) -> Connection:
        connection = self.app.connection_for_read(heartbeat=heartbeat)
        worker_loss.use_own_index(connection, self.hostname)
        return self.ensure_connected(connection)

    def connect(self) -> Connection:
        # Celery's, with the restore before the event loop has the connection: at start
        # and after every lost connection (Celery has dropped what it had reserved over
        # the lost one; a killed process left its own behind).
        connection = self.connection_for_read(heartbeat=self.amqheartbeat)
        try:
            worker_loss.restore_own(connection)
        except Exception:
            connection.collect()
            raise
        if self.hub:
            connection.transport.register_with_event_loop(connection.connection, self.hub)
        return connection

    def on_send_event_buffered(self) -> None:
        if not self.hub:
            return
        with self._events_flush_lock:
            if self._events_flush_scheduled:
                return
            self._events_flush_scheduled = True
        # Events may be sent from other threads; the timer belongs to the loop's.
        self.hub.call_soon(self._schedule_events_flush_promise)

    def _schedule_events_flush(self) -> None:
        self.hub.call_later(EVENTS_FLUSH_DELAY, self._flush_buffered_events)

    def _flush_buffered_events(self) -> None:
        with self._events_flush_lock:
            self._events_flush_scheduled = False
        self._flush_events()

    def shutdown(self) -> None:
        self._flush_events()
        super().shutdown()
