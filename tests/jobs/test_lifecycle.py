"""Each built-in job type runs to the end; those the API offers are created over HTTP by
a caller who may create them. One runs on a real worker, the rest in the test process."""

import pytest
from django.core import mail

from jobs import services
from jobs.models import Job, JobEffect
from tests.engine import run


@pytest.mark.worker
def test_it_runs_a_noop_job_to_success(api, worker):
    response = api.post("/api/jobs/", {"type": "system.noop"})
    assert response.status_code == 202, response.text
    created = response.json()
    assert created["status"] == "queued"

    job = api.wait_for_status(created["id"], "succeeded")

    assert job["attempts"] == 1
    assert job["progress"] == 100
    assert job["started_at"] and job["finished_at"]
    kinds = [e["kind"] for e in job["events"]]
    assert kinds == ["created", "dispatched", "started", "succeeded"]


def test_it_reports_progress_while_sleeping(api):
    created = api.post("/api/jobs/", {"type": "system.sleep", "payload": {"seconds": 0.4}}).json()

    assert run(created["id"]) == "succeeded"

    job = api.job(created["id"])
    assert job["result"] == {"slept": 0.4, "attempt": 1}
    assert job["progress"] == 100
    milestones = [e["message"] for e in job["events"] if e["kind"] == "progress"]
    assert [m.split("%")[0] for m in milestones] == ["25", "50", "75"]


def test_it_sends_an_email_through_smtp_once(staff_api, smtp_sink, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_USE_TLS = (
        "127.0.0.1",
        smtp_sink.port,
        False,
    )
    created = staff_api.post(
        "/api/jobs/",
        {
            "type": "email.send",
            "payload": {"to": ["dana@example.com"], "subject": "Hello", "body": "Body text"},
        },
    ).json()

    assert run(created["id"]) == "succeeded"

    job = staff_api.job(created["id"])
    assert job["result"] == {"sent": True, "to": ["dana@example.com"]}
    assert len(smtp_sink.messages) == 1
    message = smtp_sink.messages[0]
    assert message["To"] == "dana@example.com"
    assert message["Subject"] == "Hello"
    assert "Body text" in message.get_payload()
    assert JobEffect.objects.get(job_id=created["id"], name="email").done


def test_it_sends_the_welcome_email(transactional_db):
    job = services.enqueue(
        "email.welcome",
        {"email": "erin@example.com", "name": "Erin", "message": "Glad you came."},
    ).job

    assert run(job) == "succeeded"

    [message] = mail.outbox
    assert message.to == ["erin@example.com"]
    assert message.subject == "Welcome to Jobsite"
    assert "Hello Erin" in message.body
    assert "Glad you came." in message.body


def test_a_retried_email_job_does_not_send_again(staff_api):
    created = staff_api.post(
        "/api/jobs/",
        {"type": "email.send", "payload": {"to": "f@example.com", "subject": "S", "body": "B"}},
    ).json()
    assert run(created["id"]) == "succeeded"
    # Force a second run of the same job, as a recovery after a crash would.
    Job.objects.filter(id=created["id"]).update(status="failed")
    assert staff_api.post(f"/api/jobs/{created['id']}/retry/").status_code == 202

    assert run(created["id"]) == "succeeded"

    assert staff_api.job(created["id"])["result"]["sent"] is False
    assert len(mail.outbox) == 1
