"""Who may create which job type through the API: system.noop and system.sleep any
signed-in user, email.send staff only, every other type nobody (the application creates
them). To a user, a type they may not create is as unknown as a misspelt one."""

import re

import pytest
from django.core.files.base import ContentFile

from jobs import registry
from jobs.models import Job
from notes import services as notes_services
from notes.models import Image, ImageStatus, Page
from reports.models import Report
from tests.engine import run_when_due

USER_TYPES = ["system.noop", "system.sleep"]
STAFF_TYPES = ["email.send", "system.noop", "system.sleep"]
# Every registered type a plain user may not create, with a payload its serializer takes.
REFUSED_TO_USERS = {
    "email.send": {"to": [f"x{i}@outside.example" for i in range(50)], "subject": "s", "body": "b"},
    "email.welcome": {"email": "x@outside.example", "name": "X"},
    "email.digest": {"hours": 24},
    "system.purge": {},
    "system.flush_expired_tokens": {},
    "notes.save_page": {"page_id": 1, "version": 2147483647, "content": "pwned"},
    "notes.upload_image": {"image_id": 1},
    "notes.image_cleanup": {"type": "delete-marked", "grace_hours": 0},
    "notes.task_reminders": {},
    "reports.generate": {"report_id": "00000000-0000-0000-0000-000000000000"},
    "webhooks.deliver": {"delivery_id": "00000000-0000-0000-0000-000000000000"},
    # Django's Tasks framework: a payload naming a task would run it (jobs/tasks_backend.py).
    "tasks.run": {"task": "examples.tasks.count_words", "args": [1, "pwned"]},
}
UNKNOWN_TYPE_MESSAGE = "Unknown job type {!r}. Types you may create: system.noop, system.sleep."


def type_error(response) -> str:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "invalid"
    [message] = body["errors"]["type"]
    return message


def names_in(text: str) -> set[str]:
    """The registered job types named anywhere in `text`."""
    return {name for name in registry.names() if re.search(rf"\b{re.escape(name)}\b", text)}


def test_every_registered_type_is_covered_here():
    refused = set(registry.names()) - set(USER_TYPES)

    assert refused == set(REFUSED_TO_USERS)


@pytest.mark.parametrize("type_name", sorted(REFUSED_TO_USERS))
def test_a_user_cannot_create_a_type_not_open_to_users(api, type_name):
    response = api.post("/api/jobs/", {"type": type_name, "payload": REFUSED_TO_USERS[type_name]})

    assert type_error(response) == UNKNOWN_TYPE_MESSAGE.format(type_name)
    assert Job.objects.count() == 0


@pytest.mark.parametrize("type_name", sorted(REFUSED_TO_USERS))
def test_an_error_shows_a_user_no_type_they_may_not_create(api, type_name):
    single = api.post("/api/jobs/", {"type": type_name, "payload": REFUSED_TO_USERS[type_name]})
    bulk = api.post(
        "/api/jobs/bulk/",
        {"jobs": [{"type": "system.noop"}, {"type": type_name, "priority": "high"}]},
    )

    for response in (single, bulk):
        assert response.status_code == 400
        # The name the user sent comes back to them; no other name they may not create.
        assert names_in(response.text) == {type_name, *USER_TYPES}
    assert set(bulk.json()["errors"]["jobs"]) == {"1"}
    assert Job.objects.count() == 0


def test_a_refused_type_reads_exactly_like_an_unknown_one(api):
    unknown = type_error(api.post("/api/jobs/", {"type": "no.such.type"}))
    internal = type_error(api.post("/api/jobs/", {"type": "system.purge"}))

    assert unknown.replace("no.such.type", "T") == internal.replace("system.purge", "T")


def test_a_user_cannot_overwrite_another_users_page(api, other_api, other_user):
    page = notes_services.create_page(other_user, "Bob's page", "original")
    attack = {"page_id": page.id, "version": 2147483647, "content": "pwned"}

    response = api.post("/api/jobs/", {"type": "notes.save_page", "payload": attack})
    bulk = api.post("/api/jobs/bulk/", {"jobs": [{"type": "notes.save_page", "payload": attack}]})

    assert response.status_code == bulk.status_code == 400
    assert Job.objects.count() == 0
    page.refresh_from_db()
    assert (page.content, page.applied_version) == ("original", 0)
    saved = other_api.request("PATCH", f"/api/notes/pages/{page.id}/", json={"content": "mine"})
    assert saved.status_code == 202
    assert run_when_due(saved.json()["job"]["id"]) == "succeeded"
    page.refresh_from_db()
    assert (page.content, page.applied_version) == ("mine", 1)


def test_a_user_cannot_run_the_image_cleanup(api, other_user):
    image = Image.objects.create(
        owner=other_user, status=ImageStatus.STORED, content_type="image/png", size=3
    )
    image.file.save("bob.png", ContentFile(b"png"), save=True)

    response = api.post(
        "/api/jobs/",
        {"type": "notes.image_cleanup", "payload": {"type": "comprehensive", "grace_hours": 0}},
    )

    type_error(response)
    assert Job.objects.count() == 0
    assert Image.objects.filter(id=image.id).exists()


def test_a_user_cannot_generate_another_users_report(api, other_user):
    report = Report.objects.create(owner=other_user, kind="notes_export", title="Bob's notes")

    response = api.post(
        "/api/jobs/", {"type": "reports.generate", "payload": {"report_id": str(report.id)}}
    )

    type_error(response)
    assert Job.objects.count() == 0


def test_a_user_cannot_send_mail_one_job_or_a_thousand(api):
    mail = {"type": "email.send", "payload": REFUSED_TO_USERS["email.send"]}

    single = api.post("/api/jobs/", mail)
    bulk = api.post("/api/jobs/bulk/", {"jobs": [mail] * 1000})

    type_error(single)
    assert bulk.status_code == 400
    errors = bulk.json()["errors"]["jobs"]
    assert len(errors) == 1000
    assert errors["999"]["type"] == [UNKNOWN_TYPE_MESSAGE.format("email.send")]
    assert Job.objects.count() == 0


def test_staff_may_create_staff_types_at_any_priority(staff_api):
    response = staff_api.post(
        "/api/jobs/",
        {
            "type": "email.send",
            "payload": {"to": ["dana@example.com"], "subject": "Hi", "body": "B"},
            "priority": "high",
        },
    )

    assert response.status_code == 202, response.text
    assert response.json()["priority"] == "high"
    assert Job.objects.get().type == "email.send"


@pytest.mark.parametrize("type_name", ["system.purge", "notes.save_page", "email.digest"])
def test_staff_are_told_an_internal_type_is_created_by_the_application(staff_api, type_name):
    message = type_error(
        staff_api.post("/api/jobs/", {"type": type_name, "payload": REFUSED_TO_USERS[type_name]})
    )

    assert (
        message
        == f"Jobs of type {type_name!r} are created by the application, not through the API."
    )
    assert Job.objects.count() == 0


def test_staff_asking_for_an_unknown_type_see_what_they_may_create(staff_api):
    message = type_error(staff_api.post("/api/jobs/", {"type": "no.such.type"}))

    assert message == (
        "Unknown job type 'no.such.type'. Types you may create: "
        "email.send, system.noop, system.sleep."
    )


def test_the_job_type_list_shows_a_user_what_they_may_create(api):
    types = {t["name"]: t for t in api.get("/api/job-types/").json()}

    assert list(types) == USER_TYPES
    assert {t["exposure"] for t in types.values()} == {"users"}
    # Fields only staff may set are not offered either.
    assert set(types["system.sleep"]["payload_fields"]) == {"seconds", "fail_times", "permanent"}


def test_the_job_type_list_shows_staff_the_staff_types_too(staff_api):
    types = {t["name"]: t for t in staff_api.get("/api/job-types/").json()}

    assert list(types) == STAFF_TYPES
    assert types["email.send"]["exposure"] == "staff"
    assert "checkpoints" in types["system.sleep"]["payload_fields"]


def test_a_user_may_sleep_a_short_while(api, settings):
    settings.JOBS_USER_SLEEP_MAX_SECONDS = 5

    ok = api.post("/api/jobs/", {"type": "system.sleep", "payload": {"seconds": 5}})
    too_long = api.post("/api/jobs/", {"type": "system.sleep", "payload": {"seconds": "5.5"}})

    assert ok.status_code == 202, ok.text
    assert too_long.status_code == 400
    assert too_long.json()["errors"] == {
        "payload": {"seconds": ["Ensure this value is less than or equal to 5."]}
    }
    assert Job.objects.count() == 1


def test_a_user_cannot_sleep_for_an_hour_by_default(api):
    response = api.post("/api/jobs/", {"type": "system.sleep", "payload": {"seconds": 3600}})

    assert response.status_code == 400
    assert response.json()["errors"]["payload"]["seconds"] == [
        "Ensure this value is less than or equal to 60."
    ]
    assert Job.objects.count() == 0


@pytest.mark.parametrize("checkpoints", [False, True])
def test_a_user_may_not_set_a_staff_only_field(api, checkpoints):
    job = {"type": "system.sleep", "payload": {"seconds": 1, "checkpoints": checkpoints}}

    single = api.post("/api/jobs/", job)
    bulk = api.post("/api/jobs/bulk/", {"jobs": [{"type": "system.noop"}, job]})

    assert single.status_code == 400
    assert single.json()["errors"] == {
        "payload": {"checkpoints": ["Only staff may set this field."]}
    }
    assert bulk.status_code == 400
    assert bulk.json()["errors"]["jobs"] == {
        "1": {"payload": {"checkpoints": ["Only staff may set this field."]}}
    }
    assert Job.objects.count() == 0


def test_staff_may_sleep_for_an_hour_without_checkpoints(staff_api):
    response = staff_api.post(
        "/api/jobs/", {"type": "system.sleep", "payload": {"seconds": 3600, "checkpoints": False}}
    )

    assert response.status_code == 202, response.text
    assert Job.objects.get().payload["checkpoints"] is False


def test_a_type_declares_only_staff_fields_its_payload_has():
    noop = registry.get("system.noop")

    with pytest.raises(ValueError, match="no payload field chekpoints"):
        registry.register(
            registry.JobType(
                name="test.typo", handler=noop.handler, staff_fields=frozenset({"chekpoints"})
            )
        )
    assert "test.typo" not in registry.names()


def test_the_apps_own_endpoints_still_create_internal_types(api, user):
    page = api.post("/api/notes/pages/", {"title": "Ideas", "content": "old"}).json()
    saved = api.request("PATCH", f"/api/notes/pages/{page['id']}/", json={"content": "new"})
    report = api.post("/api/reports/", {"kind": "notes_export"})

    assert saved.status_code == 202 and report.status_code == 202, (saved.text, report.text)
    assert sorted(Job.objects.values_list("type", flat=True)) == [
        "notes.save_page",
        "reports.generate",
    ]
    assert Page.objects.get(owner=user).accepted_version == 1
