"""Gathering a report's data: every row once, in order, read a chunk at a time, with
progress written between chunks while other processes write too."""

import threading
from datetime import date

import pytest
from django.db import connection
from django.utils import timezone

from jobs.models import Job, Status
from notes.models import Page
from reports import kinds
from reports.models import Kind, Report


def some_jobs(owner, count: int) -> list[Job]:
    """`count` jobs of `owner`, all created at the same instant."""
    jobs = Job.objects.bulk_create([Job(owner=owner, type="system.noop") for _ in range(count)])
    Job.objects.filter(id__in=[j.id for j in jobs]).update(created_at=timezone.now())
    return jobs


@pytest.mark.django_db
def test_chunks_hold_every_row_once_in_order_even_when_the_first_key_ties(user):
    jobs = some_jobs(user, 25)

    chunks = list(kinds.in_chunks(Job.objects.values("id", "created_at"), ("created_at", "id"), 4))

    assert [len(c) for c in chunks] == [4, 4, 4, 4, 4, 4, 1]
    assert [row["id"] for chunk in chunks for row in chunk] == sorted(j.id for j in jobs)


@pytest.mark.django_db
def test_chunks_of_model_instances_follow_their_order(user):
    titles = ["b", "a", "c", "a", "b"]
    for title in titles:
        Page.objects.create(owner=user, title=title)

    chunks = list(kinds.in_chunks(Page.objects.all(), ("title", "id"), 2))

    assert [p.title for chunk in chunks for p in chunk] == sorted(titles)


def write_elsewhere(job_id) -> None:
    """A write committed by another connection, as a worker's would be."""

    def write() -> None:
        try:
            Job.objects.filter(id=job_id).update(message="written elsewhere")
        finally:
            connection.close()

    thread = threading.Thread(target=write)
    thread.start()
    thread.join()


@pytest.mark.django_db(transaction=True)
def test_progress_is_written_between_chunks_while_another_connection_writes(user):
    jobs = some_jobs(user, 3 * kinds.CHUNK // 2)
    today = timezone.localdate()
    report = Report.objects.create(
        owner=user,
        kind=Kind.JOB_ACTIVITY,
        title="Busy",
        parameters={"start": date(today.year, 1, 1).isoformat(), "end": today.isoformat()},
    )
    recorded = []

    def progress(fraction: float) -> None:
        # Another process writes, then this connection writes the job's progress: on
        # SQLite the second write fails if a read begun before the first is still open.
        write_elsewhere(jobs[0].id)
        Job.objects.filter(id=jobs[-1].id).update(progress=int(fraction * 100))
        recorded.append(fraction)

    rows = kinds.gather_activity(report, progress)

    assert len(rows) == len(jobs)
    assert recorded[-1] == 1.0 and len(recorded) >= 2
    assert Job.objects.get(id=jobs[-1].id).progress == 100
    assert Job.objects.get(id=jobs[0].id).status == Status.QUEUED
