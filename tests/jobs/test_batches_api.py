"""The batches API: who may create, see and cancel which batch, what it answers, and
what it refuses."""

from __future__ import annotations

import pytest
from django.test import override_settings

from jobs.batches import create_batch
from jobs.models import Batch, BatchState, Job, OperatorAction, Status
from jobs.services import JobSpec

pytestmark = pytest.mark.django_db

SLEEP = {"type": "system.sleep", "payload": {"seconds": 0}}
NOOP = {"type": "system.noop"}


def create(api, **body) -> dict:
    response = api.post("/api/batches/", {"jobs": [SLEEP, SLEEP], **body})
    assert response.status_code == 201, response.text
    return response.json()


def test_a_user_creates_a_batch_and_reads_its_summary(api, user):
    created = create(api, on_success=NOOP, on_complete=NOOP, description="nightly")

    assert created["state"] == "running"
    assert created["owner"] == user.username
    assert created["total"] == 2
    assert created["counts"]["queued"] == 2
    assert created["on_success"]["type"] == "system.noop"
    assert created["description"] == "nightly"
    batch = Batch.objects.get(id=created["id"])
    assert Job.objects.filter(batch=batch, owner=user).count() == 2
    summary = api.get(f"/api/batches/{batch.id}/")
    assert summary.status_code == 200
    assert summary.json()["failed_jobs"] == []
    jobs = api.get(f"/api/batches/{batch.id}/jobs/").json()["results"]
    assert {job["id"] for job in jobs} == {str(j.id) for j in batch.jobs.all()}


def test_the_summary_answers_304_while_nothing_changed(api, user):
    created = create(api)
    first = api.get(f"/api/batches/{created['id']}/")
    etag = first.headers["ETag"]

    again = api.get(f"/api/batches/{created['id']}/", headers={"If-None-Match": etag})
    assert again.status_code == 304

    api.post(f"/api/batches/{created['id']}/cancel/")
    changed = api.get(f"/api/batches/{created['id']}/", headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["ETag"] != etag


def test_other_users_get_404_for_a_batch_and_staff_see_it(api, other_api, staff_api):
    created = create(api)
    path = f"/api/batches/{created['id']}/"

    assert other_api.get(path).status_code == 404
    assert other_api.get(path + "jobs/").status_code == 404
    assert other_api.post(path + "cancel/").status_code == 404
    assert other_api.get("/api/batches/").json()["results"] == []
    assert staff_api.get(path).status_code == 200
    assert [b["id"] for b in staff_api.get("/api/batches/").json()["results"]] == [created["id"]]
    # Cancelling another user's batch takes the cancel_job permission, as a job's does.
    assert staff_api.post(path + "cancel/").status_code == 403
    assert Batch.objects.get(id=created["id"]).state == BatchState.RUNNING


def test_staff_without_the_payload_permission_do_not_see_callback_payloads(api, staff_api):
    created = create(api, on_complete=SLEEP)

    seen = staff_api.get(f"/api/batches/{created['id']}/").json()

    assert seen["on_complete"]["type"] == "system.sleep"
    assert seen["on_complete"]["payload"] is None
    assert api.get(f"/api/batches/{created['id']}/").json()["on_complete"]["payload"] == {
        "seconds": 0.0,
        "fail_times": 0,
        "permanent": False,
    }


def test_anonymous_callers_get_401(anonymous_api, api):
    created = create(api)

    assert anonymous_api.get("/api/batches/").status_code == 401
    assert anonymous_api.post("/api/batches/", {"jobs": [NOOP]}).status_code == 401
    assert anonymous_api.get(f"/api/batches/{created['id']}/").status_code == 401
    assert anonymous_api.post(f"/api/batches/{created['id']}/cancel/").status_code == 401


def test_job_types_a_user_may_not_create_are_refused_in_jobs_and_callbacks(api, staff_api):
    staff_only = {
        "type": "email.send",
        "payload": {"to": ["a@example.com"], "subject": "s", "body": "b"},
    }

    in_jobs = api.post("/api/batches/", {"jobs": [NOOP, staff_only]})
    in_callback = api.post("/api/batches/", {"jobs": [NOOP], "on_success": staff_only})
    internal = api.post("/api/batches/", {"jobs": [NOOP], "on_complete": {"type": "system.purge"}})

    assert in_jobs.status_code == 400
    assert "type" in in_jobs.json()["errors"]["jobs"]["1"]
    assert in_callback.status_code == 400
    assert "type" in in_callback.json()["errors"]["on_success"]
    assert "type" in internal.json()["errors"]["on_complete"]
    assert not Batch.objects.exists()
    assert not Job.objects.exists()
    # Staff may create staff types, in jobs and callbacks alike.
    allowed = staff_api.post("/api/batches/", {"jobs": [staff_only], "on_success": staff_only})
    assert allowed.status_code == 201, allowed.text


def test_bad_input_is_a_400_naming_the_field_and_writes_nothing(api):
    cases = {
        "jobs": {"jobs": []},
        "jobs.0.payload": {"jobs": [{"type": "system.sleep", "payload": {"seconds": "x"}}]},
        "jobs.0.idempotency_key": {"jobs": [{**NOOP, "idempotency_key": "k"}]},
        "on_success.run_at": {
            "jobs": [NOOP],
            "on_success": {**NOOP, "run_at": "2030-01-01T00:00:00Z"},
        },
        "on_complete.expires_in": {"jobs": [NOOP], "on_complete": {**NOOP, "expires_in": 60}},
        "description": {"jobs": [NOOP], "description": "x" * 201},
    }
    for field, body in cases.items():
        response = api.post("/api/batches/", body)
        assert response.status_code == 400, (field, response.text)
        errors = response.json()["errors"]
        for part in field.split("."):
            assert part in errors, (field, response.text)
            errors = errors[part]
    assert not Batch.objects.exists()
    assert not Job.objects.exists()


def test_a_batch_larger_than_the_limit_is_a_clear_400(api):
    with override_settings(JOBS_BATCH_MAX_JOBS=2):
        response = api.post("/api/batches/", {"jobs": [NOOP] * 3})

    assert response.status_code == 400
    assert "At most 2 jobs in a batch" in response.json()["errors"]["jobs"][0]
    assert not Job.objects.exists()


def test_a_batch_past_the_users_cap_of_active_jobs_is_a_429(api):
    with override_settings(JOBS_USER_MAX_ACTIVE=3):
        create(api)
        response = api.post("/api/batches/", {"jobs": [NOOP, NOOP]})

    assert response.status_code == 429
    assert response.json()["code"] == "too_many_active_jobs"
    assert Batch.objects.count() == 1


def test_an_idempotency_key_returns_the_same_batch_and_refuses_another_request(api):
    first = api.post("/api/batches/", {"jobs": [NOOP]}, headers={"Idempotency-Key": "n-1"})
    repeat = api.post("/api/batches/", {"jobs": [NOOP]}, headers={"Idempotency-Key": "n-1"})
    other = api.post("/api/batches/", {"jobs": [NOOP, NOOP], "idempotency_key": "n-1"})

    assert first.status_code == 201
    assert repeat.status_code == 200
    assert repeat.json()["id"] == first.json()["id"]
    assert other.status_code == 409
    assert other.json()["code"] == "idempotency_conflict"
    assert Job.objects.count() == 1


def test_a_repeat_with_a_relative_expiry_is_still_the_same_request(api):
    body = {"jobs": [{**SLEEP, "expires_in": 60}], "idempotency_key": "n-2"}

    first = api.post("/api/batches/", body)
    repeat = api.post("/api/batches/", body)

    assert (first.status_code, repeat.status_code) == (201, 200)
    assert repeat.json()["id"] == first.json()["id"]


def test_the_owner_cancels_a_batch_once(api, user):
    created = create(api, on_complete=NOOP)
    path = f"/api/batches/{created['id']}/cancel/"

    cancelled = api.post(path)
    again = api.post(path)

    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "cancelled"
    assert cancelled.json()["counts"]["cancelled"] == 2
    assert cancelled.json()["callback_jobs"]["on_complete"] is not None
    assert again.status_code == 409
    assert again.json()["code"] == "not_cancellable"
    assert OperatorAction.objects.filter(target_kind="batch", actor=user).count() == 1


def test_the_list_filters_by_state_and_the_jobs_by_status(api):
    running = create(api)
    cancelled = create(api)
    api.post(f"/api/batches/{cancelled['id']}/cancel/")

    listed = api.get("/api/batches/", params={"state": "running"}).json()["results"]
    bad = api.get("/api/batches/", params={"state": "nope"})
    jobs = api.get(f"/api/batches/{cancelled['id']}/jobs/", params={"status": "queued"})

    assert [b["id"] for b in listed] == [running["id"]]
    assert listed[0]["counts"]["queued"] == 2
    assert bad.status_code == 400
    assert "state" in bad.json()["errors"]
    assert jobs.json()["results"] == []
    assert Job.objects.filter(batch_id=cancelled["id"], status=Status.CANCELLED).count() == 2


def test_the_schema_describes_the_batch_endpoints(api):
    schema = api.get("/api/schema/", headers={"Accept": "application/vnd.oai.openapi+json"})
    paths = schema.json()["paths"]

    assert "201" in paths["/api/batches/"]["post"]["responses"]
    assert "get" in paths["/api/batches/"]
    assert "304" in paths["/api/batches/{id}/"]["get"]["responses"]
    assert "409" in paths["/api/batches/{id}/cancel/"]["post"]["responses"]
    assert "get" in paths["/api/batches/{id}/jobs/"]


def test_the_admin_lists_batches_with_counts_and_links_a_job_to_its_batch(admin_client, user):
    batch = create_batch([JobSpec("system.noop")] * 3, owner=user, description="album")
    job = batch.jobs.first()

    listing = admin_client.get("/admin/jobs/batch/").content.decode()
    page = admin_client.get(f"/admin/jobs/job/{job.id}/change/").content.decode()
    found = admin_client.get("/admin/jobs/job/", {"q": str(batch.id)}).content.decode()

    assert "album" in listing
    assert '<td class="field-jobs_count">3</td>' in listing
    assert f"/admin/jobs/batch/{batch.id}/change/" in page
    assert all(f"/admin/jobs/job/{j.id}/change/" in found for j in batch.jobs.all())
    assert admin_client.get(f"/admin/jobs/batch/{batch.id}/change/").status_code == 200
    assert admin_client.post(f"/admin/jobs/batch/{batch.id}/delete/").status_code == 403
