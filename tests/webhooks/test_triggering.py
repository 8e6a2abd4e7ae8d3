"""Job ends become deliveries: once per endpoint and end, only for subscribed events, never
for the deliveries' own jobs, and the sweeper's catch-up creates what a crash skipped."""

from datetime import timedelta

import pytest
from django.core.cache import cache
from django.test import override_settings
from django.utils import timezone

from jobs import runner, sweepers
from jobs import services as job_services
from jobs.engine import JobSpec, create_batch
from jobs.followups import catch_up as run_catch_ups
from jobs.models import Batch, BatchState, FollowUpMark, Job, Status
from tests.engine import run
from webhooks import services
from webhooks.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint

PUBLIC_URL = "https://93.184.215.14/hooks"


@pytest.fixture
def endpoint(user):
    return WebhookEndpoint.objects.create(owner=user, url=PUBLIC_URL, events=["job.succeeded"])


@pytest.fixture
def run_on_commit(django_capture_on_commit_callbacks):
    """Run the job to its end and the follow-ups its commit triggers."""

    def run_committed(job: Job) -> str:
        with django_capture_on_commit_callbacks(execute=True):
            return run(job)

    return run_committed


def test_a_job_that_ends_yields_one_delivery_per_subscribed_endpoint(user, endpoint, run_on_commit):
    other = WebhookEndpoint.objects.create(owner=user, url=PUBLIC_URL, events=["job.failed"])
    job = job_services.enqueue("system.noop", owner=user).job

    assert run_on_commit(job) == "succeeded"

    delivery = WebhookDelivery.objects.get()
    assert (delivery.endpoint, delivery.event, delivery.subject_id) == (
        endpoint,
        "job.succeeded",
        str(job.id),
    )
    assert delivery.payload["event"] == "job.succeeded"
    sent = delivery.payload["data"]["job"]
    assert (sent["id"], sent["status"], sent["type"]) == (str(job.id), "succeeded", "system.noop")
    assert sent["finished_at"] is not None
    assert Job.objects.get(id=delivery.job_id).type == services.DELIVER
    assert not other.deliveries.exists()


def test_a_second_offer_of_the_same_end_is_a_no_op(user, endpoint, run_on_commit):
    job = job_services.enqueue("system.noop", owner=user).job
    run_on_commit(job)

    services.jobs_ended([Job.objects.get(id=job.id)])
    created = services.catch_up(timezone.now())

    assert created == 0
    assert WebhookDelivery.objects.count() == 1
    assert Job.objects.filter(type=services.DELIVER).count() == 1


def test_cancelled_jobs_are_told_to_endpoints_that_subscribe(
    user, endpoint, django_capture_on_commit_callbacks
):
    endpoint.events = ["job.cancelled"]
    endpoint.save()
    job = job_services.enqueue("system.noop", owner=user).job

    with django_capture_on_commit_callbacks(execute=True):
        job_services.cancel(job, by=user)

    assert WebhookDelivery.objects.get().event == "job.cancelled"


def test_the_delivery_jobs_own_ends_are_not_told(user, endpoint, run_on_commit):
    endpoint.events = ["job.succeeded", "job.failed"]
    endpoint.save()
    job = job_services.enqueue("system.noop", owner=user).job
    run_on_commit(job)
    delivery_job = Job.objects.get(type=services.DELIVER)
    # The name now leads somewhere refused: the delivery fails at once.
    WebhookEndpoint.objects.filter(id=endpoint.id).update(url="https://127.0.0.1/hooks")
    run_on_commit(delivery_job)

    assert Job.objects.get(id=delivery_job.id).status == Status.FAILED
    delivery = WebhookDelivery.objects.get()
    # Settled by its handler, with the handler's reason, which the job's end leaves alone.
    assert delivery.status == DeliveryStatus.FAILED
    assert "127.0.0.1" in delivery.last_error


def test_inactive_endpoints_and_owners_without_endpoints_get_nothing(
    user, other_user, endpoint, run_on_commit
):
    endpoint.active = False
    endpoint.save()
    for owner in (user, other_user):
        run_on_commit(job_services.enqueue("system.noop", owner=owner).job)

    assert not WebhookDelivery.objects.exists()


def test_catch_up_creates_a_missed_delivery_exactly_once(user, endpoint):
    # Ended without its follow-up: as after a crash between the end and the follow-up.
    now = timezone.now()
    WebhookEndpoint.objects.filter(id=endpoint.id).update(created_at=now - timedelta(hours=3))
    missed = Job.objects.create(
        type="system.noop", owner=user, status=Status.SUCCEEDED, finished_at=now
    )
    long_ago = Job.objects.create(
        type="system.noop",
        owner=user,
        status=Status.SUCCEEDED,
        finished_at=now - timedelta(hours=2),
    )

    first = services.catch_up(now)
    second = services.catch_up(now)

    assert (first, second) == (1, 0)
    delivery = WebhookDelivery.objects.get()
    assert delivery.subject_id == str(missed.id)
    assert not WebhookDelivery.objects.filter(subject_id=str(long_ago.id)).exists()
    with override_settings(WEBHOOKS_CATCH_UP_MINUTES=180):
        assert services.catch_up(now) == 1


def test_catch_up_does_not_tell_an_endpoint_registered_after_the_end(user, endpoint):
    WebhookEndpoint.objects.filter(id=endpoint.id).update(
        created_at=timezone.now() - timedelta(minutes=5)
    )
    before = Job.objects.create(
        type="system.noop",
        owner=user,
        status=Status.SUCCEEDED,
        finished_at=timezone.now() - timedelta(minutes=10),
    )

    assert services.catch_up(timezone.now()) == 0
    assert not WebhookDelivery.objects.filter(subject_id=str(before.id)).exists()


def test_a_batch_that_ends_is_told_once_with_its_summary(user, endpoint, run_on_commit):
    endpoint.events = ["batch.finished"]
    endpoint.save()
    batch = create_batch([JobSpec("system.noop"), JobSpec("system.noop")], owner=user)
    first, second = batch.jobs.order_by("created_at", "id")

    run_on_commit(first)
    assert not WebhookDelivery.objects.exists()
    run_on_commit(second)

    delivery = WebhookDelivery.objects.get()
    assert (delivery.event, delivery.subject_id) == ("batch.finished", str(batch.id))
    told = delivery.payload["data"]["batch"]
    assert (told["id"], told["state"], told["counts"]["succeeded"]) == (
        str(batch.id),
        "succeeded",
        2,
    )
    assert services.catch_up(timezone.now()) == 0  # nothing missed, nothing twice


def test_a_batch_end_whose_telling_was_lost_is_caught_up_once(user, endpoint):
    endpoint.events = ["batch.finished"]
    endpoint.save()
    WebhookEndpoint.objects.filter(id=endpoint.id).update(
        created_at=timezone.now() - timedelta(minutes=5)
    )
    batch = create_batch([JobSpec("system.noop")], owner=user)
    # Settled, but the process died before the receivers heard of it.
    Batch.objects.filter(id=batch.id).update(state=BatchState.FAILED, finished_at=timezone.now())

    assert services.catch_up(timezone.now()) == 1
    assert services.catch_up(timezone.now()) == 0
    delivery = WebhookDelivery.objects.get()
    assert delivery.payload["data"]["batch"]["state"] == "failed"


def test_the_sweepers_catch_up_at_most_once_a_minute(user, endpoint):
    cache.delete(services.CATCH_UP_KEY)
    now = timezone.now()
    WebhookEndpoint.objects.filter(id=endpoint.id).update(created_at=now - timedelta(hours=1))

    def missed():
        return Job.objects.create(
            type="system.noop", owner=user, status=Status.SUCCEEDED, finished_at=now
        )

    missed()
    first = run_catch_ups(now)
    later = missed()
    second = run_catch_ups(now)
    cache.delete(services.CATCH_UP_KEY)
    third = run_catch_ups(now)

    assert (first, second, third) == (1, 0, 1)
    assert WebhookDelivery.objects.filter(subject_id=str(later.id)).count() == 1


def test_a_catch_up_the_minute_skipped_reads_from_where_the_last_one_was(user, endpoint, settings):
    cache.delete(services.CATCH_UP_KEY)
    now = timezone.now()
    WebhookEndpoint.objects.filter(id=endpoint.id).update(created_at=now - timedelta(hours=1))
    assert run_catch_ups(now) == 0
    mark = FollowUpMark.objects.get(name="webhooks").caught_up_to
    missed = Job.objects.create(
        type="system.noop",
        owner=user,
        status=Status.SUCCEEDED,
        finished_at=now - timedelta(seconds=settings.JOBS_FOLLOW_UP_LAG / 2),
    )

    assert run_catch_ups(now + timedelta(seconds=5)) == 0  # not due: the mark stays
    assert FollowUpMark.objects.get(name="webhooks").caught_up_to == mark
    cache.delete(services.CATCH_UP_KEY)
    assert run_catch_ups(now + timedelta(seconds=70)) == 1
    assert run_catch_ups(now + timedelta(seconds=75)) == 0

    assert WebhookDelivery.objects.get().subject_id == str(missed.id)


# --- deliveries whose job ended without sending them ------------------------------------


@pytest.fixture
def pending_delivery(user, endpoint, run_on_commit) -> WebhookDelivery:
    run_on_commit(job_services.enqueue("system.noop", owner=user).job)
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == DeliveryStatus.PENDING
    return delivery


def test_a_delivery_whose_job_an_operator_cancels_ends_cancelled_once(
    staff_user, pending_delivery, django_capture_on_commit_callbacks
):
    job = Job.objects.get(id=pending_delivery.job_id)

    with django_capture_on_commit_callbacks(execute=True):
        job_services.cancel(job, by=staff_user, via="api")

    delivery = WebhookDelivery.objects.get(id=pending_delivery.id)
    assert delivery.status == DeliveryStatus.CANCELLED
    assert delivery.last_error == "Its job was cancelled."
    assert delivery.attempts == 0
    # Offered again (the follow-up, the catch-up): nothing more happens.
    services.jobs_ended([Job.objects.get(id=job.id)])
    assert services.catch_up(timezone.now()) == 0
    assert WebhookDelivery.objects.get(id=delivery.id).status == DeliveryStatus.CANCELLED


def test_a_delivery_whose_job_expired_ends_failed_saying_so(
    pending_delivery, django_capture_on_commit_callbacks
):
    now = timezone.now()
    Job.objects.filter(id=pending_delivery.job_id).update(expires_at=now - timedelta(seconds=1))

    with django_capture_on_commit_callbacks(execute=True):
        assert sweepers.expire_overdue(now) == 1

    delivery = WebhookDelivery.objects.get(id=pending_delivery.id)
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.last_error == "Its job expired: Expired before it could start."


def test_a_delivery_whose_job_stalled_too_often_ends_failed_saying_so(
    settings, pending_delivery, django_capture_on_commit_callbacks
):
    settings.JOBS_MAX_STALLED = 0
    claimed = runner.claim(str(pending_delivery.job_id), timezone.now())
    later = claimed.heartbeat_at + timedelta(seconds=settings.JOBS_LOCK_DURATION + 1)

    with django_capture_on_commit_callbacks(execute=True):
        assert sweepers.recover_stalled(now=later) == 1

    delivery = WebhookDelivery.objects.get(id=pending_delivery.id)
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.last_error == (
        "Its job failed: Stalled 1 times: the worker running it stopped sending heartbeats."
    )


def test_a_delivery_whose_worker_process_kept_dying_ends_failed(
    settings, pending_delivery, django_capture_on_commit_callbacks
):
    settings.JOBS_MAX_STALLED = 0
    runner.claim(str(pending_delivery.job_id), timezone.now())

    with django_capture_on_commit_callbacks(execute=True):
        assert sweepers.recover_lost(str(pending_delivery.job_id), 1, "killed") is True

    delivery = WebhookDelivery.objects.get(id=pending_delivery.id)
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.last_error == "Its job failed: Stalled 1 times: its worker process died."


def test_the_catch_up_ends_a_delivery_whose_jobs_follow_up_was_lost_once(
    pending_delivery,
):
    # Cancelled, but the process died before the follow-up ran (no commit hooks here).
    job_services.cancel(Job.objects.get(id=pending_delivery.job_id))
    assert WebhookDelivery.objects.get(id=pending_delivery.id).status == DeliveryStatus.PENDING

    assert services.catch_up(timezone.now()) == 1
    assert services.catch_up(timezone.now()) == 0
    assert WebhookDelivery.objects.get(id=pending_delivery.id).status == DeliveryStatus.CANCELLED


def test_a_delivery_whose_job_was_retried_meanwhile_stays_pending(pending_delivery):
    job = Job.objects.get(id=pending_delivery.job_id)
    job_services.cancel(job)
    job_services.retry(job)

    assert services.settle_unsent([job.id]) == 0
    assert services.catch_up(timezone.now()) == 0
    assert WebhookDelivery.objects.get(id=pending_delivery.id).status == DeliveryStatus.PENDING
