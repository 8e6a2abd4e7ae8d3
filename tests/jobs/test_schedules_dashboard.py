"""Schedules on the dashboard: each with its timing in words, next and last run (with the
last window's job and its outcome), a pause switch and "run now", which starts a job of
its own and never takes the next window's."""

from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django_celery_beat.models import PeriodicTask

from jobs import scheduling
from jobs.models import Job, OperatorAction, Status

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
def operator(staff_user) -> Client:
    """Staff who may change schedules."""
    staff_user.user_permissions.add(Permission.objects.get(codename="change_periodictask"))
    client = Client()
    client.force_login(staff_user)
    return client


def shown(client: Client) -> dict[str, dict]:
    response = client.get("/dashboard/data/")
    assert response.status_code == 200
    return {s["name"]: s for s in response.json()["schedules"]}


def fire(name: str, at: datetime) -> Job:
    """What Beat's firing at `at` does (jobs.tasks.enqueue_scheduled)."""
    row = PeriodicTask.objects.get(name=name)
    kwargs = scheduling._kwargs_of(row)
    return scheduling.enqueue_for_schedule(name, kwargs["type"], kwargs["payload"], fired_at=at)


def test_each_schedule_shows_its_timing_next_run_and_last_windows_job(declared, operator):
    window = datetime(2026, 3, 2, 10, 5, tzinfo=UTC)
    job = fire("reminder", window + timedelta(seconds=2))
    Job.objects.filter(id=job.id).update(status=Status.FAILED)

    schedules = shown(operator)

    assert sorted(schedules) == ["cleanup", "reminder", "sweep"]
    reminder = schedules["reminder"]
    assert reminder["timing"] == "Every 5 minutes UTC (cron */5 * * * *)"
    assert reminder["job_type"] == "system.noop"
    assert reminder["enabled"] is True
    assert reminder["last_job"]["id"] == str(job.id)
    assert reminder["last_job"]["status"] == "failed"
    assert reminder["last_job"]["admin_url"] == f"/admin/jobs/job/{job.id}/change/"
    assert reminder["last_manual_job"] is None
    next_run = datetime.fromisoformat(reminder["next_run_at"])
    assert next_run > datetime.now(UTC)
    assert next_run.minute % 5 == 0 and next_run.second == 0
    assert next_run - datetime.now(UTC) <= timedelta(minutes=5)

    assert schedules["cleanup"]["timing"] == "every 60 seconds"
    assert schedules["sweep"]["job_type"] is None
    assert schedules["sweep"]["last_job"] is None


def test_an_interval_schedule_runs_next_one_interval_after_its_last_firing(declared):
    last = datetime.now(UTC) - timedelta(seconds=20)
    PeriodicTask.objects.filter(name="cleanup").update(last_run_at=last)
    state = next(s for s in scheduling.overview() if s.name == "cleanup")

    assert state.next_run_at == last + timedelta(seconds=60)
    assert state.last_run_at == last


def test_the_last_run_is_the_latest_window_not_a_run_by_hand(declared, staff_user):
    first = fire("reminder", datetime(2026, 3, 2, 10, 0, tzinfo=UTC))
    latest = fire("reminder", datetime(2026, 3, 2, 10, 5, tzinfo=UTC))
    by_hand = scheduling.run_now("reminder", by=staff_user, via="dashboard")

    assert scheduling.last_window_job("reminder", "system.noop") == latest
    assert scheduling.last_manual_job("reminder", "system.noop") == by_hand
    assert first != latest


def test_the_pause_switch_disables_the_schedule_and_is_recorded(declared, operator):
    response = operator.post("/dashboard/schedules/reminder/switch/", {"enabled": "0"})

    assert response.status_code == 302
    assert PeriodicTask.objects.get(name="reminder").enabled is False
    assert shown(operator)["reminder"]["next_run_at"] is None

    operator.post("/dashboard/schedules/reminder/switch/", {"enabled": "1"})
    assert PeriodicTask.objects.get(name="reminder").enabled is True
    assert [
        (a.action, a.target_kind, a.target, a.actor_name, a.via)
        for a in OperatorAction.objects.order_by("id")
    ] == [
        ("pause", "schedule", "reminder", "carol", "dashboard"),
        ("resume", "schedule", "reminder", "carol", "dashboard"),
    ]


def test_a_schedule_switched_off_stays_off_through_a_sync_until_switched_on(declared, staff_user):
    scheduling.set_enabled("reminder", False, by=staff_user, via="dashboard")
    scheduling.sync()
    assert PeriodicTask.objects.get(name="reminder").enabled is False

    scheduling.set_enabled("reminder", True, by=staff_user, via="dashboard")
    scheduling.sync()
    assert PeriodicTask.objects.get(name="reminder").enabled is True


def test_run_now_starts_a_job_and_the_next_window_still_gets_its_own(declared, operator):
    response = operator.post(
        "/dashboard/schedules/cleanup/run/", headers={"X-Requested-With": "fetch"}
    )

    assert response.status_code == 200
    manual = Job.objects.get()
    assert manual.type == "system.sleep"
    assert manual.payload["seconds"] == 0
    assert manual.idempotency_key.startswith("schedule:cleanup:manual:")
    action = OperatorAction.objects.get()
    assert (action.action, action.target, action.detail["job"]) == (
        "run_now",
        "cleanup",
        str(manual.id),
    )

    # Beat's next firing, in the very window "run now" happened in, still makes its job.
    window_job = fire("cleanup", datetime.now(UTC))
    assert window_job.id != manual.id
    assert Job.objects.count() == 2
    assert shown(operator)["cleanup"]["last_job"]["id"] == str(window_job.id)
    assert shown(operator)["cleanup"]["last_manual_job"]["id"] == str(manual.id)


def test_run_now_twice_makes_two_jobs(declared, staff_user):
    one = scheduling.run_now("reminder", by=staff_user, via="dashboard")
    two = scheduling.run_now("reminder", by=staff_user, via="dashboard")

    assert one.id != two.id


def test_a_schedule_sending_a_plain_task_or_unknown_cannot_be_run_now(declared, operator):
    response = operator.post(
        "/dashboard/schedules/sweep/run/", headers={"X-Requested-With": "fetch"}
    )
    assert response.status_code == 400
    assert "jobs.sweep" in response.json()["errors"]["schedule"][0]

    response = operator.post(
        "/dashboard/schedules/nope/switch/", {"enabled": "0"}, headers={"X-Requested-With": "fetch"}
    )
    assert response.status_code == 400
    assert "nope" in response.json()["errors"]["schedule"][0]
    response = operator.post(
        "/dashboard/schedules/reminder/switch/", headers={"X-Requested-With": "fetch"}
    )
    assert response.status_code == 400
    assert "enabled" in response.json()["errors"]
    assert PeriodicTask.objects.get(name="reminder").enabled is True
    assert not Job.objects.exists()
    assert not OperatorAction.objects.exists()


def test_schedules_need_the_permission_to_change_them(declared, staff_user, user):
    client = Client()
    client.force_login(staff_user)
    assert client.post("/dashboard/schedules/reminder/switch/", {"enabled": "0"}).status_code == 403
    assert client.post("/dashboard/schedules/reminder/run/").status_code == 403
    client.force_login(user)
    assert client.post("/dashboard/schedules/reminder/run/").status_code == 403
    assert PeriodicTask.objects.get(name="reminder").enabled is True
    assert not Job.objects.exists()


def test_the_dashboard_page_lists_schedules_with_their_switches(declared, operator):
    page = operator.get("/dashboard/").content.decode()

    assert 'data-schedule="reminder"' in page
    assert "Every 5 minutes UTC" in page
    assert 'aria-label="Run schedule reminder now"' in page
    assert 'aria-label="Run schedule sweep now"' not in page  # a plain task, not a job


def test_the_admin_records_schedule_edits_switches_and_runs(declared, admin_client):
    reminder = PeriodicTask.objects.get(name="reminder")
    sweep = PeriodicTask.objects.get(name="sweep")

    admin_client.post(
        "/admin/django_celery_beat/periodictask/",
        {"action": "disable_tasks", "_selected_action": [str(reminder.id)]},
    )
    admin_client.post(
        "/admin/django_celery_beat/periodictask/",
        {"action": "run_tasks", "_selected_action": [str(reminder.id)]},
    )
    reminder.refresh_from_db()
    assert reminder.enabled is False

    page = admin_client.get(f"/admin/django_celery_beat/periodictask/{sweep.id}/change/")
    form = page.context["adminform"].form
    data = {
        name: value
        for name, value in form.initial.items()
        if value is not None and not isinstance(value, list | dict)
    }
    data.update(
        name="sweep",
        regtask="jobs.sweep",
        task="jobs.sweep",
        interval=sweep.interval_id,
        description="Changed",
        args="[]",
        kwargs="{}",
        headers=sweep.headers,
        enabled="on",
        priority="",
        expires="",
        expire_seconds="",
        queue="",
        exchange="",
        routing_key="",
        start_time_0="",
        start_time_1="",
        last_run_at_0="",
        last_run_at_1="",
    )
    data = {k: v for k, v in data.items() if k not in ("crontab", "solar", "clocked", "one_off")}
    response = admin_client.post(f"/admin/django_celery_beat/periodictask/{sweep.id}/change/", data)
    assert response.status_code == 302, response.context["adminform"].form.errors

    assert [(a.action, a.target, a.via) for a in OperatorAction.objects.order_by("id")] == [
        ("pause", "reminder", "admin"),
        ("run_now", "reminder", "admin"),
        ("change", "sweep", "admin"),
    ]
    assert "description" in OperatorAction.objects.first().detail["fields"]
