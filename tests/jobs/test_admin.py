"""The Django admin for operators: jobs with filters, search, timeline and actions; events,
schedules and task results alongside."""

import pytest

from jobs import services
from jobs.models import Job, Status

pytestmark = pytest.mark.django_db


def listed(admin_client, query: str = "") -> set[str]:
    response = admin_client.get(f"/admin/jobs/job/{query}")
    assert response.status_code == 200
    return {str(job.id) for job in response.context["cl"].result_list}


@pytest.fixture
def jobs(user):
    noop = services.enqueue("system.noop", idempotency_key="nightly-42").job
    owned = services.enqueue("system.sleep", {"seconds": 1}, owner=user).job
    mail = services.enqueue(
        "email.send", {"to": ["a@example.com"], "subject": "s", "body": "b"}
    ).job
    Job.objects.filter(id=mail.id).update(status=Status.FAILED, error="refused")
    return {"noop": noop, "owned": owned, "mail": mail}


def test_the_job_list_filters_by_status_type_and_queue(admin_client, jobs):
    assert listed(admin_client, "?status__exact=failed") == {str(jobs["mail"].id)}
    assert listed(admin_client, "?type__exact=system.sleep") == {str(jobs["owned"].id)}
    assert listed(admin_client, "?queue__exact=emails") == {str(jobs["mail"].id)}


def test_the_job_list_searches_by_id_key_and_owner(admin_client, jobs):
    assert listed(admin_client, f"?q={jobs['noop'].id}") == {str(jobs["noop"].id)}
    assert listed(admin_client, "?q=nightly-42") == {str(jobs["noop"].id)}
    assert listed(admin_client, "?q=alice") == {str(jobs["owned"].id)}


def test_the_change_page_shows_the_read_only_timeline(admin_client, jobs):
    response = admin_client.get(f"/admin/jobs/job/{jobs['noop'].id}/change/")

    assert response.status_code == 200
    page = response.content.decode()
    assert "Created" in page and "dispatched" in page
    assert 'name="events-0-message"' not in page  # nothing editable


def test_retry_and_cancel_actions_change_the_selected_jobs(admin_client, jobs):
    admin_client.post(
        "/admin/jobs/job/",
        {"action": "retry_jobs", "_selected_action": [str(jobs["mail"].id)]},
    )
    admin_client.post(
        "/admin/jobs/job/",
        {"action": "cancel_jobs", "_selected_action": [str(jobs["noop"].id)]},
    )

    assert Job.objects.get(id=jobs["mail"].id).status == Status.QUEUED
    assert Job.objects.get(id=jobs["noop"].id).status == Status.CANCELLED
    assert Job.objects.get(id=jobs["owned"].id).status == Status.QUEUED


@pytest.mark.parametrize(
    "path",
    [
        "/admin/jobs/jobevent/",
        "/admin/django_celery_beat/periodictask/",
        "/admin/django_celery_beat/crontabschedule/",
        "/admin/django_celery_results/taskresult/",
        "/admin/reports/report/",
        "/admin/notes/page/",
        "/admin/notes/image/",
        "/admin/notes/task/",
    ],
)
def test_operators_find_events_schedules_results_and_app_data(admin_client, jobs, path):
    assert admin_client.get(path).status_code == 200
