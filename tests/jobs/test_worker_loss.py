"""A worker's main process killed, or its broker connection lost, while it holds messages
it took ahead of running them (prefetched): those jobs run within seconds, not after the
visibility timeout or JOBS_REDISPATCH_AFTER (300 s)."""

import json
import os
import signal
import time
from datetime import datetime, timedelta

import pytest
import redis
from celery import Celery
from django.conf import settings
from django.utils import timezone

from jobs import broker_loss, services, sweepers, worker_loss
from jobs.models import EventKind, Job, JobEvent, Status, WorkerHeartbeat
from jobsite.celery_app import app
from tests.support import WorkerProcess, wait_for

WAITING = 3  # with concurrency 1 and prefetch multiplier 4: taken while the first job runs
# Far below JOBS_REDISPATCH_AFTER, with room for starting a worker on busy cores.
DEADLINE = 20.0
REFUSED_FOR = 2.0  # seconds the broker refuses connections
QUICK_HEARTBEATS = {"WORKER_HEARTBEAT_INTERVAL": "0.5", "WORKER_HEARTBEAT_TIMEOUT": "2"}


def broker_client(private_broker) -> redis.Redis:
    return redis.Redis.from_url(private_broker.url)


def settled(client: redis.Redis) -> None:
    """Wait for the first sweep to have seen the test's new broker, after which it
    sends nothing again (jobs/broker_loss.py)."""
    wait_for(lambda: client.exists(broker_loss.MARKER_KEY), what="the first sweep")


def held_by(client: redis.Redis, worker: WorkerProcess) -> int:
    """Job messages in the worker's own index of delivered, unacknowledged messages (the
    engine's own tasks, such as the sweep it runs at start, left out)."""
    keys = client.keys(f"unacked_index:{worker.name}-{os.getpid()}@*")
    tags = [tag for key in keys for tag in client.zrange(key, 0, -1)]
    messages = client.hmget("unacked", tags) if tags else []
    return sum(1 for message in messages if message and not _task_of(message).startswith("jobs."))


def _task_of(unacked: bytes) -> str:
    """The task name of an entry of kombu's `unacked` hash: [message, exchange, key]."""
    return json.loads(unacked)[0]["headers"]["task"]


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


@pytest.mark.worker
def test_jobs_a_killed_worker_took_ahead_run_at_once_when_it_restarts(private_broker, start_worker):
    client = broker_client(private_broker)
    worker = start_worker(broker_url=private_broker.url, concurrency=1)
    settled(client)
    waiting = hold_waiting_jobs(client, worker, seconds=60)

    kill_main_process(worker)
    killed_at = time.monotonic()
    worker.start()  # same name, so the same hostname, as a supervisor restarts it

    assert wait_until_each_succeeded_once(waiting, killed_at) < DEADLINE
    assert settings.JOBS_REDISPATCH_AFTER == 300


@pytest.mark.worker
def test_jobs_a_dead_worker_took_ahead_are_put_back_by_the_sweeper_of_another(
    private_broker, start_worker
):
    client = broker_client(private_broker)
    doomed = start_worker(broker_url=private_broker.url, concurrency=1, env=QUICK_HEARTBEATS)
    settled(client)
    waiting = hold_waiting_jobs(client, doomed, seconds=60)
    start_worker(broker_url=private_broker.url, env=QUICK_HEARTBEATS)

    kill_main_process(doomed)
    killed_at = time.monotonic()

    assert wait_until_each_succeeded_once(waiting, killed_at) < DEADLINE
    wait_for(lambda: held_by(client, doomed) == 0, timeout=10, what="its index to be emptied")


@pytest.mark.worker
def test_delayed_jobs_a_worker_held_run_once_its_broker_connection_is_back(
    private_broker, start_worker
):
    client = broker_client(private_broker)
    worker = start_worker(broker_url=private_broker.url, concurrency=1)
    settled(client)
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


# --- the sweeper, in this process ----------------------------------------------------


def take(hostname: str, count: int, index: str | None = None) -> None:
    """Take `count` messages from the default queue as worker `hostname`'s consumer
    does, and vanish holding them, as a killed worker would."""
    connection = app.connection_for_read()
    if index is None:
        worker_loss.use_own_index(connection, hostname)
    else:
        connection.transport_options["unacked_index_key"] = index
    channel = connection.default_channel
    for _ in range(count):
        assert channel.basic_get("default", no_ack=False) is not None
    channel.qos.restore_at_shutdown = False
    connection.release()


def waiting(client: redis.Redis) -> int:
    return sum(client.llen(key) for key in client.scan_iter(_type="list"))


def beat(hostname: str, at: datetime) -> None:
    """Worker `hostname`'s liveness heartbeat, last written `at`."""
    WorkerHeartbeat.objects.update_or_create(
        hostname=hostname, defaults={"pid": 1, "started_at": at, "seen_at": at}
    )


def test_the_sweeper_puts_back_what_workers_without_a_fresh_heartbeat_took(
    transactional_db, private_broker, settings
):
    client = broker_client(private_broker)
    for _ in range(6):
        services.enqueue("system.noop")
    take("alive@host", 2)
    take("dead@host", 3)
    take("stopped@host", 1)  # no heartbeat row: a clean stop deletes it
    now = timezone.now()
    beat("alive@host", at=now)
    beat("dead@host", at=now)
    assert waiting(client) == 0
    assert sweepers.restore_from_lost_workers() == 0  # "stopped" took its own just now

    later = now + timedelta(seconds=settings.WORKER_HEARTBEAT_TIMEOUT + 1)
    beat("alive@host", at=later)
    assert sweepers.restore_from_lost_workers(now=later) == 4

    assert waiting(client) == 4
    assert client.hlen("unacked") == 2
    with worker_loss.broker_channel() as channel:
        assert worker_loss.indexed_workers(channel) == ["alive@host"]
    assert sweepers.restore_from_lost_workers(now=later) == 0


def test_the_sweeper_leaves_what_a_worker_took_after_its_heartbeat_went_stale(
    transactional_db, private_broker, settings
):
    # A new process under the same hostname, before its first heartbeat: what it takes
    # is its own.
    client = broker_client(private_broker)
    services.enqueue("system.noop")
    timeout = timedelta(seconds=settings.WORKER_HEARTBEAT_TIMEOUT)
    beat("restarted@host", at=timezone.now() - timeout - timedelta(seconds=5))
    take("restarted@host", 1)

    assert sweepers.restore_from_lost_workers() == 0
    assert client.zcard(worker_loss.index_key("restarted@host")) == 1


def test_the_sweeper_puts_back_old_messages_of_the_shared_index(
    transactional_db, private_broker, settings
):
    client = broker_client(private_broker)
    for _ in range(2):
        services.enqueue("system.noop")
    take("", 2, index=worker_loss.SHARED_INDEX)

    assert sweepers.restore_from_lost_workers() == 0
    later = timezone.now() + timedelta(seconds=settings.WORKER_HEARTBEAT_TIMEOUT + 1)
    assert sweepers.restore_from_lost_workers(now=later) == 2
    assert waiting(client) == 2
    assert client.hlen("unacked") == 0


def test_a_sweeper_leaves_the_messages_while_another_puts_them_back(
    transactional_db, private_broker
):
    services.enqueue("system.noop")
    take("dead@host", 1)

    with worker_loss.broker_channel() as channel:
        with worker_loss.restore_turn(channel, hold_for=10) as mine:
            assert mine
            assert sweepers.restore_from_lost_workers() == 0
    assert sweepers.restore_from_lost_workers() == 0  # taken just now, no row yet
    later = timezone.now() + timedelta(seconds=60)
    assert sweepers.restore_from_lost_workers(now=later) == 1
    assert sweepers.restore_from_lost_workers(now=later) == 0


def test_a_broker_that_is_not_redis_has_no_indexes(
    transactional_db, monkeypatch, django_assert_num_queries
):
    amqp = Celery(broker="amqp://guest@127.0.0.1:1//", set_as_current=False)
    monkeypatch.setattr(worker_loss, "bounded_connection", amqp.connection_for_write)

    with django_assert_num_queries(0):
        assert sweepers.restore_from_lost_workers() == 0
