"""Bad input is a 4xx JSON error naming what is wrong, and nothing is written."""

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs.models import Job, JobEvent


@pytest.fixture(autouse=True)
def nothing_written(db):
    yield
    assert Job.objects.count() == 0
    assert JobEvent.objects.count() == 0


def test_an_unknown_type_lists_the_types_the_caller_may_create(api):
    response = api.post("/api/jobs/", {"type": "no.such.type"})

    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid"
    [message] = body["errors"]["type"]
    assert "no.such.type" in message
    assert "system.noop" in message and "system.sleep" in message
    assert "email.send" not in message


def test_a_payload_that_fails_its_serializer_names_each_field(staff_api):
    response = staff_api.post(
        "/api/jobs/", {"type": "email.send", "payload": {"to": ["not-an-address"], "body": ""}}
    )

    assert response.status_code == 400
    errors = response.json()["errors"]["payload"]
    assert set(errors) == {"to", "subject", "body"}
    assert "valid email" in errors["to"]["0"][0]


def test_a_payload_that_is_not_an_object_is_refused(api):
    response = api.post("/api/jobs/", {"type": "system.noop", "payload": [1, 2]})

    assert response.status_code == 400
    assert "payload" in response.json()["errors"]


def test_a_missing_type_is_refused(api):
    response = api.post("/api/jobs/", {"payload": {}})

    assert response.status_code == 400
    assert response.json()["errors"]["type"] == ["This field is required."]


def test_malformed_json_is_a_400(api):
    response = api.post(
        "/api/jobs/", data=b'{"type": "system.noop",', headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 400
    assert "JSON parse error" in response.json()["detail"]


def test_a_body_that_is_not_an_object_is_a_400(api):
    response = api.post("/api/jobs/", ["system.noop"])

    assert response.status_code == 400
    assert response.json()["detail"]


def test_an_oversize_body_is_a_413(api, settings):
    big = "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)
    response = api.post("/api/jobs/", {"type": "system.noop", "payload": {"body": big}})

    assert response.status_code == 413
    assert response.json()["code"] == "request_too_large"


def test_a_bad_run_at_is_refused(api):
    response = api.post("/api/jobs/", {"type": "system.noop", "run_at": "next tuesday"})

    assert response.status_code == 400
    assert "run_at" in response.json()["errors"]


def test_a_bad_priority_is_refused(api):
    response = api.post("/api/jobs/", {"type": "system.noop", "priority": "urgent"})

    assert response.status_code == 400
    assert "priority" in response.json()["errors"]


def test_a_bulk_request_over_the_limit_is_refused(api):
    response = api.post("/api/jobs/bulk/", {"jobs": [{"type": "system.noop"}] * 1001})

    assert response.status_code == 400
    assert "1000" in response.json()["errors"]["jobs"][0]


def test_one_bad_job_in_a_bulk_request_refuses_them_all(api):
    response = api.post(
        "/api/jobs/bulk/",
        {
            "jobs": [
                {"type": "system.noop"},
                {"type": "system.sleep", "payload": {"seconds": -1}},
                {"type": "nope"},
            ]
        },
    )

    assert response.status_code == 400
    errors = response.json()["errors"]["jobs"]
    assert set(errors) == {"1", "2"}
    assert "seconds" in errors["1"]["payload"]
    assert "type" in errors["2"]


def test_a_past_deadline_is_not_a_reason_to_write_half_a_bulk(api):
    late = (timezone.now() - timedelta(days=1)).isoformat()
    response = api.post(
        "/api/jobs/bulk/",
        {
            "jobs": [
                {"type": "system.noop", "run_at": late},
                {"type": "system.noop", "priority": "x"},
            ]
        },
    )

    assert response.status_code == 400
    assert set(response.json()["errors"]["jobs"]) == {"1"}
