"""Task reminders: due within the hour (give or take five minutes) and overdue, once
per task and kind; done tasks are skipped; one owner's failed e-mail keeps nobody else
from theirs."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.utils import timezone

from jobs import services as jobs_services
from notes import services
from notes.models import Task
from tests.engine import run

NOW = timezone.now().replace(microsecond=0)


def task(owner, title: str, due_in: timedelta | None, done: bool = False) -> Task:
    return Task.objects.create(
        owner=owner, title=title, due_at=NOW + due_in if due_in is not None else None, done=done
    )


@pytest.mark.django_db
def test_reminders_at_the_edges_of_the_window(user):
    for minutes in (59, 60, 65, 66):
        task(user, f"in {minutes} min", timedelta(minutes=minutes))

    result = services.send_task_reminders(now=NOW)

    assert result == {"emails": 1, "due_soon": 3, "overdue": 0}
    [message] = mail.outbox
    assert message.to == [user.email]
    assert "in 59 min" in message.body and "in 60 min" in message.body
    assert "in 65 min" in message.body and "in 66 min" not in message.body


@pytest.mark.django_db
def test_overdue_tasks_are_reminded_and_done_ones_skipped(user, other_user):
    task(user, "late report", timedelta(hours=-2))
    task(user, "finished", timedelta(minutes=-5), done=True)
    task(user, "someday", None)
    task(other_user, "bob's call", timedelta(minutes=30))

    result = services.send_task_reminders(now=NOW)

    assert result == {"emails": 2, "due_soon": 1, "overdue": 1}
    by_recipient = {m.to[0]: m for m in mail.outbox}
    assert "Overdue:" in by_recipient[user.email].body
    assert "late report" in by_recipient[user.email].body
    assert "finished" not in by_recipient[user.email].body
    assert "bob's call" in by_recipient[other_user.email].body


@pytest.mark.django_db
def test_a_second_run_sends_nothing_again(user):
    soon = task(user, "standup", timedelta(minutes=30))
    task(user, "late", timedelta(minutes=-30))
    services.send_task_reminders(now=NOW)

    again = services.send_task_reminders(now=NOW + timedelta(minutes=5))

    assert again == {"emails": 0, "due_soon": 0, "overdue": 0}
    assert len(mail.outbox) == 1
    soon.refresh_from_db()
    assert soon.due_soon_sent_at == NOW
    # Once due, the same task earns its overdue reminder, once.
    assert services.send_task_reminders(now=NOW + timedelta(minutes=31))["overdue"] == 1
    assert services.send_task_reminders(now=NOW + timedelta(minutes=40))["overdue"] == 0


@pytest.mark.django_db
def test_moving_the_due_time_earns_a_new_reminder(user):
    standup = task(user, "standup", timedelta(minutes=30))
    services.send_task_reminders(now=NOW)

    services.update_task(standup, due_at=NOW + timedelta(minutes=50))

    assert services.send_task_reminders(now=NOW)["due_soon"] == 1


def use_smtp(settings, sink) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_USE_TLS = "127.0.0.1", sink.port, False


def recipients(sink) -> list[str]:
    return sorted(message["To"] for message in sink.messages)


@pytest.fixture
def third_user(db):
    return get_user_model().objects.create_user("dave", "dave@example.com", "x-password-1")


@pytest.mark.django_db
def test_a_refused_address_does_not_keep_the_other_owners_from_their_reminders(
    user, other_user, third_user, smtp_sink, settings
):
    use_smtp(settings, smtp_sink)
    smtp_sink.refused = {other_user.email}
    alices = [task(user, "standup", timedelta(minutes=30)), task(user, "late", timedelta(hours=-1))]
    bobs = task(other_user, "bob's call", timedelta(minutes=20))
    daves = task(third_user, "dave's review", timedelta(minutes=-10))

    with pytest.raises(services.RemindersNotSent) as failure:
        services.send_task_reminders(now=NOW)

    # Bob comes between the others: the owner after him is reminded all the same.
    assert failure.value.failed_owner_ids == [other_user.id]
    assert recipients(smtp_sink) == [user.email, third_user.email]
    for t in [*alices, bobs, daves]:
        t.refresh_from_db()
    assert alices[0].due_soon_sent_at == NOW and alices[1].overdue_sent_at == NOW
    assert daves.overdue_sent_at == NOW
    assert bobs.due_soon_sent_at is None

    # The job's retry, once the address is accepted again, reminds Bob alone, once.
    smtp_sink.refused = set()
    retry = services.send_task_reminders(now=NOW + timedelta(minutes=1))

    assert retry == {"emails": 1, "due_soon": 1, "overdue": 0}
    assert recipients(smtp_sink) == sorted([user.email, other_user.email, third_user.email])
    assert "bob's call" in smtp_sink.messages[-1].get_payload()
    assert services.send_task_reminders(now=NOW + timedelta(minutes=2))["emails"] == 0
    assert len(smtp_sink.messages) == 3


@pytest.mark.django_db
def test_an_unreachable_mail_server_stops_the_run_and_leaves_every_task_unclaimed(
    user, other_user, settings
):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 9, 2
    standup = task(user, "standup", timedelta(minutes=30))
    call = task(other_user, "bob's call", timedelta(minutes=-5))

    with pytest.raises(OSError):
        services.send_task_reminders(now=NOW)

    standup.refresh_from_db()
    call.refresh_from_db()
    assert standup.due_soon_sent_at is None
    # Bob was never reached: nothing of his was claimed, so a crash here strands nothing.
    assert call.overdue_sent_at is None


def test_the_reminder_job_retries_for_the_owner_whose_address_was_refused(
    user, other_user, smtp_sink, settings
):
    use_smtp(settings, smtp_sink)
    smtp_sink.refused = {user.email}
    due = timezone.now() + timedelta(minutes=20)
    alices = Task.objects.create(owner=user, title="pay rent", due_at=due)
    Task.objects.create(owner=other_user, title="call mum", due_at=due)

    job = jobs_services.enqueue("notes.task_reminders").job

    assert run(job) == "retry"
    job.refresh_from_db()
    assert job.attempts == 1 and job.status == "queued" and bool(job.error)
    assert "RemindersNotSent" in job.error and str(user.id) in job.error
    assert recipients(smtp_sink) == [other_user.email]
    alices.refresh_from_db()
    assert alices.due_soon_sent_at is None

    smtp_sink.refused = set()

    assert run(job, now=job.run_at) == "succeeded"  # once its back-off has passed
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    assert job.attempts == 2
    assert recipients(smtp_sink) == sorted([user.email, other_user.email])
    assert "pay rent" in smtp_sink.messages[-1].get_payload()


def test_tasks_api_is_owner_scoped(api, other_api):
    created = api.post(
        "/api/notes/tasks/", {"title": "water plants", "due_at": "2030-01-01T09:00:00Z"}
    )
    assert created.status_code == 201, created.text
    task_id = created.json()["id"]

    assert other_api.get(f"/api/notes/tasks/{task_id}/").status_code == 404
    done = api.request("PATCH", f"/api/notes/tasks/{task_id}/", json={"done": True})
    assert done.status_code == 200 and done.json()["done"] is True
    assert api.post("/api/notes/tasks/", {"due_at": "tomorrow"}).status_code == 400
