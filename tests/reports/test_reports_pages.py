"""The reports page and its forms, without a browser: what works with no script."""

import pytest
from django.test import Client

from jobs.models import Job, Status
from reports import services
from reports.models import Report

pytestmark = pytest.mark.django_db


@pytest.fixture
def browser(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_anonymous_visitors_are_sent_to_the_login_page(client):
    response = client.get("/reports/")

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=/reports/")


def test_the_home_page_sends_a_signed_in_user_to_reports(browser):
    assert browser.get("/")["Location"] == "/reports/"


def test_generating_a_report_with_the_form_queues_it(browser, user):
    response = browser.post(
        "/reports/", {"kind": "job_activity", "title": "Spring", "start": "2026-03-01"}
    )

    assert response.status_code == 302
    report = Report.objects.get(owner=user)
    assert report.title == "Spring"
    assert report.parameters["start"] == "2026-03-01"
    assert report.job.status == Status.QUEUED
    page = browser.get("/reports/").content.decode()
    assert "Spring" in page and "badge-queued" in page and "Cancel" in page


def test_bad_form_input_is_shown_and_nothing_is_written(browser):
    response = browser.post(
        "/reports/", {"kind": "job_activity", "start": "2026-05-02", "end": "2026-05-01"}
    )

    assert response.status_code == 400
    assert "Must be on or before end." in response.content.decode()
    assert Report.objects.count() == 0 and Job.objects.count() == 0


def test_the_script_gets_a_row_back_when_it_generates_a_report(browser):
    response = browser.post(
        "/reports/", {"kind": "notes_export", "query": "garden"}, HTTP_X_REQUESTED_WITH="fetch"
    )

    assert response.status_code == 201
    html = response.content.decode()
    assert html.lstrip().startswith("<tr") and "Notes matching “garden”" in html


def test_cancel_and_retry_work_as_plain_forms_and_keep_the_filters(browser, user):
    report = services.request_report(user, "job_activity")

    cancelled = browser.post(f"/reports/{report.id}/cancel/?status=cancelled")
    assert cancelled["Location"] == "/reports/?status=cancelled"
    report.job.refresh_from_db()
    assert report.job.status == Status.CANCELLED
    assert "Retry" in browser.get("/reports/?status=cancelled").content.decode()

    browser.post(f"/reports/{report.id}/retry/")
    report.job.refresh_from_db()
    assert report.job.status == Status.QUEUED


def test_forms_need_the_csrf_token(user):
    report = services.request_report(user, "job_activity")
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(user)

    assert strict.post(f"/reports/{report.id}/cancel/").status_code == 403
    assert strict.post("/reports/", {"kind": "job_activity"}).status_code == 403


def test_the_list_filters_by_status_and_search(browser, user):
    services.request_report(user, "job_activity", title="Quarterly")
    monthly = services.request_report(user, "job_activity", title="Monthly")
    services.cancel_report(monthly)

    def titles(query: str) -> str:
        return browser.get(f"/reports/rows/{query}").content.decode()

    assert "Quarterly" in titles("?status=queued") and "Monthly" not in titles("?status=queued")
    assert "Monthly" in titles("?status=cancelled")
    assert "Monthly" in titles("?q=month") and "Quarterly" not in titles("?q=month")
    assert "Monthly" in titles(f"?q={monthly.id}")


def test_another_users_report_is_404(browser, other_user):
    theirs = services.request_report(other_user, "job_activity")

    for path in ("row/", "download/"):
        assert browser.get(f"/reports/{theirs.id}/{path}").status_code == 404
    for path in ("cancel/", "retry/"):
        assert browser.post(f"/reports/{theirs.id}/{path}").status_code == 404


def test_download_is_409_until_ready(browser, user):
    report = services.request_report(user, "job_activity")

    assert browser.get(f"/reports/{report.id}/download/").status_code == 409


def test_signing_in_with_the_form_and_out_again(client, user):
    from tests.conftest import PASSWORD

    wrong = client.post("/accounts/login/", {"username": "alice", "password": "nope"})
    assert wrong.status_code == 200 and "do not match" in wrong.content.decode()

    signed_in = client.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    assert signed_in["Location"] == "/reports/"
    assert client.get("/reports/").status_code == 200

    signed_out = client.post("/accounts/logout/")
    assert signed_out["Location"] == "/accounts/login/"
    assert client.get("/reports/").status_code == 302
