"""The staff API of schedules: /api/schedules/. Reading takes the staff flag; pausing,
resuming and running one now take django_celery_beat.change_periodictask, as on the
dashboard. Every change is recorded with who made it, through "api"."""

from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django_celery_beat.models import ClockedSchedule, IntervalSchedule, PeriodicTask

from jobs import scheduling
from jobs.models import Job, OperatorAction, Status
from tests.engine import run
from tests.support import InProcessApi

pytestmark = pytest.mark.django_db

DECLARED = {
    "reminder": {"job": "system.noop", "cron": "*/5 * * * *", "description": "Reminders"},
    "cleanup": {"job": "system.sleep", "payload": {"seconds": 0}, "every": 60},
    "sweep": {"task": "jobs.sweep", "every": 5},
}


@pytest.fixture
def declared(db, settings):
    settings.JOBS_SCHEDULES = {name: dict(options) for name, options in DECLARED.items()}
    PeriodicTask.objects.all().delete()
    scheduling.sync()


@pytest.fixture
def operator_api(staff_user):
    """Staff who may change schedules."""
    staff_user.user_permissions.add(Permission.objects.get(codename="change_periodictask"))
    with InProcessApi(staff_user) as client:
        yield client


def fire(name: str, at: datetime) -> Job:
    """What Beat's firing at `at` does (jobs.tasks.enqueue_scheduled)."""
    row = PeriodicTask.objects.get(name=name)
    kwargs = scheduling._kwargs_of(row)
    return scheduling.enqueue_for_schedule(name, kwargs["type"], kwargs["payload"], fired_at=at)


def recorded() -> list[tuple]:
    return [
        (a.action, a.target_kind, a.target, a.actor_name, a.via)
        for a in OperatorAction.objects.order_by("id")
    ]


def test_it_lists_each_schedule_with_its_timing_next_run_and_last_run(declared, staff_api):
    job = fire("reminder", datetime(2026, 3, 2, 10, 5, 2, tzinfo=UTC))
    assert run(job) == "succeeded"

    response = staff_api.get("/api/schedules/")

    assert response.status_code == 200
    schedules = {s["name"]: s for s in response.json()}
    assert list(schedules) == ["cleanup", "reminder", "sweep"]
    reminder = schedules["reminder"]
    assert reminder["description"] == "Reminders"
    assert reminder["task"] == "jobs.enqueue_scheduled"
    assert reminder["job_type"] == "system.noop"
    assert reminder["timing"] == "Every 5 minutes UTC (cron */5 * * * *)"
    assert reminder["timing_spec"] == {
        "kind": "cron",
        "cron": "*/5 * * * *",
        "timezone": "UTC",
        "every_seconds": None,
        "solar_event": None,
        "latitude": None,
        "longitude": None,
        "clocked_at": None,
    }
    assert reminder["enabled"] is True
    next_run = datetime.fromisoformat(reminder["next_run_at"])
    assert datetime.now(UTC) < next_run <= datetime.now(UTC) + timedelta(minutes=5)
    assert next_run.minute % 5 == 0 and next_run.second == 0
    finished = Job.objects.get(id=job.id)
    assert reminder["last_job"] == {
        "id": str(job.id),
        "status": "succeeded",
        "created_at": finished.created_at.isoformat().replace("+00:00", "Z"),
        "finished_at": finished.finished_at.isoformat().replace("+00:00", "Z"),
    }
    assert reminder["last_manual_job"] is None

    cleanup = schedules["cleanup"]
    assert cleanup["timing"] == "every 60 seconds"
    assert cleanup["timing_spec"]["kind"] == "interval"
    assert cleanup["timing_spec"]["every_seconds"] == 60.0
    assert cleanup["timing_spec"]["cron"] is None
    assert cleanup["last_job"] is None
    assert schedules["sweep"]["job_type"] is None
    assert schedules["sweep"]["task"] == "jobs.sweep"


def test_one_schedule_is_read_by_its_name_even_one_added_in_the_admin(declared, staff_api):
    one_off = ClockedSchedule.objects.create(clocked_time=datetime(2026, 6, 1, 9, tzinfo=UTC))
    PeriodicTask.objects.create(
        name="nightly report", task="jobs.sweep", clocked=one_off, one_off=True
    )

    response = staff_api.get("/api/schedules/reminder/")
    assert response.status_code == 200
    assert response.json()["name"] == "reminder"
    assert response.json()["timing_spec"]["cron"] == "*/5 * * * *"

    response = staff_api.get("/api/schedules/nightly%20report/")
    assert response.status_code == 200
    assert response.json()["timing_spec"]["kind"] == "clocked"
    assert response.json()["timing_spec"]["clocked_at"] == "2026-06-01T09:00:00Z"


def test_pausing_and_resuming_switches_the_schedule_and_is_recorded(
    declared, operator_api, staff_user
):
    response = operator_api.post("/api/schedules/reminder/pause/")

    assert response.status_code == 200
    assert response.json()["enabled"] is False
    assert response.json()["next_run_at"] is None
    assert PeriodicTask.objects.get(name="reminder").enabled is False
    # Paused by an operator, it stays paused through a sync.
    scheduling.sync()
    assert PeriodicTask.objects.get(name="reminder").enabled is False
    # Pausing a paused schedule changes nothing and records nothing.
    assert operator_api.post("/api/schedules/reminder/pause/").status_code == 200

    response = operator_api.post("/api/schedules/reminder/resume/")

    assert response.status_code == 200
    assert response.json()["enabled"] is True
    assert response.json()["next_run_at"] is not None
    assert PeriodicTask.objects.get(name="reminder").enabled is True
    assert recorded() == [
        ("pause", "schedule", "reminder", "carol", "api"),
        ("resume", "schedule", "reminder", "carol", "api"),
    ]
    assert OperatorAction.objects.first().actor == staff_user


def test_run_now_answers_with_the_new_job_and_the_next_window_still_gets_its_own(
    declared, operator_api
):
    response = operator_api.post("/api/schedules/cleanup/run-now/")

    assert response.status_code == 202
    body = response.json()
    manual = Job.objects.get()
    assert body["schedule"] == "cleanup"
    assert body["job"]["id"] == str(manual.id)
    assert body["job"]["status"] == "queued"
    assert body["job"]["finished_at"] is None
    assert (manual.type, manual.payload["seconds"]) == ("system.sleep", 0)
    assert manual.idempotency_key.startswith("schedule:cleanup:manual:")
    assert recorded() == [("run_now", "schedule", "cleanup", "carol", "api")]
    assert OperatorAction.objects.get().detail == {"job": str(manual.id)}
    assert run(manual) == "succeeded"

    # Beat's firing in the very window of the run still makes its job.
    window_job = fire("cleanup", datetime.now(UTC))
    assert window_job.id != manual.id
    shown = operator_api.get("/api/schedules/cleanup/").json()
    assert shown["last_job"]["id"] == str(window_job.id)
    assert shown["last_manual_job"]["id"] == str(manual.id)
    assert shown["last_manual_job"]["status"] == Status.SUCCEEDED

    # Each run is one of its own.
    again = operator_api.post("/api/schedules/cleanup/run-now/").json()
    assert again["job"]["id"] not in (str(manual.id), str(window_job.id))


@pytest.mark.parametrize(
    ("in_path", "named"),
    [("nope", "'nope'"), ("a%00b", "'a\\x00b'"), ("x" * 300, repr("x" * 300))],
    ids=["unknown", "with a NUL", "too long"],
)
def test_an_unknown_schedule_is_a_404_naming_it_and_nothing_is_written(
    declared, operator_api, in_path, named
):
    for method, path in [
        ("GET", f"/api/schedules/{in_path}/"),
        ("POST", f"/api/schedules/{in_path}/pause/"),
        ("POST", f"/api/schedules/{in_path}/resume/"),
        ("POST", f"/api/schedules/{in_path}/run-now/"),
    ]:
        response = operator_api.request(method, path)
        assert response.status_code == 404, path
        assert response.json() == {"detail": f"Unknown schedule {named}.", "code": "not_found"}

    assert not Job.objects.exists()
    assert not OperatorAction.objects.exists()


def test_a_schedule_sending_a_plain_task_cannot_be_run_now(declared, operator_api):
    response = operator_api.post("/api/schedules/sweep/run-now/")

    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert "jobs.sweep" in response.json()["errors"]["schedule"][0]
    assert not Job.objects.exists()
    assert not OperatorAction.objects.exists()


def test_staff_without_the_permission_read_but_change_nothing(declared, staff_api):
    assert staff_api.get("/api/schedules/").status_code == 200
    assert staff_api.get("/api/schedules/reminder/").status_code == 200
    for action in ("pause", "resume", "run-now"):
        response = staff_api.post(f"/api/schedules/reminder/{action}/")
        assert response.status_code == 403, action
        assert "django_celery_beat.change_periodictask" in response.json()["detail"]
    # An unknown name is refused the same way: the answer tells nothing about it.
    assert staff_api.post("/api/schedules/nope/pause/").status_code == 403

    assert PeriodicTask.objects.get(name="reminder").enabled is True
    assert not Job.objects.exists()
    assert not OperatorAction.objects.exists()


def test_users_who_are_not_staff_are_refused_even_with_the_permission(declared, api, user):
    user.user_permissions.add(Permission.objects.get(codename="change_periodictask"))

    assert api.get("/api/schedules/").status_code == 403
    assert api.get("/api/schedules/reminder/").status_code == 403
    assert api.get("/api/schedules/nope/").status_code == 403
    for action in ("pause", "resume", "run-now"):
        assert api.post(f"/api/schedules/reminder/{action}/").status_code == 403
    assert PeriodicTask.objects.get(name="reminder").enabled is True
    assert not Job.objects.exists()


def test_anonymous_callers_get_401(declared, anonymous_api):
    assert anonymous_api.get("/api/schedules/").status_code == 401
    assert anonymous_api.get("/api/schedules/reminder/").status_code == 401
    assert anonymous_api.post("/api/schedules/reminder/pause/").status_code == 401
    assert anonymous_api.post("/api/schedules/reminder/run-now/").status_code == 401
    assert PeriodicTask.objects.get(name="reminder").enabled is True
    assert not Job.objects.exists()


def test_only_post_changes_a_schedule(declared, operator_api):
    assert operator_api.get("/api/schedules/reminder/pause/").status_code == 405
    assert operator_api.request("DELETE", "/api/schedules/reminder/").status_code == 405
    assert operator_api.request("PUT", "/api/schedules/reminder/", json={}).status_code == 405
    assert PeriodicTask.objects.filter(name="reminder", enabled=True).exists()


def test_a_superuser_may_do_everything(declared):
    root = get_user_model().objects.create_superuser("root", "root@example.com", "x")
    with InProcessApi(root) as client:
        assert client.post("/api/schedules/reminder/pause/").status_code == 200
        assert client.post("/api/schedules/reminder/run-now/").status_code == 202
    assert PeriodicTask.objects.get(name="reminder").enabled is False
    assert Job.objects.get().type == "system.noop"
    assert [(a.action, a.actor_name, a.via) for a in OperatorAction.objects.order_by("id")] == [
        ("pause", "root", "api"),
        ("run_now", "root", "api"),
    ]


def test_an_interval_schedule_given_in_minutes_is_shown_in_seconds(declared, staff_api):
    every_two_minutes, _ = IntervalSchedule.objects.get_or_create(
        every=2, period=IntervalSchedule.MINUTES
    )
    PeriodicTask.objects.create(name="by hand", task="jobs.sweep", interval=every_two_minutes)

    spec = staff_api.get("/api/schedules/by%20hand/").json()["timing_spec"]

    assert (spec["kind"], spec["every_seconds"]) == ("interval", 120.0)
