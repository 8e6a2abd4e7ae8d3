"""Limits on what a user asks for through the API: priority above normal is for staff,
a cap on each user's queued and running jobs (429), and run_at at most so far ahead."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from jobs import services, store
from jobs.models import Job, Status

NOOP = {"type": "system.noop"}


def noops(client, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        response = client.post("/api/jobs/", NOOP)
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return ids


# --- priority --------------------------------------------------------------------------


def test_a_user_may_not_ask_for_high_priority(api):
    single = api.post("/api/jobs/", {**NOOP, "priority": "high"})
    bulk = api.post("/api/jobs/bulk/", {"jobs": [NOOP, {**NOOP, "priority": "high"}]})

    message = "Must be one of: low, normal (higher is for staff)."
    assert single.status_code == 400
    assert single.json()["errors"] == {"priority": [message]}
    assert bulk.status_code == 400
    assert bulk.json()["errors"]["jobs"] == {"1": {"priority": [message]}}
    assert Job.objects.count() == 0


def test_a_user_may_ask_for_low_and_normal_priority(api):
    for priority in ("low", "normal"):
        response = api.post("/api/jobs/", {**NOOP, "priority": priority})
        assert response.status_code == 202, response.text
        assert response.json()["priority"] == priority


def test_staff_may_ask_for_high_priority(staff_api):
    response = staff_api.post("/api/jobs/", {**NOOP, "priority": "high"})

    assert response.status_code == 202, response.text
    assert Job.objects.get().priority_name == "high"


# --- active jobs per user --------------------------------------------------------------


def test_a_user_at_the_cap_gets_a_429_naming_it(api, settings):
    settings.JOBS_USER_MAX_ACTIVE = 3
    noops(api, 3)

    response = api.post("/api/jobs/", NOOP)

    assert response.status_code == 429
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body == {
        "detail": "At most 3 queued or running jobs per user: you have 3 or more, and this "
        "request adds 1. Wait for some to finish, or cancel some.",
        "code": "too_many_active_jobs",
        "limit": 3,
        "active": 3,
        "requested": 1,
    }
    assert Job.objects.count() == 3


def test_a_bulk_request_past_the_cap_is_refused_whole(api, settings):
    settings.JOBS_USER_MAX_ACTIVE = 5
    noops(api, 2)

    refused = api.post("/api/jobs/bulk/", {"jobs": [NOOP] * 4})
    fits = api.post("/api/jobs/bulk/", {"jobs": [NOOP] * 3})

    assert refused.status_code == 429
    assert (refused.json()["active"], refused.json()["requested"]) == (2, 4)
    assert "you have 2, and this request adds 4" in refused.json()["detail"]
    assert fits.status_code == 202, fits.text
    assert Job.objects.count() == 5


def test_finished_and_cancelled_jobs_do_not_count(api, settings):
    settings.JOBS_USER_MAX_ACTIVE = 2
    first, second = noops(api, 2)
    assert api.post(f"/api/jobs/{first}/cancel/").status_code == 200
    Job.objects.filter(id=second).update(status=Status.SUCCEEDED)

    assert len(noops(api, 2)) == 2
    assert api.post("/api/jobs/", NOOP).status_code == 429


def test_running_jobs_count(api, settings):
    settings.JOBS_USER_MAX_ACTIVE = 2
    noops(api, 2)
    Job.objects.update(status=Status.RUNNING)

    assert api.post("/api/jobs/", NOOP).status_code == 429


def test_the_cap_is_per_user(api, other_api, settings):
    settings.JOBS_USER_MAX_ACTIVE = 1
    noops(api, 1)

    assert len(noops(other_api, 1)) == 1
    assert api.post("/api/jobs/", NOOP).status_code == 429


def test_a_repeated_request_at_the_cap_returns_its_job(api, settings):
    settings.JOBS_USER_MAX_ACTIVE = 2
    noops(api, 1)
    keyed = api.post("/api/jobs/", {**NOOP, "idempotency_key": "k"})
    assert keyed.status_code == 202

    again = api.post("/api/jobs/", {**NOOP, "idempotency_key": "k"})
    bulk_again = api.post("/api/jobs/bulk/", {"jobs": [{**NOOP, "idempotency_key": "k"}]})
    new_key = api.post("/api/jobs/", {**NOOP, "idempotency_key": "other"})

    assert again.status_code == 200 and again.json()["id"] == keyed.json()["id"]
    assert bulk_again.status_code == 202 and bulk_again.json()["created"] == 0
    assert new_key.status_code == 429
    assert Job.objects.count() == 2


def test_a_retry_counts_against_the_cap(api, settings):
    settings.JOBS_USER_MAX_ACTIVE = 2
    first, _ = noops(api, 2)
    assert api.post(f"/api/jobs/{first}/cancel/").status_code == 200
    noops(api, 1)

    refused = api.post(f"/api/jobs/{first}/retry/")
    Job.objects.filter(status=Status.QUEUED).update(status=Status.SUCCEEDED)
    retried = api.post(f"/api/jobs/{first}/retry/")

    assert refused.status_code == 429
    assert refused.json()["code"] == "too_many_active_jobs"
    assert retried.status_code == 202, retried.text
    assert retried.json()["status"] == "queued"


def test_staff_have_no_cap(staff_api, settings):
    settings.JOBS_USER_MAX_ACTIVE = 1

    assert len(noops(staff_api, 3)) == 3


def test_a_cap_of_zero_means_none(api, settings):
    settings.JOBS_USER_MAX_ACTIVE = 0

    assert len(noops(api, 3)) == 3


def test_jobs_created_by_the_application_ignore_the_cap(api, user, settings):
    settings.JOBS_USER_MAX_ACTIVE = 1
    noops(api, 1)

    page = api.post("/api/notes/pages/", {"title": "Ideas", "content": ""}).json()
    saved = api.request("PATCH", f"/api/notes/pages/{page['id']}/", json={"content": "new"})
    services.enqueue("system.noop", owner=user)

    assert saved.status_code == 202
    assert Job.objects.filter(owner=user).count() == 3


def test_the_active_count_is_one_query_that_stops_at_the_cap(user, other_user):
    services.enqueue_many([services.JobSpec("system.noop")] * 5, owner=user)
    services.enqueue("system.noop", owner=other_user)
    Job.objects.filter(id=services.enqueue("system.noop", owner=user).job.id).update(
        status=Status.SUCCEEDED
    )

    with CaptureQueriesContext(connection) as queries:
        counted = [services.active_job_count(user, up_to=n) for n in (3, 1000)]

    assert counted == [3, 5]
    assert len(queries.captured_queries) == 2


def test_the_active_count_reads_only_the_owner_status_index(user):
    if connection.vendor != "postgresql":
        pytest.skip("reads PostgreSQL's query plan")
    services.enqueue_many([services.JobSpec("system.noop")] * 300, owner=user)

    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + store.ACTIVE_COUNT_SQL, [user.pk, "queued", "running", 1000])
        plan = "\n".join(row[0] for row in cursor.fetchall())

    assert "job_owner_status" in plan and "Seq Scan" not in plan, plan


# --- run_at ----------------------------------------------------------------------------


def test_run_at_may_be_at_most_a_year_ahead(api, staff_api):
    in_a_year = timezone.now() + timedelta(days=364)
    too_late = timezone.now() + timedelta(days=366)

    ok = api.post("/api/jobs/", {**NOOP, "run_at": in_a_year.isoformat()})
    refused = [
        client.post("/api/jobs/", {**NOOP, "run_at": too_late.isoformat()})
        for client in (api, staff_api)
    ]

    assert ok.status_code == 202, ok.text
    for response in refused:
        assert response.status_code == 400
        [message] = response.json()["errors"]["run_at"]
        assert message.startswith("Must be at most 365 days ahead, no later than ")
    assert Job.objects.count() == 1


def test_the_schedule_horizon_is_a_setting(api, settings):
    settings.JOBS_MAX_SCHEDULE_AHEAD = 3600
    soon = timezone.now() + timedelta(minutes=50)
    late = timezone.now() + timedelta(minutes=70)

    ok = api.post("/api/jobs/", {**NOOP, "run_at": soon.isoformat()})
    bulk = api.post(
        "/api/jobs/bulk/",
        {"jobs": [{**NOOP, "run_at": soon.isoformat()}, {**NOOP, "run_at": late.isoformat()}]},
    )

    assert ok.status_code == 202, ok.text
    assert bulk.status_code == 400
    [message] = bulk.json()["errors"]["jobs"]["1"]["run_at"]
    assert message.startswith("Must be at most 3600 seconds ahead")
    assert Job.objects.count() == 1
