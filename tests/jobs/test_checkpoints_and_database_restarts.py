"""A handler's checkpoints (`ctx.progress`, `ctx.check_cancelled`) ride out a database
that drops its connections (a restart, a failover): the worker tries again on a new
connection instead of failing the attempt."""

from __future__ import annotations

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from jobs.context import JobContext
from jobs.errors import JobCancelled
from jobs.models import Job, Status
from tests.support import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def postgresql_only():
    if connection.vendor != "postgresql":
        pytest.skip("the server ends the session: PostgreSQL only")


def drop_this_connection() -> None:
    """End this process's database session from the server side, as a restart does."""
    connection.ensure_connection()
    pid = connection.connection.info.backend_pid
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    with psycopg.connect(**params, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        wait_for(
            lambda: (
                not admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
            ),
            timeout=10,
            what="the session to end",
        )


def running_job() -> Job:
    return Job.objects.create(
        type="system.sleep", status=Status.RUNNING, attempts=1, heartbeat_at=timezone.now()
    )


def test_progress_is_recorded_on_a_new_connection_when_the_old_one_was_dropped():
    job = running_job()
    ctx = JobContext(job)

    drop_this_connection()
    ctx.progress(50, "halfway")

    job.refresh_from_db()
    assert (job.progress, job.message) == (50, "halfway")
    assert job.events.filter(kind="progress", message="50% halfway").count() == 1


def test_a_cancellation_check_survives_a_dropped_connection_and_still_sees_the_request():
    job = running_job()
    ctx = JobContext(job)

    drop_this_connection()
    ctx.check_cancelled()  # not cancelled: carries on

    Job.objects.filter(id=job.id).update(cancel_requested=True)
    drop_this_connection()
    with pytest.raises(JobCancelled):
        ctx.check_cancelled()
