"""What every job passes through, kept cheap without changing what it does: bulk rows,
bulk messages, the worker's database connection, heartbeats and task results."""

import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from django_celery_results.models import TaskResult
from kombu import Queue

from jobs import messages, runner, services, store
from jobs.models import Job, Status
from jobsite.celery_app import app
from tests.support import WORKER_APPLICATION_NAME, run_in_threads, wait_for

COMPARED_FIELDS = [
    f.attname
    for f in Job._meta.concrete_fields
    if f.attname not in {"id", "idempotency_key", "created_at", "updated_at", "dispatched_at"}
]


def _row(job_id) -> dict:
    return Job.objects.values(*COMPARED_FIELDS).get(id=job_id)


def test_a_bulk_enqueue_writes_the_same_row_as_a_single_one(transactional_db, user):
    run_at = timezone.now() + timedelta(hours=2)
    spec = {"payload": {"seconds": 1}, "priority": "high", "run_at": run_at}

    single = services.enqueue("system.sleep", owner=user, idempotency_key="one", **spec).job
    bulk = services.enqueue_many(
        [services.JobSpec("system.sleep", idempotency_key="two", **spec)], owner=user
    )[0].job

    assert _row(bulk.id) == _row(single.id)
    assert Job.objects.get(id=bulk.id).idempotency_key == "two"
    assert bulk.created_at is not None and not bulk._state.adding


def _messages_on(queue_name: str) -> list:
    with app.connection_for_read() as conn:
        queue = Queue(queue_name, routing_key=queue_name).bind(conn.default_channel)
        found = []
        while (message := queue.get(no_ack=True)) is not None:
            found.append(message)
        return found


def test_a_jobs_message_is_the_one_apply_async_would_send(transactional_db):
    queue = "maintenance"  # no worker consumes it during this test
    _messages_on(queue)
    job = Job(id=uuid.uuid4(), type="system.purge", queue=queue, priority=9)
    eta = timezone.now() + timedelta(seconds=30)
    job.run_at = eta

    app.tasks["system.purge"].apply_async(
        args=[str(job.id)],
        queue=queue,
        routing_key=queue,
        priority=messages.broker_priority(job.priority),
        eta=eta,
    )
    messages.publish([job], timezone.now())

    celerys, ours = _messages_on(queue)
    # Ours leaves ignore_result to the worker's JOBS_STORE_TASK_RESULTS.
    assert ours.headers["ignore_result"] is None
    differing = {"id", "root_id", "origin", "ignore_result"}
    assert {k: v for k, v in ours.headers.items() if k not in differing} == {
        k: v for k, v in celerys.headers.items() if k not in differing
    }
    assert ours.headers["eta"] == eta.isoformat()
    assert ours.decode() == celerys.decode()
    assert ours.content_type == celerys.content_type == "application/json"
    assert ours.delivery_info == celerys.delivery_info
    for name in ("priority", "delivery_mode"):
        assert ours.properties[name] == celerys.properties[name]


@pytest.mark.worker
def test_a_job_that_reports_nothing_stays_alive_past_the_lock_duration(staff_api, start_worker):
    start_worker(lock_duration=2.0, sweep_interval=0.5)
    created = staff_api.post(
        "/api/jobs/", {"type": "system.sleep", "payload": {"seconds": 5, "checkpoints": False}}
    ).json()

    job = staff_api.wait_for_status(created["id"], "succeeded", timeout=30)

    assert job["attempts"] == 1
    assert "recovered" not in [e["kind"] for e in job["events"]]


def _worker_sessions() -> set[tuple[int, object]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, backend_start FROM pg_stat_activity WHERE application_name = %s",
            [WORKER_APPLICATION_NAME],
        )
        return set(cursor.fetchall())


def _run_noops(count: int) -> None:
    results = services.enqueue_many([services.JobSpec("system.noop") for _ in range(count)])
    ids = [r.job.id for r in results]
    wait_for(
        lambda: Job.objects.filter(id__in=ids, status=Status.SUCCEEDED).count() == count,
        what=f"{count} jobs to succeed",
    )


@pytest.mark.worker
def test_a_worker_keeps_its_database_connections_from_job_to_job(start_worker):
    if connection.vendor != "postgresql":
        pytest.skip("reads PostgreSQL's session list")
    start_worker(beat=False)
    _run_noops(10)
    sessions = _worker_sessions()

    _run_noops(30)

    assert _worker_sessions() <= sessions


@pytest.mark.worker
def test_a_worker_whose_database_connection_died_claims_on_a_new_one(start_worker):
    if connection.vendor != "postgresql":
        pytest.skip("ends sessions through PostgreSQL")
    start_worker(beat=False)
    _run_noops(4)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            [WORKER_APPLICATION_NAME],
        )

    # Without the sweeper, a job whose claim failed would sit until redispatch (minutes).
    _run_noops(4)


@pytest.mark.worker
def test_job_runs_leave_no_celery_task_result_by_default(start_worker):
    start_worker(beat=False, concurrency=1)
    _run_noops(2)

    # One process runs one task after another, so once a later job has run, the
    # results of the first two would have been stored.
    _run_noops(1)

    assert not TaskResult.objects.filter(task_name="system.noop").exists()


@pytest.mark.worker
def test_job_runs_store_celery_task_results_when_asked(start_worker):
    start_worker(beat=False, env={"JOBS_STORE_TASK_RESULTS": "1"})

    _run_noops(2)

    # A message the sweeper sent again is dropped as a duplicate and has a result of its own.
    results = TaskResult.objects.filter(
        task_name="system.noop", status="SUCCESS", result__contains="succeeded"
    )
    wait_for(lambda: results.count() == 2, what="two task results")


def test_concurrent_claims_of_one_job_take_it_once(transactional_db):
    job = services.enqueue("system.noop").job

    def claim(_: int):
        try:
            return runner.claim(str(job.id), timezone.now())
        finally:
            connection.close()

    claimed = [c for c in run_in_threads(6, claim) if c is not None]

    assert len(claimed) == 1
    assert claimed[0].status == Status.RUNNING and claimed[0].attempts == 1
    assert claimed[0].payload == {} and claimed[0].started_at is not None
    assert job.events.filter(kind="started").count() == 1


def test_a_claim_finds_its_job_by_primary_key_whatever_the_statistics(transactional_db):
    if connection.vendor != "postgresql":
        pytest.skip("reads PostgreSQL's query plan")
    # Never analyzed, the table invites the planner to walk the index of queued rows.
    jobs = [r.job for r in services.enqueue_many([services.JobSpec("system.noop")] * 300)]
    now = timezone.now()

    with connection.cursor() as cursor:
        cursor.execute(
            "EXPLAIN " + store.CLAIM_SQL, {"id": str(jobs[-1].id), "now": now, "due": now}
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())

    scans = [line for line in plan.splitlines() if "Scan" in line and " on jobs_job " in line]
    assert scans and all("using jobs_job_pkey" in scan for scan in scans), plan
