"""An idempotency key makes a repeated request return the same job."""

import pytest

from jobs import services
from jobs.errors import IdempotencyConflict
from jobs.models import Job
from tests.support import run_in_threads

NOOP = {"type": "system.sleep", "payload": {"seconds": 1}}


def test_a_repeat_returns_the_same_job_with_200(api):
    first = api.post("/api/jobs/", {**NOOP, "idempotency_key": "k-1"})
    again = api.post("/api/jobs/", {**NOOP, "idempotency_key": "k-1"})

    assert first.status_code == 202
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert Job.objects.count() == 1


def test_the_key_can_come_from_the_idempotency_key_header(api):
    first = api.post("/api/jobs/", NOOP, headers={"Idempotency-Key": "hdr-1"})
    again = api.post("/api/jobs/", {**NOOP, "idempotency_key": "hdr-1"})

    assert first.status_code == 202
    assert first.json()["idempotency_key"] == "hdr-1"
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]


def test_a_repeat_with_other_data_is_a_409(api):
    first = api.post("/api/jobs/", {**NOOP, "idempotency_key": "k-2"})
    other = api.post(
        "/api/jobs/",
        {"type": "system.sleep", "payload": {"seconds": 2}, "idempotency_key": "k-2"},
    )
    other_type = api.post("/api/jobs/", {"type": "system.noop", "idempotency_key": "k-2"})

    assert other.status_code == 409
    assert other.json()["code"] == "idempotency_conflict"
    assert other.json()["job_id"] == first.json()["id"]
    assert "k-2" in other.json()["detail"]
    assert other_type.status_code == 409
    assert Job.objects.count() == 1


def test_keys_belong_to_their_owner(api, other_api):
    mine = api.post("/api/jobs/", {**NOOP, "idempotency_key": "shared"})
    theirs = other_api.post("/api/jobs/", {**NOOP, "idempotency_key": "shared"})

    assert mine.status_code == theirs.status_code == 202
    assert mine.json()["id"] != theirs.json()["id"]


def test_twenty_concurrent_identical_requests_create_exactly_one_job(live_api):
    api = live_api
    responses = run_in_threads(
        20, lambda i: api.post("/api/jobs/", {**NOOP, "idempotency_key": "race"})
    )

    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 19 + [202], [r.text for r in responses if r.status_code >= 300]
    assert len({r.json()["id"] for r in responses}) == 1
    assert Job.objects.filter(idempotency_key="race").count() == 1


def test_system_jobs_are_deduplicated_by_key_too(db):
    first = services.enqueue("system.noop", idempotency_key="nightly:2026-01-01")
    again = services.enqueue("system.noop", idempotency_key="nightly:2026-01-01")

    assert first.created and not again.created
    assert again.job.id == first.job.id
    with pytest.raises(IdempotencyConflict):
        services.enqueue("system.sleep", {"seconds": 1}, idempotency_key="nightly:2026-01-01")
