"""Worker liveness: each worker writes its own row every few seconds (WorkerHeartbeat), so
`/health/` knows which workers are alive without a slow broadcast to all of them."""

from __future__ import annotations

import logging
import os
import threading
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

from .models import WorkerHeartbeat

log = logging.getLogger(__name__)


class LivenessWriter:
    def __init__(self, hostname: str, queues: list[str], interval: float, concurrency: int = 1):
        self.hostname = hostname
        self.queues = queues
        self.concurrency = concurrency
        self.interval = interval
        self.started_at = timezone.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)
        try:
            WorkerHeartbeat.objects.filter(hostname=self.hostname, pid=os.getpid()).delete()
        finally:
            connection.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.beat()
            except Exception:
                log.warning("Could not write the worker heartbeat", exc_info=True)
                close_old_connections()
            self._stop.wait(self.interval)
        connection.close()

    def beat(self) -> None:
        WorkerHeartbeat.objects.update_or_create(
            hostname=self.hostname,
            defaults={
                "pid": os.getpid(),
                "queues": self.queues,
                "concurrency": self.concurrency,
                "started_at": self.started_at,
                "seen_at": timezone.now(),
            },
        )


def alive_workers():
    cutoff = timezone.now() - timedelta(seconds=settings.WORKER_HEARTBEAT_TIMEOUT)
    return WorkerHeartbeat.objects.filter(seen_at__gte=cutoff).order_by("hostname")
