"""The Django admin for operators: jobs with filters, search, timeline and actions; events,
schedules and task results alongside. Model permissions decide who sees and does what:
view_job to list jobs, retry_job and cancel_job for the actions, view_job_payload for
other users' payloads and results."""

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

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


def staff_client(staff_user, *codenames: str) -> Client:
    """A signed-in staff member holding exactly these permissions of the jobs app."""
    staff_user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="jobs", codename__in=codenames)
    )
    client = Client()
    client.force_login(staff_user)
    return client


def offered_actions(client: Client) -> set[str]:
    response = client.get("/admin/jobs/job/")
    assert response.status_code == 200
    form = response.context["action_form"]  # None when no action is offered
    return {name for name, _ in form.fields["action"].choices} if form else set()


def run_action(client: Client, action: str, job: Job) -> Status:
    client.post("/admin/jobs/job/", {"action": action, "_selected_action": [str(job.id)]})
    return Job.objects.get(id=job.id).status


def test_staff_without_model_permissions_get_403_on_the_job_admin(staff_user, jobs):
    client = staff_client(staff_user)

    assert client.get("/admin/jobs/job/").status_code == 403
    assert client.get(f"/admin/jobs/job/{jobs['mail'].id}/change/").status_code == 403
    assert client.get("/admin/jobs/jobevent/").status_code == 403


def test_viewing_jobs_does_not_offer_or_run_retry_and_cancel(staff_user, jobs):
    client = staff_client(staff_user, "view_job")

    assert not {"retry_jobs", "cancel_jobs"} & offered_actions(client)
    assert run_action(client, "retry_jobs", jobs["mail"]) == Status.FAILED
    assert run_action(client, "cancel_jobs", jobs["noop"]) == Status.QUEUED


def test_the_retry_permission_offers_and_runs_retry_alone(staff_user, jobs):
    client = staff_client(staff_user, "view_job", "retry_job")

    assert {"retry_jobs"} <= offered_actions(client)
    assert "cancel_jobs" not in offered_actions(client)
    assert run_action(client, "cancel_jobs", jobs["noop"]) == Status.QUEUED
    assert run_action(client, "retry_jobs", jobs["mail"]) == Status.QUEUED


def test_the_cancel_permission_offers_and_runs_cancel(staff_user, jobs):
    client = staff_client(staff_user, "view_job", "cancel_job")

    assert "cancel_jobs" in offered_actions(client)
    assert run_action(client, "cancel_jobs", jobs["noop"]) == Status.CANCELLED


def change_page(client: Client, job: Job) -> str:
    response = client.get(f"/admin/jobs/job/{job.id}/change/")
    assert response.status_code == 200
    return response.content.decode()


def test_other_users_payloads_and_results_need_the_payload_permission(staff_user, jobs):
    job = jobs["owned"]
    Job.objects.filter(id=job.id).update(result={"answer": "result-of-alice"})

    page = change_page(staff_client(staff_user, "view_job"), job)
    assert "Payload" not in page and "result-of-alice" not in page

    page = change_page(staff_client(staff_user, "view_job", "view_job_payload"), job)
    assert "Payload" in page and "result-of-alice" in page


def test_staff_see_the_payloads_of_their_own_jobs(staff_user):
    job = services.enqueue("system.sleep", {"seconds": 7}, owner=staff_user).job

    assert "Payload" in change_page(staff_client(staff_user, "view_job"), job)
