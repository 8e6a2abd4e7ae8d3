"""A worker's main process killed, or its broker connection lost, while it holds messages
it took ahead of running them (prefetched): those jobs run within seconds, not after the
visibility timeout or JOBS_REDISPATCH_AFTER (300 s)."""

import os
import signal
import time
from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.utils import timezone

from jobs import services
from jobs.models import EventKind, Job, JobEvent, Status
from tests.support import WorkerProcess, wait_for

pytestmark = pytest.mark.worker

WAITING = 3  # with concurrency 1 and prefetch multiplier 4: taken while the first job runs
# Far below JOBS_REDISPATCH_AFTER, with room for starting a worker on busy cores.
DEADLINE = 20.0
REFUSED_FOR = 2.0  # seconds the broker refuses connections
QUICK_HEARTBEATS = {"WORKER_HEARTBEAT_INTERVAL": "0.5", "WORKER_HEARTBEAT_TIMEOUT": "2"}


def broker_client(private_broker) -> redis.Redis:
    return redis.Redis.from_url(private_broker.url)


def held_by(client: redis.Redis, worker: WorkerProcess) -> int:
    """Messages in the worker's own index of delivered, unacknowledged messages."""
    keys = client.keys(f"unacked_index:{worker.name}-{os.getpid()}@*")
    return sum(client.zcard(key) for key in keys)


def hold_waiting_jobs(client: redis.Redis, worker: WorkerProcess, seconds: float) -> list[Job]:
    """A job sleeping `seconds` runs on the worker's only pool process while it holds
    WAITING more jobs it took ahead."""
    sleeping = services.enqueue("system.sleep", {"seconds": seconds}).job
    wait_for(
        lambda: Job.objects.get(id=sleeping.id).status == Status.RUNNING,
        timeout=20,
        what="the sleeping job to run",
    )
    waiting = [services.enqueue("system.noop").job for _ in range(WAITING)]
    wait_for(
        lambda: held_by(client, worker) == WAITING + 1,
        timeout=10,
        what="the worker to take the waiting jobs",
    )
    still_queued = Job.objects.filter(id__in=[j.id for j in waiting], status=Status.QUEUED)
    assert still_queued.count() == WAITING
    return waiting


def wait_until_each_succeeded_once(jobs: list[Job], since: float) -> float:
    """Seconds from `since` (time.monotonic) until every job succeeded."""
    ids = [job.id for job in jobs]
    wait_for(
        lambda: Job.objects.filter(id__in=ids, status=Status.SUCCEEDED).count() == len(ids),
        timeout=DEADLINE + 10,
        what="the waiting jobs to succeed",
    )
    elapsed = time.monotonic() - since
    for job in Job.objects.filter(id__in=ids):
        assert job.attempts == 1
        kinds = list(JobEvent.objects.filter(job=job).values_list("kind", flat=True))
        assert kinds.count(EventKind.STARTED) == 1
        assert kinds.count(EventKind.SUCCEEDED) == 1
    return elapsed


def kill_main_process(worker: WorkerProcess) -> None:
    """SIGKILL the worker's main process, then what is left of its process group (the
    orphaned pool process), as the chaos soak and its supervisor do."""
    os.kill(worker.process.pid, signal.SIGKILL)
    worker.process.wait()
    try:
        os.killpg(worker.process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_jobs_a_killed_worker_took_ahead_run_at_once_when_it_restarts(private_broker, start_worker):
    client = broker_client(private_broker)
    worker = start_worker(broker_url=private_broker.url, concurrency=1)
    waiting = hold_waiting_jobs(client, worker, seconds=60)

    kill_main_process(worker)
    killed_at = time.monotonic()
    worker.start()  # same name, so the same hostname, as a supervisor restarts it

    assert wait_until_each_succeeded_once(waiting, killed_at) < DEADLINE
    assert settings.JOBS_REDISPATCH_AFTER == 300


def test_jobs_a_dead_worker_took_ahead_are_put_back_by_the_sweeper_of_another(
    private_broker, start_worker
):
    client = broker_client(private_broker)
    doomed = start_worker(broker_url=private_broker.url, concurrency=1, env=QUICK_HEARTBEATS)
    waiting = hold_waiting_jobs(client, doomed, seconds=60)
    start_worker(broker_url=private_broker.url, env=QUICK_HEARTBEATS)

    kill_main_process(doomed)
    killed_at = time.monotonic()

    assert wait_until_each_succeeded_once(waiting, killed_at) < DEADLINE
    wait_for(lambda: held_by(client, doomed) == 0, timeout=10, what="its index to be emptied")


def test_delayed_jobs_a_worker_held_run_once_its_broker_connection_is_back(
    private_broker, start_worker
):
    client = broker_client(private_broker)
    worker = start_worker(broker_url=private_broker.url, concurrency=1)
    run_at = timezone.now() + timedelta(seconds=4)
    delayed = [services.enqueue("system.noop", run_at=run_at).job for _ in range(WAITING)]
    # Sent with their time (ETA): the worker holds them, unacknowledged, until then.
    wait_for(lambda: held_by(client, worker) == WAITING, timeout=10, what="the worker to hold them")

    # Every connection is cut and, for a while, new ones are refused (the server is
    # at its client limit): the worker gives its connection up, Celery drops the
    # requests it held over it, and kombu cannot put them back in their queues.
    limit = client.config_get("maxclients")["maxclients"]
    client.config_set("maxclients", 1)
    try:
        client.client_kill_filter(_type="normal", skipme=True)
        client.client_kill_filter(_type="pubsub", skipme=True)
        time.sleep(REFUSED_FOR)
    finally:
        client.config_set("maxclients", limit)
    back_at = time.monotonic()

    assert wait_until_each_succeeded_once(delayed, back_at) < DEADLINE
    assert "Connection to broker lost" in worker.log()
    for job in Job.objects.filter(id__in=[j.id for j in delayed]):
        assert job.started_at >= run_at
