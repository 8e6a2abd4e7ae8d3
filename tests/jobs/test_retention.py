"""Finished jobs are purged by their type's retention policy; the rest stay."""

from dataclasses import replace
from datetime import timedelta

import pytest
from django.utils import timezone

from jobs import registry, retention, services
from jobs.models import Batch, BatchState, Job, JobEvent, Status
from jobs.registry import Retention
from tests.engine import run

pytestmark = pytest.mark.django_db


def finished_jobs(count: int, status: str, age: timedelta, type_name: str = "system.noop"):
    finished_at = timezone.now() - age
    return Job.objects.bulk_create(
        [
            Job(type=type_name, status=status, queue="default", finished_at=finished_at)
            for _ in range(count)
        ]
    )


def test_succeeded_jobs_older_than_a_day_are_purged_and_newer_ones_kept():
    old = finished_jobs(3, Status.SUCCEEDED, timedelta(hours=25))
    recent = finished_jobs(2, Status.SUCCEEDED, timedelta(hours=23))
    for job in old:
        JobEvent.objects.create(job=job, kind="succeeded")

    deleted = retention.purge_finished()

    assert deleted == {"system.noop": 3}
    assert set(Job.objects.values_list("id", flat=True)) == {j.id for j in recent}
    assert not JobEvent.objects.filter(job_id__in=[j.id for j in old]).exists()


def test_only_the_newest_thousand_succeeded_jobs_of_a_type_are_kept():
    oldest = finished_jobs(5, Status.SUCCEEDED, timedelta(hours=2))
    newest = finished_jobs(1000, Status.SUCCEEDED, timedelta(hours=1))

    retention.purge_finished()

    remaining = set(Job.objects.values_list("id", flat=True))
    assert remaining == {j.id for j in newest}
    assert not remaining & {j.id for j in oldest}


def test_a_type_without_a_count_limit_keeps_every_job_young_enough(monkeypatch):
    noop = registry.get("system.noop")
    unlimited = replace(noop, retention=Retention(succeeded_max=None))
    monkeypatch.setitem(registry._registry, "system.noop", unlimited)
    young = finished_jobs(1005, Status.SUCCEEDED, timedelta(hours=1))
    finished_jobs(2, Status.SUCCEEDED, timedelta(hours=25))

    deleted = retention.purge_finished()

    assert deleted == {"system.noop": 2}
    assert set(Job.objects.values_list("id", flat=True)) == {j.id for j in young}


def test_failed_and_cancelled_jobs_are_kept_for_a_week():
    week_old = finished_jobs(2, Status.FAILED, timedelta(days=7, hours=1))
    week_old += finished_jobs(1, Status.CANCELLED, timedelta(days=7, hours=1))
    kept = finished_jobs(2, Status.FAILED, timedelta(days=6))

    deleted = retention.purge_finished()

    assert deleted == {"system.noop": 3}
    assert set(Job.objects.values_list("id", flat=True)) == {j.id for j in kept}


def test_queued_and_running_jobs_are_never_purged():
    long_ago = timezone.now() - timedelta(days=30)
    Job.objects.create(type="system.noop", status=Status.QUEUED, created_at=long_ago)
    Job.objects.create(type="system.noop", status=Status.RUNNING, started_at=long_ago)

    assert retention.purge_finished() == {}
    assert Job.objects.count() == 2


def test_each_type_follows_its_own_policy():
    # system.purge keeps its own runs for two days, not one.
    finished_jobs(1, Status.SUCCEEDED, timedelta(hours=30), type_name="system.purge")
    finished_jobs(1, Status.SUCCEEDED, timedelta(hours=30), type_name="system.noop")

    assert retention.purge_finished() == {"system.noop": 1}


def test_the_purge_job_runs_on_the_maintenance_queue():
    finished_jobs(4, Status.SUCCEEDED, timedelta(days=2))

    job = services.enqueue("system.purge").job
    assert run(job) == "succeeded"

    job.refresh_from_db()
    assert job.queue == "maintenance"
    assert job.result == {
        "deleted": {"system.noop": 4},
        "total": 4,
        "batches": 0,
        "history_rollups": 0,
    }
    assert not Job.objects.filter(type="system.noop").exists()


# --- batches ---------------------------------------------------------------------------


def settled_batch(state: str, age: timedelta, jobs: int = 0, **fields) -> Batch:
    finished_at = timezone.now() - age
    batch = Batch.objects.create(
        state=state,
        created_at=finished_at - timedelta(minutes=5),
        finished_at=finished_at,
        **fields,
    )
    for job in finished_jobs(jobs, Status.SUCCEEDED, timedelta(hours=1)):
        Job.objects.filter(id=job.id).update(batch=batch)
    return batch


def remaining_batches() -> set:
    return set(Batch.objects.values_list("id", flat=True))


def test_settled_batches_without_jobs_go_after_the_default_retention_of_their_end():
    gone = [
        settled_batch(BatchState.SUCCEEDED, timedelta(hours=25)),
        settled_batch(BatchState.FAILED, timedelta(days=7, hours=1)),
        settled_batch(BatchState.CANCELLED, timedelta(days=8)),
    ]
    kept = [
        settled_batch(BatchState.SUCCEEDED, timedelta(hours=23)),
        settled_batch(BatchState.FAILED, timedelta(days=6)),
        settled_batch(BatchState.CANCELLED, timedelta(days=2)),
    ]
    running = Batch.objects.create(created_at=timezone.now() - timedelta(days=30))

    assert retention.purge_settled_batches() == len(gone)

    assert remaining_batches() == {b.id for b in kept} | {running.id}


def test_a_batch_stays_while_one_of_its_jobs_or_callbacks_remains():
    with_a_job = settled_batch(BatchState.SUCCEEDED, timedelta(days=3), jobs=1)
    callback = finished_jobs(1, Status.SUCCEEDED, timedelta(hours=1))[0]
    with_a_callback = settled_batch(BatchState.SUCCEEDED, timedelta(days=3), complete_job=callback)

    assert retention.purge_settled_batches() == 0
    assert remaining_batches() == {with_a_job.id, with_a_callback.id}

    # Their jobs go by their own type's policy; the batches follow.
    Job.objects.all().delete()
    assert retention.purge_settled_batches() == 2
    assert not Batch.objects.exists()


def test_batches_are_purged_a_chunk_at_a_time(monkeypatch):
    monkeypatch.setattr(retention, "PURGE_BATCH", 2)
    for _ in range(5):
        settled_batch(BatchState.SUCCEEDED, timedelta(days=2))
    settled_batch(BatchState.SUCCEEDED, timedelta(days=2), jobs=1)

    assert retention.purge_settled_batches() == 5
    assert Batch.objects.count() == 1


def test_the_purge_job_deletes_a_batch_whose_last_jobs_it_purged():
    batch = settled_batch(BatchState.SUCCEEDED, timedelta(days=3))
    for job in finished_jobs(2, Status.SUCCEEDED, timedelta(days=3)):
        Job.objects.filter(id=job.id).update(batch=batch)

    job = services.enqueue("system.purge").job
    assert run(job) == "succeeded"

    job.refresh_from_db()
    assert job.result["deleted"] == {"system.noop": 2}
    assert job.result["batches"] == 1
    assert not Batch.objects.filter(id=batch.id).exists()
