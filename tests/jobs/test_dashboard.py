"""The staff dashboard: totals, types, recent and failed jobs, retry one or many (with
the retry_job permission)."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.db import connection, transaction
from django.test import Client
from django.utils import timezone

from jobs import dashboard, services
from jobs.models import Job, Status

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(staff_user) -> Client:
    """A staff member who may retry jobs."""
    staff_user.user_permissions.add(Permission.objects.get(codename="retry_job"))
    client = Client()
    client.force_login(staff_user)
    return client


@pytest.fixture
def onlooker(staff_user) -> Client:
    """A staff member without the retry_job permission."""
    client = Client()
    client.force_login(staff_user)
    return client


def failed_job(type_name: str = "system.noop", error: str = "Boom") -> Job:
    payload = (
        {"to": ["a@example.com"], "subject": "s", "body": "b"}
        if type_name == "email.send"
        else None
    )
    job = services.enqueue(type_name, payload).job
    Job.objects.filter(id=job.id).update(status=Status.FAILED, error=error, attempts=3)
    job.refresh_from_db()
    return job


def test_anonymous_visitors_go_to_the_login_page(client):
    response = client.get("/dashboard/")

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=/dashboard/")
    assert client.get("/dashboard/data/").status_code == 302


def test_a_user_who_is_not_staff_gets_403(client, user):
    client.force_login(user)

    assert client.get("/dashboard/").status_code == 403
    assert client.get("/dashboard/data/").status_code == 403
    assert client.post("/dashboard/retry-failed/").status_code == 403


def test_totals_and_per_type_counts_match_the_jobs(staff):
    for _ in range(3):
        services.enqueue("system.noop")
    failed_job("email.send", error="Mailbox full")
    running = services.enqueue("system.sleep", {"seconds": 1}).job
    Job.objects.filter(id=running.id).update(status=Status.RUNNING)

    data = staff.get("/dashboard/data/").json()

    assert data["totals"] == {
        "queued": 3,
        "running": 1,
        "succeeded": 0,
        "failed": 1,
        "cancelled": 0,
        "expired": 0,
    }
    by_type = {row["type"]: row for row in data["by_type"]}
    assert by_type["system.noop"]["queued"] == 3
    assert by_type["email.send"]["failed"] == 1
    assert [j["error"] for j in data["failed"]] == ["Mailbox full"]
    assert len(data["recent"]) == 5
    assert data["recent"][0]["admin_url"] == f"/admin/jobs/job/{running.id}/change/"

    page = staff.get("/dashboard/").content.decode()
    assert "Mailbox full" in page and 'data-total="queued">3<' in page
    assert "http://127.0.0.1:5555/" in page and "/admin/jobs/job/" in page


def test_expired_jobs_are_counted_in_their_own_column(staff):
    expired = services.enqueue("system.noop").job
    Job.objects.filter(id=expired.id).update(status=Status.EXPIRED)

    data = staff.get("/dashboard/data/").json()

    assert data["totals"]["expired"] == 1
    assert {row["type"]: row["expired"] for row in data["by_type"]} == {"system.noop": 1}
    page = staff.get("/dashboard/").content.decode()
    row = page.split('id="type-rows">')[1].split("</tr>")[0]
    assert row.count('<td class="num">') == 6
    assert row.rstrip().endswith('<td class="num">1</td>')


def test_the_failed_list_shows_the_latest_failures_first(staff):
    now = timezone.now()
    for hours_ago, error in [(3, "oldest"), (1, "newest"), (2, "middle")]:
        job = failed_job(error=error)
        Job.objects.filter(id=job.id).update(finished_at=now - timedelta(hours=hours_ago))

    data = staff.get("/dashboard/data/").json()

    assert [j["error"] for j in data["failed"]] == ["newest", "middle", "oldest"]


def test_the_failed_list_reads_an_index_in_order_without_sorting_the_failures():
    if connection.vendor != "postgresql":
        pytest.skip("reads PostgreSQL's query plan")
    for _ in range(3):
        failed_job()
    with transaction.atomic(), connection.cursor() as cursor:
        # A table this small would be read whole; the plan for a large one is wanted.
        cursor.execute("SET LOCAL enable_seqscan = off")
        plan = dashboard.latest_failed().explain()

    assert "job_failed_finished" in plan and "Sort" not in plan, plan


def test_one_click_retry_puts_a_failed_job_back_in_the_queue(staff):
    job = failed_job()

    response = staff.post(f"/dashboard/jobs/{job.id}/retry/")

    assert response.status_code == 302
    job.refresh_from_db()
    assert job.status == Status.QUEUED and job.attempts == 0
    assert job.events.filter(kind="retried").exists()
    again = staff.post(f"/dashboard/jobs/{job.id}/retry/", HTTP_X_REQUESTED_WITH="fetch")
    assert again.status_code == 409


def test_bulk_retry_retries_the_selected_or_else_every_failed_job(staff):
    first, second, third = failed_job(), failed_job(), failed_job()

    selected = staff.post(
        "/dashboard/retry-failed/", {"job": [str(first.id)]}, HTTP_X_REQUESTED_WITH="fetch"
    )
    assert selected.json()["retried"] == 1
    assert Job.objects.get(id=second.id).status == Status.FAILED

    everything = staff.post("/dashboard/retry-failed/", HTTP_X_REQUESTED_WITH="fetch")
    assert everything.json()["retried"] == 2
    assert not Job.objects.filter(status=Status.FAILED).exists()
    assert Job.objects.get(id=third.id).status == Status.QUEUED


def test_retrying_needs_the_csrf_token(staff_user):
    job = failed_job()
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(staff_user)

    assert strict.post(f"/dashboard/jobs/{job.id}/retry/").status_code == 403
    assert strict.post("/dashboard/retry-failed/").status_code == 403
    assert Job.objects.get(id=job.id).status == Status.FAILED


def test_staff_without_the_retry_permission_see_the_failures_but_cannot_retry(onlooker):
    job = failed_job(error="Disk full")

    page = onlooker.get("/dashboard/").content.decode()
    one = onlooker.post(f"/dashboard/jobs/{job.id}/retry/", HTTP_X_REQUESTED_WITH="fetch")
    bulk = onlooker.post("/dashboard/retry-failed/", HTTP_X_REQUESTED_WITH="fetch")

    assert "Disk full" in page and 'data-can-retry="false"' in page
    assert "Retry selected" not in page and f"/dashboard/jobs/{job.id}/retry/" not in page
    assert one.status_code == bulk.status_code == 403
    assert Job.objects.get(id=job.id).status == Status.FAILED
