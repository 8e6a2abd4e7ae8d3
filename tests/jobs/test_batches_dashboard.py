"""The dashboard's batches pages: the list (newest first, a page at a time, by state),
a batch's page with its jobs and its failed ones named, and cancelling a running batch
(staff with the cancel_job permission)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from jobs import batch_dashboard
from jobs.batches import create_batch, settle
from jobs.models import Batch, BatchState, Job, OperatorAction, Status
from jobs.services import JobSpec
from jobs.store import job_store

pytestmark = pytest.mark.django_db

NOOP = JobSpec("system.noop")
URLS = ("/dashboard/batches/", "/dashboard/batches/{batch}/")


def signed_in(user, *codenames: str) -> Client:
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def staff(staff_user) -> Client:
    return signed_in(staff_user)


@pytest.fixture
def canceller(staff_user) -> Client:
    return signed_in(staff_user, "cancel_job")


def finish(job: Job, status: str = Status.SUCCEEDED, error: str = "") -> None:
    """End a job through the store, as a worker would."""
    now = timezone.now()
    claimed = job_store().claim(job.id, now, due=now)
    assert job_store().finish(claimed, status, now, error=error)


def jobs_of(batch: Batch) -> list[Job]:
    return list(Job.objects.filter(batch=batch).order_by("created_at", "id"))


def listed(client: Client, query: str = "") -> list[dict]:
    response = client.get(f"/dashboard/batches/{query}")
    assert response.status_code == 200, response.content
    return response.context["batches"]


# --- who may look -------------------------------------------------------------------------


def test_anonymous_visitors_go_to_the_login_page_and_users_get_403(client, user):
    batch = create_batch([NOOP], owner=user)
    paths = [url.format(batch=batch.id) for url in URLS]
    for path in paths:
        response = client.get(path)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/?next=/dashboard/batches/")

    client.force_login(user)  # the batch's own owner, not staff
    for path in paths:
        assert client.get(path).status_code == 403
    assert client.post(f"/dashboard/batches/{batch.id}/cancel/").status_code == 403
    assert Batch.objects.get(id=batch.id).state == BatchState.RUNNING


def test_a_missing_batch_is_a_404(canceller):
    missing = "00000000-0000-4000-8000-000000000000"
    assert canceller.get(f"/dashboard/batches/{missing}/").status_code == 404
    assert canceller.post(f"/dashboard/batches/{missing}/cancel/").status_code == 404


# --- the list -------------------------------------------------------------------------------


def test_the_list_shows_each_batch_newest_first_with_counts_progress_and_callbacks(
    staff, user, django_capture_on_commit_callbacks
):
    done = create_batch([NOOP, NOOP], owner=user, on_success=NOOP, description="nightly")
    for job in jobs_of(done):
        finish(job)
    settle(done.id)
    running = create_batch([NOOP, NOOP, NOOP, NOOP], owner=None, on_complete=NOOP)
    finish(jobs_of(running)[0])

    rows = listed(staff)

    assert [r["id"] for r in rows] == [str(running.id), str(done.id)]
    newest, oldest = rows
    assert newest["owner"] == "system" and newest["description"] == ""
    assert newest["state"] == "running" and newest["progress"] == 25 and newest["total"] == 4
    assert {c["status"]: c["count"] for c in newest["counts"]}["queued"] == 3
    assert newest["callbacks"] == [{"name": "on complete", "type": "system.noop", "job": None}]
    done.refresh_from_db()
    assert oldest["state"] == "succeeded" and oldest["progress"] == 100
    assert oldest["owner"] == "alice" and oldest["description"] == "nightly"
    (callback,) = oldest["callbacks"]
    assert callback["name"] == "on success" and callback["job"]["id"] == str(done.success_job_id)

    page = staff.get("/dashboard/batches/").content.decode()
    assert "nightly" in page and f"/dashboard/batches/{done.id}/" in page
    assert f"/admin/jobs/job/{done.success_job_id}/change/" in page
    assert f'value="25" aria-label="Progress of batch {str(running.id)[:8]}"' in page
    # Cancelling takes a permission this member of staff lacks.
    assert "/cancel/" not in page


def test_the_list_is_filtered_by_state_and_refuses_an_unknown_one(staff, user):
    running = create_batch([NOOP], owner=user)
    cancelled = create_batch([NOOP], owner=user)
    Batch.objects.filter(id=cancelled.id).update(state=BatchState.CANCELLED)

    assert [r["id"] for r in listed(staff, "?state=running")] == [str(running.id)]
    assert [r["id"] for r in listed(staff, "?state=cancelled")] == [str(cancelled.id)]
    assert listed(staff, "?state=failed") == []

    bad = staff.get("/dashboard/batches/?state=done")
    assert bad.status_code == 400
    assert bad.json()["errors"] == {
        "state": ["Must be one of: running, succeeded, failed, cancelled."]
    }


def test_the_list_goes_page_by_page_to_the_oldest_batch(staff, user, monkeypatch):
    monkeypatch.setattr(batch_dashboard, "BATCHES_LISTED", 2)
    made = [create_batch([NOOP], owner=user) for _ in range(5)]
    # Two made in the same instant are still ordered, and each on one page only.
    Batch.objects.filter(id__in=[made[1].id, made[2].id]).update(created_at=made[1].created_at)

    seen, query = [], ""
    while True:
        response = staff.get(f"/dashboard/batches/{query}")
        seen.append([r["id"] for r in response.context["batches"]])
        if not response.context["older"]:
            break
        assert 'rel="next"' in response.content.decode()
        query = f"?before={response.context['older']}"

    assert [len(page) for page in seen] == [2, 2, 1]
    assert sorted(sum(seen, [])) == sorted(str(b.id) for b in made)
    assert seen[0][0] == str(made[-1].id) and seen[-1] == [str(made[0].id)]
    bad = staff.get("/dashboard/batches/?before=nonsense")
    assert bad.status_code == 400 and list(bad.json()["errors"]) == ["before"]


def test_a_page_of_batches_takes_the_same_queries_however_many_it_shows(staff, user):
    def queries() -> int:
        staff.get("/dashboard/batches/")  # the session and the user, read once
        with CaptureQueriesContext(connection) as captured:
            assert staff.get("/dashboard/batches/").status_code == 200
        return len(captured)

    batch = create_batch([NOOP, NOOP], owner=user, on_success=NOOP)
    for job in jobs_of(batch):
        finish(job)
    settle(batch.id)
    few = queries()
    for _ in range(6):
        settled = create_batch([NOOP, NOOP, NOOP], owner=user, on_success=NOOP, on_complete=NOOP)
        for job in jobs_of(settled):
            finish(job)
        settle(settled.id)
        create_batch([NOOP], owner=None)

    assert queries() == few


# --- a batch's page ------------------------------------------------------------------------


def test_a_batchs_page_lists_its_jobs_and_names_the_failed_ones(staff, user):
    batch = create_batch([NOOP, NOOP, NOOP], owner=user, on_complete=NOOP, description="album")
    first, second, third = jobs_of(batch)
    finish(first)
    finish(second, Status.FAILED, error="ValueError: bad\nTraceback (most recent call last):")

    response = staff.get(f"/dashboard/batches/{batch.id}/")

    assert response.status_code == 200
    shown = response.context["batch"]
    assert shown["progress"] == 66 and shown["state"] == "running"
    assert [(j["id"], j["error"]) for j in shown["failed_jobs"]] == [
        (str(second.id), "ValueError: bad")
    ]
    assert [(j["id"], j["status"]) for j in response.context["jobs"]] == [
        (str(first.id), "succeeded"),
        (str(second.id), "failed"),
        (str(third.id), "queued"),
    ]
    page = response.content.decode()
    assert "album" in page and "ValueError: bad" in page
    for job in (first, second, third):
        assert f"/admin/jobs/job/{job.id}/change/" in page

    only_failed = staff.get(f"/dashboard/batches/{batch.id}/?status=failed").context["jobs"]
    assert [j["id"] for j in only_failed] == [str(second.id)]
    bad = staff.get(f"/dashboard/batches/{batch.id}/?status=broken")
    assert bad.status_code == 400 and list(bad.json()["errors"]) == ["status"]


def test_a_batchs_page_takes_the_same_queries_however_many_jobs_it_shows(staff, user):
    def queries(batch: Batch) -> int:
        staff.get(f"/dashboard/batches/{batch.id}/")
        with CaptureQueriesContext(connection) as captured:
            assert staff.get(f"/dashboard/batches/{batch.id}/").status_code == 200
        return len(captured)

    small = create_batch([NOOP], owner=user, on_success=NOOP, on_complete=NOOP)
    finish(jobs_of(small)[0], Status.FAILED, error="OSError: gone")
    large = create_batch([NOOP] * 12, owner=user, on_success=NOOP, on_complete=NOOP)
    for job in jobs_of(large)[:5]:
        finish(job, Status.FAILED, error="OSError: gone")
    for job in jobs_of(large)[5:]:
        finish(job)
    settle(small.id)
    settle(large.id)

    assert queries(large) == queries(small)


def test_a_batchs_jobs_come_a_page_at_a_time(staff, user, monkeypatch):
    monkeypatch.setattr(batch_dashboard, "JOBS_LISTED", 2)
    batch = create_batch([NOOP] * 5, owner=user)

    seen, query = [], ""
    while True:
        response = staff.get(f"/dashboard/batches/{batch.id}/{query}")
        seen += [j["id"] for j in response.context["jobs"]]
        if not response.context["later"]:
            break
        query = f"?after={response.context['later']}"

    assert seen == [str(job.id) for job in jobs_of(batch)]


# --- cancelling --------------------------------------------------------------------------------


def test_cancelling_from_the_dashboard_cancels_the_jobs_and_is_recorded(canceller, staff_user):
    batch = create_batch([NOOP, NOOP], owner=None, on_complete=NOOP)
    page = canceller.get(f"/dashboard/batches/{batch.id}/").content.decode()
    assert f'action="/dashboard/batches/{batch.id}/cancel/"' in page

    response = canceller.post(f"/dashboard/batches/{batch.id}/cancel/")

    assert response.status_code == 302
    assert response["Location"] == f"/dashboard/batches/{batch.id}/"
    batch.refresh_from_db()
    assert batch.state == BatchState.CANCELLED and batch.complete_job_id is not None
    assert {job.status for job in jobs_of(batch)} == {Status.CANCELLED}
    action = OperatorAction.objects.get()
    assert (action.action, action.target_kind, action.target, action.via, action.actor) == (
        "cancel",
        "batch",
        str(batch.id),
        "dashboard",
        staff_user,
    )
    assert "cancelled" in canceller.get(response["Location"]).content.decode()

    again = canceller.post(
        f"/dashboard/batches/{batch.id}/cancel/", headers={"X-Requested-With": "fetch"}
    )
    assert again.status_code == 409
    assert again.json() == {
        "detail": "Cannot cancel a batch that is cancelled.",
        "state": "cancelled",
    }
    assert OperatorAction.objects.count() == 1


def test_a_running_job_of_a_cancelled_batch_is_asked_to_stop(canceller, user):
    batch = create_batch([NOOP, NOOP], owner=user)
    running, queued = jobs_of(batch)
    now = timezone.now()
    job_store().claim(running.id, now, due=now)

    response = canceller.post(
        f"/dashboard/batches/{batch.id}/cancel/", headers={"X-Requested-With": "fetch"}
    )

    assert response.status_code == 200 and response.json()["state"] == "running"
    assert "running ones asked to stop" in response.json()["detail"]
    batch.refresh_from_db()
    assert batch.cancel_requested and batch.state == BatchState.RUNNING
    assert Job.objects.get(id=queued.id).status == Status.CANCELLED
    assert Job.objects.get(id=running.id).cancel_requested


def test_cancelling_needs_the_cancel_job_permission_and_the_csrf_token(staff, staff_user, user):
    batch = create_batch([NOOP], owner=user)

    assert staff.post(f"/dashboard/batches/{batch.id}/cancel/").status_code == 403
    staff_user.user_permissions.add(Permission.objects.get(codename="cancel_job"))
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(staff_user)
    assert strict.post(f"/dashboard/batches/{batch.id}/cancel/").status_code == 403
    assert staff.get(f"/dashboard/batches/{batch.id}/cancel/").status_code == 405

    assert Batch.objects.get(id=batch.id).state == BatchState.RUNNING
    assert not Batch.objects.get(id=batch.id).cancel_requested
    assert not OperatorAction.objects.exists()
