"""Each built-in job type runs to the end on a real worker; those the API offers are
created over HTTP by a caller who may create them."""

import pytest

from jobs import services
from jobs.models import Job, JobEffect

pytestmark = pytest.mark.worker


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


def test_it_reports_progress_while_sleeping(api, worker):
    created = api.post("/api/jobs/", {"type": "system.sleep", "payload": {"seconds": 2}}).json()

    seen = set()
    job = api.wait_for_status(created["id"], "running")
    while job["status"] == "running":
        seen.add(job["progress"])
        job = api.job(created["id"])
    assert job["status"] == "succeeded"
    assert job["result"] == {"slept": 2.0, "attempt": 1}
    assert any(0 < p < 100 for p in seen), seen
    milestones = [e["message"] for e in job["events"] if e["kind"] == "progress"]
    assert [m.split("%")[0] for m in milestones] == ["25", "50", "75"]


def test_it_sends_an_email_through_smtp_once(staff_api, worker, smtp_sink):
    created = staff_api.post(
        "/api/jobs/",
        {
            "type": "email.send",
            "payload": {"to": ["dana@example.com"], "subject": "Hello", "body": "Body text"},
        },
    ).json()

    job = staff_api.wait_for_status(created["id"], "succeeded")

    assert job["result"] == {"sent": True, "to": ["dana@example.com"]}
    assert len(smtp_sink.messages) == 1
    message = smtp_sink.messages[0]
    assert message["To"] == "dana@example.com"
    assert message["Subject"] == "Hello"
    assert "Body text" in message.get_payload()
    assert JobEffect.objects.get(job_id=created["id"], name="email").done


def test_it_sends_the_welcome_email(staff_api, worker, smtp_sink):
    job = services.enqueue(
        "email.welcome",
        {"email": "erin@example.com", "name": "Erin", "message": "Glad you came."},
    ).job

    staff_api.wait_for_status(str(job.id), "succeeded")

    [message] = smtp_sink.messages
    assert message["Subject"] == "Welcome to Jobsite"
    assert "Hello Erin" in message.get_payload()
    assert "Glad you came." in message.get_payload()


def test_a_retried_email_job_does_not_send_again(staff_api, worker, smtp_sink):
    created = staff_api.post(
        "/api/jobs/",
        {"type": "email.send", "payload": {"to": "f@example.com", "subject": "S", "body": "B"}},
    ).json()
    staff_api.wait_for_status(created["id"], "succeeded")
    # Force a second run of the same job, as a recovery after a crash would.
    Job.objects.filter(id=created["id"]).update(status="failed")
    assert staff_api.post(f"/api/jobs/{created['id']}/retry/").status_code == 202

    job = staff_api.wait_for_status(created["id"], "succeeded")

    assert job["result"]["sent"] is False
    assert len(smtp_sink.messages) == 1
