"""The jobs API: authentication, ownership, listing, polling and the job-type catalogue."""

import uuid

import requests

from jobs.models import Job
from tests.conftest import PASSWORD


def test_a_token_pair_is_issued_for_good_credentials_and_refreshes(live_server, user):
    response = requests.post(
        f"{live_server.url}/api/auth/token/", json={"username": "alice", "password": PASSWORD}
    )
    assert response.status_code == 200
    tokens = response.json()

    refreshed = requests.post(
        f"{live_server.url}/api/auth/token/refresh/", json={"refresh": tokens["refresh"]}
    )

    assert refreshed.status_code == 200
    assert refreshed.json()["access"]


def test_bad_credentials_are_a_401_json_error(live_server, user):
    response = requests.post(
        f"{live_server.url}/api/auth/token/", json={"username": "alice", "password": "nope"}
    )

    assert response.status_code == 401
    assert "detail" in response.json()


def test_every_jobs_endpoint_needs_a_token(anonymous_api):
    for path in ["/api/jobs/", "/api/job-types/", "/api/jobs/stats/"]:
        response = anonymous_api.get(path)
        assert response.status_code == 401, path
        assert response.json()["detail"]
    assert anonymous_api.post("/api/jobs/", {"type": "system.noop"}).status_code == 401
    assert Job.objects.count() == 0


def test_another_users_job_is_a_404(api, other_api):
    created = api.post("/api/jobs/", {"type": "system.noop"}).json()
    job_id = created["id"]

    assert other_api.get(f"/api/jobs/{job_id}/").status_code == 404
    assert other_api.get(f"/api/jobs/{job_id}/status/").status_code == 404
    assert other_api.post(f"/api/jobs/{job_id}/cancel/").status_code == 404
    assert other_api.post(f"/api/jobs/{job_id}/retry/").status_code == 404
    assert other_api.get("/api/jobs/").json()["results"] == []
    assert Job.objects.get(id=job_id).status == "queued"


def test_staff_see_every_users_jobs(api, staff_api):
    created = api.post("/api/jobs/", {"type": "system.noop"}).json()

    assert staff_api.get(f"/api/jobs/{created['id']}/").status_code == 200
    assert staff_api.get(f"/api/jobs/{created['id']}/status/").json()["id"] == created["id"]
    assert [j["id"] for j in staff_api.get("/api/jobs/").json()["results"]] == [created["id"]]


def test_an_unknown_job_id_is_a_404(api):
    assert api.get(f"/api/jobs/{uuid.uuid4()}/").status_code == 404
    assert api.get("/api/jobs/not-a-uuid/").status_code == 404


def test_the_list_is_newest_first_with_cursor_pages(api):
    ids = [api.post("/api/jobs/", {"type": "system.noop"}).json()["id"] for _ in range(5)]

    first = api.get("/api/jobs/", params={"page_size": 2}).json()
    second = api.get(first["next"].removeprefix(api.base_url)).json()
    third = api.get(second["next"].removeprefix(api.base_url)).json()

    listed = [j["id"] for page in (first, second, third) for j in page["results"]]
    assert listed == list(reversed(ids))
    assert third["next"] is None


def test_the_list_filters_by_status_type_and_search(api):
    noop = api.post("/api/jobs/", {"type": "system.noop"}).json()
    sleep = api.post(
        "/api/jobs/",
        {"type": "system.sleep", "payload": {"seconds": 1}, "idempotency_key": "find-me"},
    ).json()
    api.post(f"/api/jobs/{noop['id']}/cancel/")

    def ids(**params):
        return [j["id"] for j in api.get("/api/jobs/", params=params).json()["results"]]

    assert ids(status="cancelled") == [noop["id"]]
    assert ids(status="queued") == [sleep["id"]]
    assert ids(type="system.sleep") == [sleep["id"]]
    assert ids(q=noop["id"]) == [noop["id"]]
    assert ids(q="find-me") == [sleep["id"]]
    assert ids(q="sleep") == [sleep["id"]]


def test_an_unknown_status_filter_is_a_400(api):
    response = api.get("/api/jobs/", params={"status": "exploded"})

    assert response.status_code == 400
    assert "status" in response.json()["errors"]


def test_the_status_endpoint_is_small_and_supports_etags(api):
    created = api.post("/api/jobs/", {"type": "system.noop"}).json()
    path = f"/api/jobs/{created['id']}/status/"

    first = api.get(path)
    assert first.status_code == 200
    fields = ["id", "status", "progress", "message", "updated_at", "expires_at"]
    no_estimate = {"estimated_start_at": None, "estimated_wait_seconds": None}
    assert first.json() == {field: api.job(created["id"])[field] for field in fields} | {
        "line": {"ahead": 0, "ahead_capped": False, **no_estimate}  # no worker in the test
    }
    etag = first.headers["ETag"]

    unchanged = api.get(path, headers={"If-None-Match": etag})
    assert unchanged.status_code == 304
    assert unchanged.content == b""
    assert unchanged.headers["ETag"] == etag

    api.post(f"/api/jobs/{created['id']}/cancel/")
    changed = api.get(path, headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.json()["status"] == "cancelled"
    assert changed.headers["ETag"] != etag


def test_stats_count_by_status_and_type(api, other_api):
    for _ in range(2):
        api.post("/api/jobs/", {"type": "system.noop"})
    cancelled = api.post("/api/jobs/", {"type": "system.sleep", "payload": {"seconds": 1}})
    api.post(f"/api/jobs/{cancelled.json()['id']}/cancel/")
    other_api.post("/api/jobs/", {"type": "system.noop"})

    stats = api.get("/api/jobs/stats/").json()

    assert stats["by_status"]["queued"] == 2
    assert stats["by_status"]["cancelled"] == 1
    assert stats["by_type"] == {"system.noop": {"queued": 2}, "system.sleep": {"cancelled": 1}}
    assert stats["throughput"]["finished_last_hour"] == 1


def test_job_types_list_queue_attempts_and_payload_fields(staff_api):
    types = {t["name"]: t for t in staff_api.get("/api/job-types/").json()}

    assert {"email.send", "system.noop", "system.sleep"} <= set(types)
    assert types["email.send"]["queue"] == "emails"
    assert types["system.sleep"]["max_attempts"] == 3
    assert set(types["email.send"]["payload_fields"]) == {"to", "subject", "body"}
    assert types["email.send"]["payload_fields"]["subject"]["required"] is True


def test_the_openapi_schema_and_docs_are_served(api, anonymous_api):
    schema = api.get("/api/schema/", headers={"Accept": "application/vnd.oai.openapi+json"})
    assert schema.status_code == 200
    assert "/api/jobs/{id}/status/" in schema.json()["paths"]

    docs = anonymous_api.get("/api/docs/")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


def test_priority_is_stored_and_returned_by_name(staff_api):
    job = staff_api.post("/api/jobs/", {"type": "system.noop", "priority": "high"}).json()

    assert job["priority"] == "high"
    assert Job.objects.get(id=job["id"]).priority == 9
