"""Who sees what of a job: everyone who may see a job sees its status; its payload and
result are its owner's, and other users' (staff included) only with the
view_job_payload permission; owners see a failed job's exception on one line, staff the
traceback."""

import traceback

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client

from jobs import services
from jobs.models import Job, Status
from reports import services as reports_services
from tests.conftest import PASSWORD
from tests.engine import run_to_the_end
from tests.support import InProcessApi

SECRET_PAYLOAD = {"seconds": 0.01}


def stored_error(message: str) -> str:
    """An error as jobs.runner stores it: the one-line summary, then the traceback."""
    try:
        raise ValueError(message)
    except ValueError as exc:
        detail = "".join(traceback.format_exception(exc))
    return f"ValueError: {message}\n\n{detail}"


def failed_job(owner, error: str) -> Job:
    job = services.enqueue("system.sleep", SECRET_PAYLOAD, owner=owner).job
    Job.objects.filter(id=job.id).update(status=Status.FAILED, error=error, result={"kept": 1})
    return Job.objects.get(id=job.id)


@pytest.fixture
def payload_reader(db):
    user = get_user_model().objects.create_user("dave", "dave@example.com", PASSWORD, is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_job_payload"))
    with InProcessApi(user) as client:
        yield client


@pytest.fixture
def superuser_api(db):
    superuser = get_user_model().objects.create_superuser("erin", "erin@example.com", PASSWORD)
    with InProcessApi(superuser) as client:
        yield client


def test_an_owner_sees_the_exception_on_one_line_and_staff_the_traceback(api, staff_api, user):
    created = services.enqueue("system.sleep", {"seconds": 0, "fail_times": 10}, owner=user).job
    assert run_to_the_end(created)[-1] == "failed"

    mine = api.job(str(created.id))
    seen_by_staff = staff_api.job(str(created.id))

    assert mine["error"] == "DemoFailure: Asked to fail attempt 3"
    assert "Traceback" not in str(mine)  # nor in the events' messages
    assert [e["message"] for e in mine["events"] if e["kind"] == "failed"] == [mine["error"]]
    assert seen_by_staff["error"].startswith("DemoFailure: Asked to fail attempt 3\n\n")
    assert "Traceback (most recent call last)" in seen_by_staff["error"]
    [event] = [e for e in seen_by_staff["events"] if e["kind"] == "failed"]
    assert "Traceback" in event["message"]


def test_a_long_exception_message_is_shortened_to_one_line(api, user):
    job = failed_job(user, stored_error("x" * 5000 + "\nsecond line"))

    error = api.job(str(job.id))["error"]

    assert error.startswith("ValueError: xxx") and error.endswith("…")
    assert len(error) == 300 and "\n" not in error


def test_the_list_and_the_actions_show_owners_one_line_too(api, user):
    job = failed_job(user, stored_error("disk full"))

    [listed] = api.get("/api/jobs/").json()["results"]
    retried = api.post(f"/api/jobs/{job.id}/retry/").json()

    assert listed["error"] == "ValueError: disk full"
    assert retried["id"] == str(job.id) and "Traceback" not in retried["error"]


def test_owners_see_their_own_payload_and_result(api, user):
    job = failed_job(user, "ValueError: no")

    shown = api.job(str(job.id))

    assert (
        shown["payload"] == job.payload
        and job.payload["seconds"] == 0.01
        and shown["result"] == {"kept": 1}
    )


def test_staff_see_other_users_jobs_but_not_their_payloads_or_results(
    api, staff_api, staff_user, user
):
    staff_user.user_permissions.add(
        *Permission.objects.filter(codename__in=["retry_job", "cancel_job"])
    )
    job = failed_job(user, stored_error("no"))

    detail = staff_api.job(str(job.id))
    listed = {j["id"]: j for j in staff_api.get("/api/jobs/").json()["results"]}[str(job.id)]
    retried = staff_api.post(f"/api/jobs/{job.id}/retry/").json()
    cancelled = staff_api.post(f"/api/jobs/{job.id}/cancel/").json()

    for shown in (detail, listed, retried, cancelled):
        assert shown["id"] == str(job.id) and shown["owner"] == "alice"
        assert shown["payload"] is None and shown["result"] is None
    assert detail["status"] == "failed" and cancelled["status"] == "cancelled"


def test_staff_need_a_permission_to_cancel_or_retry_another_users_job(api, staff_api, user):
    failed = failed_job(user, stored_error("no"))
    queued = services.enqueue("system.sleep", SECRET_PAYLOAD, owner=user).job

    retried = staff_api.post(f"/api/jobs/{failed.id}/retry/")
    cancelled = staff_api.post(f"/api/jobs/{queued.id}/cancel/")
    deleted = staff_api.delete(f"/api/jobs/{queued.id}/")

    for response in (retried, cancelled, deleted):
        assert response.status_code == 403
        assert response.json()["code"] == "permission_denied"
    assert Job.objects.get(id=failed.id).status == Status.FAILED
    assert Job.objects.get(id=queued.id).status == Status.QUEUED
    assert api.post(f"/api/jobs/{queued.id}/cancel/").status_code == 200
    assert api.post(f"/api/jobs/{failed.id}/retry/").status_code == 202


def test_staff_see_their_own_jobs_payloads(staff_api, staff_user):
    job = failed_job(staff_user, "ValueError: no")

    assert staff_api.job(str(job.id))["payload"] == job.payload


def test_the_payload_permission_shows_other_users_payloads(api, user, payload_reader):
    job = failed_job(user, "ValueError: no")

    shown = payload_reader.job(str(job.id))
    [listed] = payload_reader.get("/api/jobs/").json()["results"]

    assert shown["payload"] == listed["payload"] == job.payload
    assert shown["result"] == {"kept": 1}


def test_a_superuser_sees_every_payload(api, user, superuser_api):
    job = failed_job(user, "ValueError: no")

    assert superuser_api.job(str(job.id))["payload"] == job.payload


def test_system_jobs_payloads_need_the_permission_too(staff_api, payload_reader):
    job = services.enqueue("system.sleep", SECRET_PAYLOAD).job  # no owner

    assert staff_api.job(str(job.id))["payload"] is None
    assert payload_reader.job(str(job.id))["payload"] == job.payload


def test_the_reports_page_and_api_show_a_failed_reports_error_on_one_line(api, user):
    report = reports_services.request_report(user, "job_activity", {}, "Spring")
    Job.objects.filter(id=report.job_id).update(
        status=Status.FAILED, error=stored_error("renderer crashed")
    )
    browser = Client()
    browser.force_login(user)

    page = browser.get("/reports/").content.decode()
    row = browser.get(f"/reports/{report.id}/row/").content.decode()
    listed = api.get("/api/reports/").json()["results"][0]
    detail = api.get(f"/api/reports/{report.id}/").json()

    for html in (page, row):
        assert "ValueError: renderer crashed" in html and "Traceback" not in html
    assert listed["error"] == detail["error"] == "ValueError: renderer crashed"
