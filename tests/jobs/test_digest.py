"""The daily digest: one e-mail per user with finished jobs, never two."""

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core import mail
from django.utils import timezone

from jobs import services
from jobs.models import Job, Status
from tests.engine import reloaded, run


def finished(owner, status: str, hours_ago: float, error: str = "") -> Job:
    return Job.objects.create(
        type="system.noop",
        owner=owner,
        status=status,
        error=error,
        finished_at=timezone.now() - timedelta(hours=hours_ago),
    )


def run_to_its_end(job: Job) -> Job:
    run(job)
    return reloaded(job)


def test_each_user_with_recent_jobs_gets_one_digest(user, other_user):
    get_user_model().objects.create_user("dora", "", "x")  # no address: no digest
    finished(user, Status.SUCCEEDED, 2)
    finished(user, Status.SUCCEEDED, 3)
    finished(user, Status.FAILED, 4, error="SMTP refused")
    finished(user, Status.SUCCEEDED, 30)  # outside the window
    finished(other_user, Status.CANCELLED, 1)

    job = run_to_its_end(services.enqueue("email.digest", {"hours": 24}).job)

    assert job.status == Status.SUCCEEDED, job.error
    assert job.result == {"users": 2, "sent": 2}
    by_recipient = {m.to[0]: m.body for m in mail.outbox}
    assert len(mail.outbox) == 2
    assert set(by_recipient) == {user.email, other_user.email}
    assert "succeeded: 2" in by_recipient[user.email]
    assert "failed: 1" in by_recipient[user.email]
    assert "SMTP refused" in by_recipient[user.email]
    assert "cancelled: 1" in by_recipient[other_user.email]


def test_a_retried_digest_job_sends_nothing_twice(user):
    finished(user, Status.SUCCEEDED, 1)
    job = run_to_its_end(services.enqueue("email.digest").job)
    assert len(mail.outbox) == 1

    # As if the job had failed after sending, and an operator retried it.
    Job.objects.filter(id=job.id).update(status=Status.FAILED)
    job.refresh_from_db()
    services.retry(job)
    job = run_to_its_end(job)

    assert job.status == Status.SUCCEEDED
    assert job.result == {"users": 1, "sent": 0}
    assert len(mail.outbox) == 1
