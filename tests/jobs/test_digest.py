"""The daily digest: one e-mail per user with finished jobs, never two."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from jobs import services
from jobs.models import Job, Status
from tests.support import wait_for

pytestmark = pytest.mark.worker


def finished(owner, status: str, hours_ago: float, error: str = "") -> Job:
    return Job.objects.create(
        type="system.noop",
        owner=owner,
        status=status,
        error=error,
        finished_at=timezone.now() - timedelta(hours=hours_ago),
    )


def wait_until_done(job: Job) -> Job:
    def done() -> bool:
        job.refresh_from_db()
        return job.is_finished

    wait_for(done, timeout=30, what=f"job {job.id}")
    return job


def test_each_user_with_recent_jobs_gets_one_digest(user, other_user, worker, smtp_sink):
    get_user_model().objects.create_user("dora", "", "x")  # no address: no digest
    finished(user, Status.SUCCEEDED, 2)
    finished(user, Status.SUCCEEDED, 3)
    finished(user, Status.FAILED, 4, error="SMTP refused")
    finished(user, Status.SUCCEEDED, 30)  # outside the window
    finished(other_user, Status.CANCELLED, 1)

    job = wait_until_done(services.enqueue("email.digest", {"hours": 24}).job)

    assert job.status == Status.SUCCEEDED, job.error
    assert job.result == {"users": 2, "sent": 2}
    by_recipient = {m["To"]: m.get_payload() for m in smtp_sink.messages}
    assert set(by_recipient) == {user.email, other_user.email}
    assert "succeeded: 2" in by_recipient[user.email]
    assert "failed: 1" in by_recipient[user.email]
    assert "SMTP refused" in by_recipient[user.email]
    assert "cancelled: 1" in by_recipient[other_user.email]


def test_a_retried_digest_job_sends_nothing_twice(user, worker, smtp_sink):
    finished(user, Status.SUCCEEDED, 1)
    job = wait_until_done(services.enqueue("email.digest").job)
    assert len(smtp_sink.messages) == 1

    # As if the job had failed after sending, and an operator retried it.
    Job.objects.filter(id=job.id).update(status=Status.FAILED)
    job.refresh_from_db()
    services.retry(job)
    wait_until_done(job)

    assert job.status == Status.SUCCEEDED
    assert job.result == {"users": 1, "sent": 0}
    assert len(smtp_sink.messages) == 1
