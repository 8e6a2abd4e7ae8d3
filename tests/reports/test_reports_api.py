"""The reports API: ask for a report, watch it, download a real PDF, cancel, retry."""

import io
import re
import uuid
from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone
from pypdf import PdfReader

from jobs import registry
from jobs.models import Job, Status
from notes.models import Page
from reports.models import Report
from tests.engine import run
from tests.support import wait_for


def pdf_text(content: bytes) -> str:
    reader = PdfReader(io.BytesIO(content))
    return "\n".join(page.extract_text() for page in reader.pages)


def wait_for_report(api, report_id: str, *statuses: str, timeout: float = 60) -> dict:
    seen: dict = {}

    def reached() -> bool:
        seen.update(api.get(f"/api/reports/{report_id}/").json())
        return seen["status"] in statuses

    wait_for(reached, timeout=timeout, what=f"report {report_id} to be {'/'.join(statuses)}")
    return seen


def run_report(report_id: str) -> str:
    """Run the report's job in the test process; its outcome."""
    return run(Report.objects.get(id=report_id).job_id)


def past_job(owner, type_name: str, status: str, seconds: float, error: str = "") -> Job:
    finished = timezone.now() - timedelta(hours=1)
    return Job.objects.create(
        owner=owner,
        type=type_name,
        status=status,
        error=error,
        started_at=finished - timedelta(seconds=seconds),
        finished_at=finished,
    )


@pytest.mark.worker
def test_a_job_activity_report_is_a_pdf_with_its_title_and_figures(api, user, worker, smtp_sink):
    for seconds in (1, 2, 12.5):
        past_job(user, "system.noop", Status.SUCCEEDED, seconds)
    past_job(user, "email.send", Status.FAILED, 3, error="SMTP server refused the sender")
    past_job(user, "email.send", Status.FAILED, 4, error="SMTP server refused the sender")

    response = api.post("/api/reports/", {"kind": "job_activity", "title": "Weekly activity"})

    assert response.status_code == 202, response.text
    created = response.json()
    assert created["status"] == "queued" and created["download_url"] is None
    report = wait_for_report(api, created["id"], "succeeded", "failed")
    assert report["status"] == "succeeded", report["error"]
    assert report["progress"] == 100

    download = api.get(f"/api/reports/{created['id']}/download/")
    assert download.status_code == 200
    assert download.headers["Content-Type"] == "application/pdf"
    today = timezone.localdate().isoformat()
    assert f'filename="weekly-activity-{today}.pdf"' in download.headers["Content-Disposition"]
    text = pdf_text(download.content)
    assert "Weekly activity" in text
    assert re.search(r"system\.noop\s+3\s+3\s+0\s+0", text), text
    assert re.search(r"email\.send\s+2\s+0\s+2\s+0", text), text
    assert re.search(r"SMTP server refused the sender\s+2", text), text
    assert "12.50" in text  # the slowest job
    assert report["page_count"] == len(PdfReader(io.BytesIO(download.content)).pages)
    assert report["size"] == len(download.content)

    [mail] = smtp_sink.messages
    assert mail["To"] == user.email
    assert f"/reports/{created['id']}/download/" in mail.get_payload()


def test_a_notes_export_holds_the_owners_pages(api, user, other_user):
    Page.objects.create(owner=user, title="Garden plan", content="# Beds\n\n* **tomatoes**")
    Page.objects.create(owner=user, title="Reading list", content="Dune")
    Page.objects.create(owner=other_user, title="Bob's secret", content="hidden")

    created = api.post("/api/reports/", {"kind": "notes_export"}).json()
    run_report(created["id"])
    report = api.get(f"/api/reports/{created['id']}/").json()

    assert report["status"] == "succeeded", report["error"]
    assert report["title"] == "All notes"
    text = pdf_text(api.get(f"/api/reports/{created['id']}/download/").content)
    assert "Garden plan" in text and "tomatoes" in text and "Reading list" in text
    assert "Bob's secret" not in text and "hidden" not in text
    assert report["page_count"] >= 2  # one section per page


@pytest.mark.parametrize(
    "body, field, words",
    [
        ({"kind": "weather"}, "kind", "Unknown kind 'weather'. Known: job_activity, notes_export"),
        (
            {"kind": "job_activity", "parameters": {"start": "2026-05-02", "end": "2026-05-01"}},
            "parameters",
            "on or before end",
        ),
        (
            {"kind": "job_activity", "parameters": {"start": "2024-01-01", "end": "2026-01-01"}},
            "parameters",
            "at most 366 days",
        ),
        ({"kind": "job_activity", "parameters": {"start": "soon"}}, "parameters", "Date"),
        ({"kind": "job_activity", "parameters": [1, 2]}, "parameters", "JSON object"),
        ({"kind": "job_activity", "title": "x" * 201}, "title", "200 characters"),
        ({}, "kind", "required"),
    ],
)
def test_bad_input_is_a_400_naming_the_field_and_writes_nothing(api, body, field, words):
    response = api.post("/api/reports/", body)

    assert response.status_code == 400, response.text
    errors = response.json()["errors"]
    assert field in errors
    assert words in str(errors[field])
    assert Report.objects.count() == 0
    assert Job.objects.count() == 0


def test_download_is_409_until_the_report_is_ready(api):
    created = api.post("/api/reports/", {"kind": "job_activity"}).json()

    response = api.get(f"/api/reports/{created['id']}/download/")

    assert response.status_code == 409
    assert response.json()["status"] == "queued"


def test_another_users_report_is_404_everywhere(api, other_api):
    report_id = api.post("/api/reports/", {"kind": "job_activity"}).json()["id"]

    for method, path in [
        ("GET", f"/api/reports/{report_id}/"),
        ("GET", f"/api/reports/{report_id}/status/"),
        ("GET", f"/api/reports/{report_id}/download/"),
        ("POST", f"/api/reports/{report_id}/cancel/"),
        ("POST", f"/api/reports/{report_id}/retry/"),
        ("DELETE", f"/api/reports/{report_id}/"),
    ]:
        assert other_api.request(method, path).status_code == 404, (method, path)
    assert other_api.get("/api/reports/").json()["results"] == []
    assert api.get(f"/api/reports/{uuid.uuid4()}/").status_code == 404
    assert api.get("/api/reports/not-a-uuid/").status_code == 404


def test_cancelling_is_idempotent_and_a_finished_report_cannot_be_cancelled(api):
    report_id = api.post("/api/reports/", {"kind": "job_activity"}).json()["id"]
    ready_id = api.post("/api/reports/", {"kind": "job_activity"}).json()["id"]
    Job.objects.filter(report__id=ready_id).update(status=Status.SUCCEEDED)

    cancelled = api.post(f"/api/reports/{report_id}/cancel/")
    again = api.delete(f"/api/reports/{report_id}/")
    too_late = api.post(f"/api/reports/{ready_id}/cancel/")

    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    assert too_late.status_code == 409 and too_late.json()["code"] == "not_cancellable"


def test_a_cancelled_report_can_be_retried_and_then_completes(api):
    report_id = api.post("/api/reports/", {"kind": "job_activity"}).json()["id"]
    api.post(f"/api/reports/{report_id}/cancel/")
    assert api.post(f"/api/reports/{report_id}/download/").status_code == 405

    retried = api.post(f"/api/reports/{report_id}/retry/")
    assert retried.status_code == 202 and retried.json()["status"] == "queued"

    assert run_report(report_id) == "succeeded"
    assert api.get(f"/api/reports/{report_id}/").json()["status"] == "succeeded"
    assert api.post(f"/api/reports/{report_id}/retry/").status_code == 409


def test_a_report_run_again_after_a_failure_emails_its_owner_only_once(api):
    report_id = api.post("/api/reports/", {"kind": "job_activity"}).json()["id"]
    assert run_report(report_id) == "succeeded"
    first_file = Report.objects.get(id=report_id).file.name
    # As if the job had failed after e-mailing, and its owner retried it.
    Job.objects.filter(report__id=report_id).update(status=Status.FAILED)

    assert api.post(f"/api/reports/{report_id}/retry/").status_code == 202
    assert run_report(report_id) == "succeeded"

    assert len(mail.outbox) == 1
    report = Report.objects.get(id=report_id)
    assert report.job.events.filter(kind="started").count() == 2
    assert report.file.storage.exists(report.file.name)
    if report.file.name != first_file:
        assert not report.file.storage.exists(first_file)


def test_status_is_small_and_answers_304_while_nothing_changed(api):
    report_id = api.post("/api/reports/", {"kind": "job_activity"}).json()["id"]

    first = api.get(f"/api/reports/{report_id}/status/")
    unchanged = api.get(
        f"/api/reports/{report_id}/status/", headers={"If-None-Match": first.headers["ETag"]}
    )
    api.post(f"/api/reports/{report_id}/cancel/")
    changed = api.get(
        f"/api/reports/{report_id}/status/", headers={"If-None-Match": first.headers["ETag"]}
    )

    assert set(first.json()) == {"id", "status", "progress", "message", "updated_at", "line"}
    assert first.json()["line"]["ahead"] == 0
    assert unchanged.status_code == 304
    assert changed.status_code == 200 and changed.json()["status"] == "cancelled"


def test_the_list_filters_by_status_and_by_id_or_title(api):
    api.post("/api/reports/", {"kind": "job_activity", "title": "March"})
    april = api.post("/api/reports/", {"kind": "job_activity", "title": "April"}).json()
    api.post(f"/api/reports/{april['id']}/cancel/")

    def titles(query: str) -> list[str]:
        response = api.get(f"/api/reports/{query}")
        assert response.status_code == 200, response.text
        return [r["title"] for r in response.json()["results"]]

    assert titles("") == ["April", "March"]
    assert titles("?status=cancelled") == ["April"]
    assert titles("?status=queued") == ["March"]
    assert titles("?q=marc") == ["March"]
    assert titles(f"?q={april['id']}") == ["April"]
    assert api.get("/api/reports/?status=lost").status_code == 400


def test_report_jobs_run_on_their_own_queue_with_three_attempts_backing_off_from_2s():
    generate = registry.get("reports.generate")

    assert (generate.queue, generate.max_attempts, generate.backoff_base) == (
        "reports",
        3,
        2.0,
    )


def test_a_users_bulk_of_reports_waits_its_turn_and_does_not_hold_back_another_users(
    user, other_user, settings
):
    from reports.services import request_report

    cap = registry.get("reports.generate").limits.owner_concurrency
    assert cap == settings.REPORTS_RUNNING_PER_OWNER
    mine = [request_report(user, "job_activity") for _ in range(cap + 1)]
    theirs = request_report(other_user, "job_activity")
    # The first `cap` of the user's reports are rendering on other workers.
    Job.objects.filter(id__in=[r.job_id for r in mine[:cap]]).update(
        status=Status.RUNNING, started_at=timezone.now()
    )

    assert run_report(str(mine[cap].id)) == "held"
    waiting = Job.objects.get(id=mine[cap].job_id)
    assert (waiting.status, waiting.held) == (Status.QUEUED, "concurrency")
    assert f"{cap} of reports.generate per owner" in waiting.events.get(kind="held").message
    assert run_report(str(theirs.id)) == "succeeded"
