"""Schedules declared in settings, synced into django-celery-beat, fired once per window."""

import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import CommandError, call_command
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from jobs import schedules, scheduling
from jobs.beat import DatabaseScheduler, PersistentScheduler
from jobs.models import Job, Status
from jobsite.celery_app import app as celery_app
from tests.support import wait_for

DECLARED = {
    "reminder": {"job": "system.noop", "cron": "*/5 * * * *", "description": "Reminders"},
    "image-cleanup": {"job": "system.sleep", "payload": {"seconds": 0}, "every": 60},
    "sweep": {"task": "jobs.sweep", "every": 5, "expire_seconds": 10},
}


@pytest.fixture
def declared(transactional_db, settings):
    settings.JOBS_SCHEDULES = {name: dict(options) for name, options in DECLARED.items()}
    PeriodicTask.objects.all().delete()
    return settings.JOBS_SCHEDULES


def rows() -> dict[str, PeriodicTask]:
    return {row.name: row for row in PeriodicTask.objects.all()}


def test_sync_writes_one_row_per_declaration(declared):
    result = scheduling.sync()

    assert sorted(result.created) == sorted(DECLARED)
    reminder = rows()["reminder"]
    assert reminder.task == "jobs.enqueue_scheduled"
    assert json.loads(reminder.kwargs) == {
        "type": "system.noop",
        "payload": {},
        "schedule": "reminder",
    }
    assert reminder.crontab.minute == "*/5" and reminder.interval is None
    assert reminder.enabled
    sweep = rows()["sweep"]
    assert sweep.task == "jobs.sweep"
    assert (sweep.interval.every, sweep.interval.period) == (5, IntervalSchedule.SECONDS)
    assert sweep.expire_seconds == 10


def test_a_second_sync_never_duplicates_rows(declared):
    scheduling.sync()
    result = scheduling.sync()

    assert result.created == [] and result.updated == []
    assert PeriodicTask.objects.count() == len(DECLARED)
    assert IntervalSchedule.objects.filter(every=60).count() == 1


def test_a_changed_declaration_updates_its_row(declared):
    scheduling.sync()
    declared["reminder"]["cron"] = "0 9 * * 1"
    declared["image-cleanup"]["payload"] = {"seconds": 1}

    result = scheduling.sync()

    assert sorted(result.updated) == ["image-cleanup", "reminder"]
    reminder = rows()["reminder"]
    assert (reminder.crontab.minute, reminder.crontab.hour, reminder.crontab.day_of_week) == (
        "0",
        "9",
        "1",
    )
    assert json.loads(rows()["image-cleanup"].kwargs)["payload"] == {"seconds": 1}


def test_a_declaration_moved_from_cron_to_interval_loses_its_crontab(declared):
    scheduling.sync()
    del declared["reminder"]["cron"]
    declared["reminder"]["every"] = 300

    scheduling.sync()

    reminder = rows()["reminder"]
    assert reminder.crontab is None and reminder.interval.every == 300


def test_a_removed_declaration_is_disabled_and_an_admins_own_schedule_is_left_alone(declared):
    scheduling.sync()
    own = PeriodicTask.objects.create(
        name="made in the admin",
        task="jobs.enqueue_scheduled",
        interval=IntervalSchedule.objects.create(every=30, period=IntervalSchedule.SECONDS),
        kwargs=json.dumps({"type": "system.noop"}),
    )
    del declared["reminder"]

    result = scheduling.sync()

    assert result.disabled == ["reminder"]
    assert rows()["reminder"].enabled is False
    own.refresh_from_db()
    assert own.enabled is True


def test_admin_edits_to_fields_the_declaration_does_not_own_survive_a_sync(declared):
    scheduling.sync()
    reminder = PeriodicTask.objects.get(name="reminder")
    reminder.description = "Edited by an admin"
    reminder.priority = 7
    reminder.queue = "emails"
    reminder.kwargs = json.dumps({"type": "system.sleep"})  # owned: put back
    reminder.save()

    scheduling.sync()

    reminder.refresh_from_db()
    assert reminder.description == "Edited by an admin"
    assert reminder.priority == 7
    assert reminder.queue == "emails"
    assert json.loads(reminder.kwargs)["type"] == "system.noop"


def test_an_environment_switch_disables_one_schedule(declared, monkeypatch):
    monkeypatch.setenv("DISABLE_IMAGE_CLEANUP_CRON", "1")
    scheduling.sync()

    assert rows()["image-cleanup"].enabled is False
    assert rows()["reminder"].enabled is True

    monkeypatch.setenv("DISABLE_IMAGE_CLEANUP_CRON", "0")
    scheduling.sync()
    assert rows()["image-cleanup"].enabled is True


def test_the_switch_name_follows_the_schedule_name():
    assert schedules.disable_switch("reminder") == "DISABLE_REMINDER_CRON"
    assert schedules.disable_switch("image-cleanup") == "DISABLE_IMAGE_CLEANUP_CRON"
    assert schedules.disable_switch("notes.task reminders") == "DISABLE_NOTES_TASK_REMINDERS_CRON"


def test_migrate_syncs_the_declared_schedules(declared):
    call_command("migrate", verbosity=0)

    assert set(rows()) == set(DECLARED)


def test_the_command_syncs_and_reports(declared, capsys):
    call_command("sync_schedules")
    call_command("sync_schedules")

    out = capsys.readouterr().out
    assert re.search(r"created: .*reminder", out)
    assert re.search(r"unchanged: .*reminder", out)


@pytest.mark.parametrize(
    "declaration, error",
    [
        ({"job": "no.such.type", "every": 60}, "Unknown job type"),
        ({"job": "system.sleep", "payload": {"seconds": "soon"}, "every": 60}, "seconds"),
        ({"job": "system.noop", "cron": "* * *"}, "5 fields"),
        ({"job": "system.noop"}, "exactly one of cron or every"),
        ({"job": "system.noop", "task": "jobs.sweep", "every": 60}, "exactly one of job or task"),
        ({"job": "system.noop", "every": 60, "colour": "red"}, "unknown options"),
    ],
)
def test_a_bad_declaration_is_refused_and_nothing_is_written(declared, declaration, error):
    declared["broken"] = declaration

    with pytest.raises(CommandError, match=error):
        call_command("sync_schedules")

    assert PeriodicTask.objects.count() == 0


def test_the_file_based_beat_schedule_leaves_out_disabled_schedules(monkeypatch):
    monkeypatch.setenv("DISABLE_REMINDER_CRON", "yes")

    beat = schedules.beat_schedule(DECLARED)

    assert set(beat) == {"image-cleanup", "sweep"}
    assert beat["image-cleanup"]["kwargs"]["schedule"] == "image-cleanup"


# --- windows ---------------------------------------------------------------------------

SEVEN = datetime(2026, 3, 2, 7, 0, tzinfo=UTC)


def test_firings_either_side_of_a_cron_occurrence_share_its_window():
    daily = schedules.crontab_from("0 7 * * *")

    windows = {
        schedules.window_for(daily, SEVEN + timedelta(seconds=s)) for s in (-0.2, 0, 0.3, 20)
    }

    assert windows == {SEVEN}
    assert schedules.window_for(daily, SEVEN + timedelta(days=1, seconds=1)) == SEVEN + timedelta(
        days=1
    )


def test_firings_either_side_of_an_interval_boundary_share_its_window():
    every_minute = schedules.Schedule("x", task="t", every=60).celery_schedule()

    assert schedules.window_for(every_minute, SEVEN - timedelta(seconds=0.2)) == SEVEN
    assert schedules.window_for(every_minute, SEVEN + timedelta(seconds=0.3)) == SEVEN
    assert schedules.window_for(every_minute, SEVEN + timedelta(seconds=59)) == SEVEN + timedelta(
        minutes=1
    )


def test_two_beats_either_side_of_a_window_edge_create_one_job(declared):
    scheduling.sync()
    occurrence = datetime(2026, 3, 2, 7, 5, tzinfo=UTC)

    early = scheduling.enqueue_for_schedule(
        "reminder", "system.noop", {}, fired_at=occurrence - timedelta(seconds=0.2)
    )
    late = scheduling.enqueue_for_schedule(
        "reminder", "system.noop", {}, fired_at=occurrence + timedelta(seconds=0.3)
    )
    next_window = scheduling.enqueue_for_schedule(
        "reminder", "system.noop", {}, fired_at=occurrence + timedelta(minutes=5)
    )

    assert early.id == late.id
    assert early.idempotency_key == "schedule:reminder:2026-03-02T07:05:00Z"
    assert next_window.id != early.id
    assert Job.objects.filter(type="system.noop").count() == 2


# --- firing for real -------------------------------------------------------------------


def enqueue_task_runs(worker) -> int:
    """How many `jobs.enqueue_scheduled` messages the worker has finished."""
    return len(re.findall(r"Task jobs\.enqueue_scheduled\[[^]]+\] succeeded", worker.log()))


def two_beats(kind: str, declared: dict, tmp_path) -> list:
    """Two Beat schedulers of `kind`, as two Beat processes would hold them."""
    if kind == "database":
        return [DatabaseScheduler(app=celery_app, lazy=True) for _ in range(2)]
    beats = [
        PersistentScheduler(app=celery_app, schedule_filename=str(tmp_path / f"beat-{n}"))
        for n in range(2)
    ]
    for beat in beats:
        beat.update_from_dict(schedules.beat_schedule(declared))
    return beats


@pytest.mark.worker
@pytest.mark.parametrize("kind", ["database", "file"])
def test_two_beat_ticks_for_one_window_create_one_job(declared, worker, kind, tmp_path):
    declared["hourly-noop"] = {"job": "system.noop", "every": 3600}
    scheduling.sync()

    for beat in two_beats(kind, declared, tmp_path):
        beat.apply_async(beat.schedule["hourly-noop"], producer=None, advance=False)
        beat.close()

    jobs = Job.objects.filter(idempotency_key__startswith="schedule:hourly-noop:")
    wait_for(
        lambda: enqueue_task_runs(worker) >= 2 and jobs.filter(status=Status.SUCCEEDED).exists(),
        timeout=30,
        what="both firings to be handled and the job to run",
    )
    assert jobs.count() == 1
    assert ":manual:" not in jobs.get().idempotency_key


def fire_from_beat(name: str) -> None:
    """Fire the schedule `name` as the database Beat does when it is due. The entry is
    made from the row directly: Beat's own table leaves out cron schedules whose hour
    is more than two hours from now, and this must not depend on the time of day."""
    beat = DatabaseScheduler(app=celery_app, lazy=True)
    entry = beat.Entry(PeriodicTask.objects.get(name=name), app=celery_app)
    beat.apply_async(entry, producer=None, advance=False)
    beat.close()


@pytest.mark.worker
def test_run_selected_tasks_in_the_admin_never_suppresses_the_scheduled_firing(
    declared, admin_client, worker
):
    declared["nightly"] = {"job": "system.noop", "cron": "0 3 * * *"}
    scheduling.sync()
    row = PeriodicTask.objects.get(name="nightly")
    jobs = Job.objects.filter(idempotency_key__startswith="schedule:nightly:")

    response = admin_client.post(
        "/admin/django_celery_beat/periodictask/",
        {"action": "run_tasks", "_selected_action": [row.pk]},
    )

    assert response.status_code == 302
    wait_for(
        lambda: jobs.filter(status=Status.SUCCEEDED).count() == 1,
        timeout=30,
        what="the manual run's job to run",
    )
    manual = jobs.get()
    assert manual.idempotency_key.startswith("schedule:nightly:manual:")

    # Beat fires the window a manual run at this hour used to be keyed to.
    windows = {schedules.window_for(row.schedule, datetime.now(UTC))}
    fire_from_beat("nightly")
    windows.add(schedules.window_for(row.schedule, datetime.now(UTC)))

    wait_for(
        lambda: jobs.filter(status=Status.SUCCEEDED).count() == 2,
        timeout=30,
        what="the scheduled firing's job to run",
    )
    scheduled = jobs.exclude(id=manual.id).get()
    assert scheduled.idempotency_key in {schedules.window_key("nightly", w) for w in windows}

    # The broker delivers the manual run's message again.
    task_id = manual.idempotency_key.removeprefix("schedule:nightly:manual:")
    celery_app.send_task(
        schedules.ENQUEUE_TASK,
        kwargs=json.loads(row.kwargs),
        task_id=task_id,
        headers={"periodic_task_name": "nightly"},
    )
    wait_for(
        lambda: worker.log().count(f"[{task_id}] succeeded") == 2,
        timeout=30,
        what="the redelivered message to be handled",
    )
    assert jobs.count() == 2


def test_only_a_firing_of_beat_is_keyed_by_the_window_it_belongs_to(declared):
    declared["nightly"] = {"job": "system.noop", "cron": "0 3 * * *"}
    scheduling.sync()
    afternoon = datetime(2026, 3, 2, 14, 23, tzinfo=UTC)
    three_next_morning = datetime(2026, 3, 3, 3, 0, tzinfo=UTC)

    manual = scheduling.enqueue_for_schedule("nightly", "system.noop", {}, run_id="message-1")
    redelivered = scheduling.enqueue_for_schedule("nightly", "system.noop", {}, run_id="message-1")
    from_code = scheduling.enqueue_for_schedule("nightly", "system.noop", {})
    fired = scheduling.enqueue_for_schedule(
        "nightly", "system.noop", {}, fired_at=three_next_morning + timedelta(seconds=1)
    )

    assert manual.idempotency_key == "schedule:nightly:manual:message-1"
    assert redelivered.id == manual.id
    assert from_code.idempotency_key.startswith("schedule:nightly:manual:")
    assert from_code.id != manual.id
    assert fired.idempotency_key == "schedule:nightly:2026-03-03T03:00:00Z"
    assert Job.objects.filter(type="system.noop").count() == 3
    # Given a time, a window is found (as a firing at 14:23 belongs to the next 03:00);
    # without a firing time there is no window, whatever the time of day.
    assert scheduling.schedule_key("nightly", afternoon, "x") == fired.idempotency_key
    assert scheduling.schedule_key("nightly", None, "x") == "schedule:nightly:manual:x"


@pytest.mark.worker
def test_an_admin_adds_a_schedule_for_a_job_type_and_sees_it_run(
    declared, admin_client, start_worker
):
    response = admin_client.post(
        "/admin/django_celery_beat/periodictask/add/",
        {
            "name": "Nightly noop",
            "regtask": "jobs.enqueue_scheduled",
            "task": "",
            "enabled": "on",
            "description": "",
            "interval": IntervalSchedule.objects.create(
                every=1, period=IntervalSchedule.SECONDS
            ).id,
            "args": "[]",
            "kwargs": json.dumps({"type": "system.sleep", "payload": {"seconds": 0.1}}),
            "headers": "{}",
            "expire_seconds": "",
            "priority": "",
            "queue": "",
            "exchange": "",
            "routing_key": "",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]

    start_worker(scheduler="jobs.beat:DatabaseScheduler")

    def scheduled_job_succeeded() -> bool:
        return Job.objects.filter(
            type="system.sleep",
            status=Status.SUCCEEDED,
            idempotency_key__startswith="schedule:Nightly noop:",
        ).exists()

    wait_for(scheduled_job_succeeded, timeout=60, what="the admin's schedule to run a job")


def test_startup_jobs_are_enqueued_once_while_one_is_pending(declared):
    declared["image-cleanup"]["run_at_startup"] = True

    first = scheduling.enqueue_startup_jobs()
    second = scheduling.enqueue_startup_jobs(now=datetime.now(UTC) + timedelta(minutes=5))

    assert [j.type for j in first] == ["system.sleep"]
    assert second == []
    Job.objects.filter(id=first[0].id).update(status=Status.SUCCEEDED)
    assert len(scheduling.enqueue_startup_jobs(now=datetime.now(UTC) + timedelta(minutes=5))) == 1


def test_a_disabled_schedule_is_not_run_at_startup(declared, monkeypatch):
    declared["image-cleanup"]["run_at_startup"] = True
    monkeypatch.setenv("DISABLE_IMAGE_CLEANUP_CRON", "1")

    assert scheduling.enqueue_startup_jobs() == []


@pytest.mark.worker
def test_a_starting_worker_enqueues_the_startup_schedules(transactional_db, start_worker):
    start_worker(
        env={
            "JOBS_STARTUP_JOBS": "1",
            "DISABLE_IMAGE_CLEANUP_CRON": "0",
            "DISABLE_REMINDER_CRON": "0",
        }
    )

    def startup_jobs() -> set[str]:
        return set(
            Job.objects.filter(idempotency_key__contains=":startup:").values_list("type", flat=True)
        )

    wait_for(
        lambda: startup_jobs() == {"notes.image_cleanup", "notes.task_reminders"},
        timeout=30,
        what="the start-up jobs",
    )
