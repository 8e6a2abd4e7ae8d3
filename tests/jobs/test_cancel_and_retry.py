"""Cancellation of queued and running jobs, and manual retry. Jobs run in the test
process (tests.engine), not on a worker."""

from jobs import services
from jobs.models import Job, Status
from tests.engine import event_kinds, job_type, reloaded, run, run_to_the_end


def test_a_queued_job_is_cancelled_at_once(api):
    created = api.post("/api/jobs/", {"type": "system.sleep", "payload": {"seconds": 5}}).json()

    response = api.post(f"/api/jobs/{created['id']}/cancel/")

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["finished_at"]
    assert Job.objects.get(id=created["id"]).status == "cancelled"


def test_delete_cancels_too(api):
    created = api.post("/api/jobs/", {"type": "system.noop"}).json()

    response = api.delete(f"/api/jobs/{created['id']}/")

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"


def test_a_queued_jobs_message_runs_nothing_once_it_is_cancelled(transactional_db):
    job = services.enqueue("system.sleep", {"seconds": 0}).job
    services.cancel(job)

    assert run(job) == "duplicate"

    assert reloaded(job).status == "cancelled"
    assert event_kinds(job) == ["created", "dispatched", "cancelled"]


def test_a_running_job_stops_at_its_next_checkpoint(api, user):
    cancelled = []

    def handler(ctx):
        # The owner cancels while the job runs.
        cancelled.append(api.post(f"/api/jobs/{ctx.job.id}/cancel/"))
        assert Job.objects.get(id=ctx.job.id).status == Status.RUNNING
        ctx.progress(50, "halfway")
        return "not reached"

    with job_type(handler) as jt:
        created = services.enqueue(jt.name, owner=user).job
        assert run(created) == "cancelled"

    [response] = cancelled
    assert response.status_code == 200
    assert response.json()["cancel_requested"] is True
    job = api.job(str(created.id))
    assert job["status"] == "cancelled"
    assert job["progress"] < 100
    assert job["attempts"] == 1
    kinds = [e["kind"] for e in job["events"]]
    assert kinds[-2:] == ["cancel_requested", "cancelled"]


def test_a_checkpoint_without_progress_stops_a_cancelled_job_too(transactional_db):
    def handler(ctx):
        services.cancel(Job.objects.get(id=ctx.job.id))
        ctx.check_cancelled()

    with job_type(handler) as jt:
        job = services.enqueue(jt.name).job
        assert run(job) == "cancelled"


def test_cancelling_a_finished_job_is_a_409(api):
    created = api.post("/api/jobs/", {"type": "system.noop"}).json()
    assert run(created["id"]) == "succeeded"

    response = api.post(f"/api/jobs/{created['id']}/cancel/")

    assert response.status_code == 409
    assert response.json()["code"] == "not_cancellable"
    assert response.json()["status"] == "succeeded"


def test_a_failed_job_is_retried_with_a_fresh_round_of_attempts(api):
    created = api.post(
        "/api/jobs/", {"type": "system.sleep", "payload": {"seconds": 0, "fail_times": 3}}
    ).json()
    assert run_to_the_end(created["id"]) == ["retry", "retry", "failed"]
    # With the count reset, attempt 1 fails again and attempt 2 succeeds; a count
    # carried over would start at 4 and succeed at once.
    Job.objects.filter(id=created["id"]).update(payload={"seconds": 0, "fail_times": 1})

    response = api.post(f"/api/jobs/{created['id']}/retry/")

    assert response.status_code == 202
    assert response.json()["status"] == "queued"
    assert response.json()["attempts"] == 0
    assert response.json()["error"] == ""
    assert run_to_the_end(created["id"]) == ["retry", "succeeded"]
    job = api.job(created["id"])
    assert job["attempts"] == 2
    assert "retried" in [e["kind"] for e in job["events"]]


def test_a_cancelled_job_can_be_retried(api):
    created = api.post("/api/jobs/", {"type": "system.sleep", "payload": {"seconds": 0.2}}).json()
    assert run(created["id"]) == "succeeded"
    Job.objects.filter(id=created["id"]).update(status="cancelled")

    assert api.post(f"/api/jobs/{created['id']}/retry/").status_code == 202
    assert run(created["id"]) == "succeeded"
    assert api.job(created["id"])["attempts"] == 1


def test_retrying_a_queued_job_is_a_409(api):
    created = api.post("/api/jobs/", {"type": "system.noop"}).json()

    response = api.post(f"/api/jobs/{created['id']}/retry/")

    assert response.status_code == 409
    assert response.json()["code"] == "not_retryable"
