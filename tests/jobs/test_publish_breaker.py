"""While the broker's breaker is open, new and retried jobs skip the broker: they are
written undispatched, with no extra statement, and the dispatch sweeper sends them."""

from datetime import timedelta

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from jobs import messages, services, sweepers
from jobs.models import EventKind, Job, JobEvent
from tests.support import wait_for


def statements_of(action) -> int:
    with CaptureQueriesContext(connection) as queries:
        action()
    return len(queries)


def test_a_job_created_while_the_breaker_is_open_is_left_to_the_sweeper(transactional_db):
    closed = statements_of(lambda: services.enqueue("system.noop"))
    messages.breaker.failed()

    created = []
    while_open = statements_of(lambda: created.append(services.enqueue("system.noop").job))

    [job] = created
    assert Job.objects.get(id=job.id).dispatched_at is None
    assert not JobEvent.objects.filter(job_id=job.id, kind=EventKind.DISPATCHED).exists()
    assert while_open <= closed


def test_a_bulk_created_while_the_breaker_is_open_is_left_to_the_sweeper(transactional_db):
    messages.breaker.failed()

    results = services.enqueue_many([services.JobSpec("system.noop") for _ in range(3)])

    ids = [r.job.id for r in results]
    assert Job.objects.filter(id__in=ids, dispatched_at__isnull=True).count() == 3


def test_a_retry_while_the_breaker_is_open_is_left_to_the_sweeper(transactional_db):
    job = services.enqueue("system.noop").job
    Job.objects.filter(id=job.id).update(status="failed", finished_at=timezone.now())
    messages.breaker.failed()

    services.retry(job)

    assert Job.objects.get(id=job.id).dispatched_at is None


def test_the_sweeper_waits_for_the_open_time_then_its_send_closes_the_breaker(
    transactional_db, settings
):
    settings.JOBS_PUBLISH_BREAKER_SECONDS = 0.2
    messages.breaker.failed()
    job = services.enqueue("system.noop").job
    Job.objects.filter(id=job.id).update(updated_at=timezone.now() - timedelta(seconds=5))

    assert sweepers.dispatch_due() == 0  # not tried while open
    wait_for(lambda: not messages.publishing_paused(), timeout=5, what="the open time to pass")

    assert sweepers.dispatch_due() == 1
    assert Job.objects.get(id=job.id).dispatched_at is not None
    assert not messages.publishing_paused() and messages.breaker.allow()
