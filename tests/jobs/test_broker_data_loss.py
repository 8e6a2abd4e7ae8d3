"""A broker that lost its messages (restarted without its data, flushed, failed over):
the queued jobs it held are sent again at the next sweep, and each still runs once."""

import json
import shutil
from datetime import timedelta

import pytest
import redis
from celery import Celery
from django.db import connection
from django.utils import timezone

from jobs import broker_loss, services, sweepers
from jobs.models import EventKind, Job, JobEvent, Status
from tests.support import run_in_threads, wait_for


def restart_without_data(broker) -> None:
    broker.stop()
    for path in broker.data_dir.iterdir():
        if path.name != "redis.log":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    broker.start()


def restart_with_data(broker) -> None:
    broker.stop()
    broker.start()


def flushall(broker) -> None:
    client(broker).flushall()


def flushdb(broker) -> None:
    client(broker).flushdb()


def client(broker) -> redis.Redis:
    return redis.Redis.from_url(broker.url)


def waiting_messages(broker) -> list[dict]:
    """The messages in the broker's queues (its lists)."""
    redis_client = client(broker)
    return [
        json.loads(raw)
        for key in redis_client.scan_iter(_type="list")
        for raw in redis_client.lrange(key, 0, -1)
    ]


def dispatches(job: Job) -> int:
    return JobEvent.objects.filter(job_id=job.id, kind=EventKind.DISPATCHED).count()


def noops(count: int) -> list[Job]:
    return [services.enqueue("system.noop").job for _ in range(count)]


# --- the sweeper, in this process ----------------------------------------------------


def test_it_resends_nothing_while_the_broker_is_the_same(transactional_db, private_broker):
    assert sweepers.resend_after_broker_loss() == 0  # the first look writes the marker
    jobs = noops(5)
    sent_at = {job.id: job.dispatched_at for job in Job.objects.all()}

    for _ in range(3):
        assert sweepers.sweep()["resent"] == 0

    assert len(waiting_messages(private_broker)) == 5
    assert {job.id: job.dispatched_at for job in Job.objects.all()} == sent_at
    assert [dispatches(job) for job in jobs] == [1] * 5


@pytest.mark.parametrize("lose_data", [restart_without_data, flushall, flushdb])
def test_every_queued_job_the_broker_held_is_sent_again_once(
    transactional_db, private_broker, lose_data
):
    sweepers.resend_after_broker_loss()
    now = timezone.now()
    waiting = noops(4)
    delayed = services.enqueue("system.noop", run_at=now + timedelta(seconds=30)).job
    later = services.JobSpec("system.noop", run_at=now + timedelta(hours=2))
    far_ahead = services.enqueue_many([later])[0].job
    running = services.enqueue("system.noop").job
    Job.objects.filter(id=running.id).update(status=Status.RUNNING, attempts=1)
    assert len(waiting_messages(private_broker)) == 6

    lose_data(private_broker)
    assert waiting_messages(private_broker) == []

    assert sweepers.resend_after_broker_loss() == 5
    assert sweepers.resend_after_broker_loss() == 0
    messages = waiting_messages(private_broker)
    assert sorted(m["headers"]["argsrepr"] for m in messages) == sorted(
        repr([str(job.id)]) for job in [*waiting, delayed]
    )
    [delayed_message] = [m for m in messages if m["headers"]["eta"]]
    assert delayed_message["headers"]["eta"] == delayed.run_at.isoformat()
    assert [dispatches(job) for job in [*waiting, delayed]] == [2] * 5
    assert dispatches(far_ahead) == 0 and dispatches(running) == 1


def test_a_broker_restarted_with_its_data_gets_the_jobs_again(transactional_db, private_broker):
    sweepers.resend_after_broker_loss()
    noops(3)

    restart_with_data(private_broker)

    # Its run id changed: messages written just before the restart may not have been
    # persisted, and workers drop the messages they had prefetched when it goes away.
    assert sweepers.resend_after_broker_loss() == 3
    assert len(waiting_messages(private_broker)) == 6


def test_a_broker_seen_for_the_first_time_is_resent_in_batches(
    transactional_db, private_broker, settings
):
    settings.JOBS_SWEEP_BATCH = 3
    jobs = noops(7)

    # Without time to spare, one batch per sweep; the next sweep goes on.
    assert [sweepers.resend_after_broker_loss(budget=0) for _ in range(4)] == [3, 3, 1, 0]
    assert [dispatches(job) for job in jobs] == [2] * 7

    flushall(private_broker)
    assert sweepers.resend_after_broker_loss() == 7


def test_sweepers_noticing_the_loss_together_send_each_job_once(transactional_db, private_broker):
    sweepers.resend_after_broker_loss()
    jobs = noops(20)
    flushall(private_broker)

    def sweep(_: int) -> int:
        try:
            return sweepers.resend_after_broker_loss()
        finally:
            connection.close()

    assert sum(run_in_threads(6, sweep)) == 20
    assert len(waiting_messages(private_broker)) == 20
    assert [dispatches(job) for job in jobs] == [2] * 20


def test_a_sweeper_waits_while_another_holds_the_turn_to_resend(transactional_db, private_broker):
    sweepers.resend_after_broker_loss()
    noops(2)
    flushall(private_broker)

    with broker_loss.broker_redis() as redis_client:
        with broker_loss.resend_turn(redis_client, hold_for=10) as mine:
            assert mine
            assert sweepers.resend_after_broker_loss() == 0
    assert sweepers.resend_after_broker_loss() == 2


def test_a_broker_that_is_not_redis_is_not_checked(
    transactional_db, monkeypatch, django_assert_num_queries
):
    amqp = Celery(broker="amqp://guest@127.0.0.1:1//", set_as_current=False)
    monkeypatch.setattr(broker_loss, "bounded_connection", amqp.connection_for_write)

    with django_assert_num_queries(0):
        assert sweepers.resend_after_broker_loss() == 0


# --- with a real worker and Beat -----------------------------------------------------

SWEEP_INTERVAL = 1.0
LOCK_DURATION = 3.0


def assert_each_ran_once(jobs: list[Job]) -> None:
    for job in Job.objects.filter(id__in=[j.id for j in jobs]):
        assert job.status == Status.SUCCEEDED and job.attempts == 1
        assert job.events.filter(kind=EventKind.STARTED).count() == 1
        assert job.events.filter(kind=EventKind.SUCCEEDED).count() == 1


@pytest.mark.worker
@pytest.mark.parametrize("lose_data", [restart_without_data, flushall, restart_with_data])
def test_jobs_waiting_in_a_broker_that_lost_its_data_run_once(
    private_broker, start_worker, lose_data
):
    sweepers.resend_after_broker_loss()
    jobs = noops(10)
    lose_data(private_broker)

    start_worker(
        broker_url=private_broker.url, sweep_interval=SWEEP_INTERVAL, lock_duration=LOCK_DURATION
    )
    # Far sooner than JOBS_REDISPATCH_AFTER (300 s), which would resend them otherwise.
    succeeded = Job.objects.filter(id__in=[j.id for j in jobs], status=Status.SUCCEEDED)
    wait_for(lambda: succeeded.count() == 10, timeout=30, what="every job to succeed")
    assert_each_ran_once(jobs)


@pytest.mark.worker
def test_delayed_jobs_a_running_worker_held_run_once_after_the_broker_restarts_empty(
    private_broker, start_worker
):
    worker = start_worker(
        broker_url=private_broker.url, sweep_interval=SWEEP_INTERVAL, lock_duration=LOCK_DURATION
    )
    wait_for(lambda: client(private_broker).exists(broker_loss.MARKER_KEY), what="the marker")
    running = services.enqueue("system.sleep", {"seconds": 2}).job
    run_at = timezone.now() + timedelta(seconds=4)
    jobs = [services.enqueue("system.noop", run_at=run_at).job for _ in range(5)]
    # The worker takes the messages and holds them until their time.
    wait_for(lambda: waiting_messages(private_broker) == [], what="the worker to take them")
    wait_for(lambda: Job.objects.get(id=running.id).status == Status.RUNNING, what="the sleep")

    restart_without_data(private_broker)

    succeeded = Job.objects.filter(id__in=[j.id for j in jobs], status=Status.SUCCEEDED)
    wait_for(lambda: succeeded.count() == 5, timeout=30, what="every job to succeed")
    assert_each_ran_once(jobs)
    assert all(job.started_at >= run_at - timedelta(seconds=1) for job in succeeded)
    assert "Sent 5 queued job(s) again" in worker.log()
    # The running job was not sent again: its worker finished it.
    wait_for(lambda: Job.objects.get(id=running.id).status == Status.SUCCEEDED, what="the sleep")
    assert_each_ran_once([running])
    assert dispatches(running) == 1
