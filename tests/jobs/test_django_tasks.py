"""Jobsite as a backend of Django's Tasks framework (jobs/tasks_backend.py), run in this
process: what the framework expects of a backend, and the engine's rules for tasks.
Through real workers: test_django_tasks_workers.py."""

import math
import sys
from datetime import datetime, timedelta

import pytest
from asgiref.sync import async_to_sync
from django.utils import timezone
from django_tasks import TaskResultStatus, task_backends
from django_tasks.exceptions import InvalidTaskError, TaskResultDoesNotExist, TaskResultMismatch
from django_tasks.signals import task_enqueued, task_finished, task_started
from rest_framework.exceptions import ValidationError

from jobs import services
from jobs.engine import IdempotencyConflict, current_job
from jobs.models import Job, Status
from jobs.tasks_backend import (
    InvalidTaskArguments,
    JobsiteBackend,
    TaskCancelled,
    engine_priority,
)
from tests.engine import reloaded, run, run_to_the_end, run_when_due
from tests.jobs import task_functions as tf

pytestmark = pytest.mark.django_db


def tasks_setting(*, queues=("default",), modules=tf.TASK_MODULES, **options) -> dict:
    return {
        "default": {
            "BACKEND": "jobs.tasks_backend.JobsiteBackend",
            "QUEUES": list(queues),
            "OPTIONS": {"MODULES": modules.split(","), **options},
        }
    }


@pytest.fixture(autouse=True)
def tasks(settings):
    settings.TASKS = tasks_setting()
    return settings


@pytest.fixture
def signals():
    sent: list[tuple[str, str, str]] = []

    def receiver(name):
        def receive(sender, task_result, **kwargs):
            sent.append((name, task_result.id, task_result.status))

        return receive

    receivers = {
        task_enqueued: receiver("enqueued"),
        task_started: receiver("started"),
        task_finished: receiver("finished"),
    }
    for signal, receive in receivers.items():
        signal.connect(receive)
    yield sent
    for signal, receive in receivers.items():
        signal.disconnect(receive)


def test_enqueue_returns_a_ready_result_whose_id_is_the_jobs():
    result = tf.add.enqueue(2, 3)

    job = Job.objects.get()
    assert result.id == str(job.id)
    assert result.status == TaskResultStatus.READY
    assert not result.is_finished
    assert (result.args, result.kwargs) == ([2, 3], {})
    assert result.enqueued_at == job.created_at
    assert result.started_at is result.finished_at is result.last_attempted_at is None
    assert result.attempts == 0 and result.errors == []
    assert result.backend == "default"
    assert (job.type, job.status, job.queue, job.priority_name) == (
        "tasks.run",
        Status.QUEUED,
        "default",
        "normal",
    )
    assert job.payload["task"] == "tests.jobs.task_functions.add"
    assert job.owner is None
    with pytest.raises(ValueError, match="not finished"):
        _ = result.return_value


def test_a_succeeded_task_reads_back_with_its_return_value_and_times():
    result = tf.add.enqueue(2, 3)

    assert run(result.id) == "succeeded"

    job = reloaded(result.id)
    back = tf.add.get_result(result.id)
    assert back.status == TaskResultStatus.SUCCESSFUL
    assert back.return_value == 5
    assert back.attempts == 1 and back.errors == []
    assert back.enqueued_at == job.created_at
    assert back.started_at == back.last_attempted_at == job.started_at
    assert back.finished_at == job.finished_at
    assert back.task.func is tf.add.func
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 5


def test_a_result_read_through_another_task_is_refused():
    result = tf.add.enqueue(2, 3)

    with pytest.raises(TaskResultMismatch):
        tf.echo.get_result(result.id)


@pytest.mark.parametrize(
    "result_id", ["not-a-uuid", "00000000-0000-0000-0000-000000000000", "other-type"]
)
def test_an_unknown_result_does_not_exist(result_id):
    if result_id == "other-type":
        result_id = str(services.enqueue("system.noop").job.id)

    with pytest.raises(TaskResultDoesNotExist):
        task_backends["default"].get_result(result_id)


def test_a_failed_task_reads_back_with_its_exception_class_and_traceback():
    result = tf.always_fails.enqueue()

    assert run(result.id) == "failed"

    back = task_backends["default"].get_result(result.id)
    assert back.status == TaskResultStatus.FAILED
    assert back.finished_at is not None
    [error] = back.errors
    assert error.exception_class_path == "tests.jobs.task_functions.TaskBoom"
    assert error.exception_class is tf.TaskBoom
    assert error.traceback.startswith("Traceback (most recent call last)")
    assert "tests.jobs.task_functions.TaskBoom: broken" in error.traceback
    with pytest.raises(ValueError, match="failed"):
        _ = back.return_value


def test_a_task_failing_its_first_attempt_succeeds_on_its_second():
    result = tf.fails_first_time.enqueue("once")

    assert run_to_the_end(result.id) == ["retry", "succeeded"]

    back = tf.fails_first_time.get_result(result.id)
    assert back.status == TaskResultStatus.SUCCESSFUL
    assert back.return_value == {"label": "once", "attempt": 2}
    assert back.attempts == 2
    assert back.started_at < back.last_attempted_at
    job = reloaded(result.id)
    assert job.max_attempts == 2  # the task's own
    assert "TaskBoom: once: first attempt fails" in job.events.get(kind="retry_scheduled").message


def test_a_task_declaring_nothing_gets_the_backends_attempts_and_time_limit(tasks):
    tasks.TASKS = tasks_setting(MAX_ATTEMPTS=4, TIME_LIMIT=20)

    job = reloaded(tf.add.enqueue(1, 1).id)

    assert (job.max_attempts, job.time_limit) == (4, 20)


def test_a_permanent_error_fails_the_task_at_once():
    result = tf.refuses.enqueue()

    assert run(result.id) == "failed"

    [error] = tf.refuses.get_result(result.id).errors
    assert error.exception_class_path == "jobs.errors.PermanentError"
    assert "retrying cannot help" in error.traceback
    assert reloaded(result.id).attempts == 1


def test_a_deferred_task_does_not_run_before_its_time():
    later = timezone.now() + timedelta(hours=1)
    result = tf.add.using(run_after=later).enqueue(1, 2)

    job = reloaded(result.id)
    assert job.run_at == later
    assert run(result.id) == "early"
    assert tf.add.get_result(result.id).status == TaskResultStatus.READY

    assert run_when_due(result.id) == "succeeded"
    back = tf.add.get_result(result.id)
    assert back.return_value == 3
    assert back.task.run_after == later


@pytest.mark.parametrize(
    ("priority", "engine"),
    [(-100, "low"), (-1, "low"), (0, "normal"), (1, "high"), (100, "high")],
)
def test_priorities_map_to_the_engines_and_the_task_keeps_its_own(priority, engine):
    result = tf.add.using(priority=priority).enqueue(1, 2)

    assert engine_priority(priority) == engine
    assert reloaded(result.id).priority_name == engine
    assert tf.add.get_result(result.id).task.priority == priority


def test_a_task_runs_on_the_queue_it_names(tasks):
    tasks.TASKS = tasks_setting(queues=["default", "emails"])

    result = tf.add.using(queue_name="emails").enqueue(1, 2)

    assert reloaded(result.id).queue == "emails"
    assert tf.add.get_result(result.id).task.queue_name == "emails"


def test_a_queue_the_backend_does_not_list_is_refused():
    with pytest.raises(InvalidTaskError, match="Queue 'emails' is not valid"):
        tf.add.using(queue_name="emails").enqueue(1, 2)

    assert Job.objects.count() == 0


def test_a_queue_no_worker_consumes_is_refused(tasks):
    tasks.TASKS = tasks_setting(queues=["default", "nowhere"])

    with pytest.raises(InvalidTaskError, match="not a queue workers consume"):
        tf.add.using(queue_name="nowhere").enqueue(1, 2)

    assert Job.objects.count() == 0
    [error] = task_backends["default"].check()
    assert error.id == "jobs.E101"


@pytest.mark.parametrize(
    ("args", "kwargs", "named"),
    [
        ((datetime(2030, 1, 1),), {}, "args: Unsupported type"),
        ((1, {"when": {1: "a"}}), {}, "args[1]['when']: key 1 is not a string"),
        ((), {"ratio": math.nan}, "kwargs['ratio']: nan is not a JSON number"),
        ((), {"data": [1, object()]}, "kwargs: Unsupported type"),
    ],
)
def test_arguments_that_are_not_json_are_refused_and_nothing_is_written(args, kwargs, named):
    with pytest.raises(InvalidTaskArguments) as refused:
        tf.echo.enqueue(*args, **kwargs)

    assert str(refused.value).startswith(named)
    assert "task arguments must be JSON" in str(refused.value)
    assert isinstance(refused.value, TypeError)
    assert Job.objects.count() == 0


def test_arguments_round_trip():
    result = tf.echo.enqueue((1, 2), {"a": [1.5, None, True, "é"]}, k="v")

    assert run(result.id) == "succeeded"

    back = tf.echo.get_result(result.id)
    assert back.args == result.args == [[1, 2], {"a": [1.5, None, True, "é"]}]
    assert back.kwargs == {"k": "v"}
    assert back.return_value == {"args": back.args, "kwargs": {"k": "v"}}


def test_an_async_task_runs_and_the_async_api_works():
    result = async_to_sync(tf.add_later.aenqueue)(20, 22)

    assert run(result.id) == "succeeded"

    back = async_to_sync(tf.add_later.aget_result)(result.id)
    assert back.status == TaskResultStatus.SUCCESSFUL
    assert back.return_value == 42


def test_an_async_task_reaches_its_job_and_its_checkpoints():
    result = tf.reports_progress_async.enqueue(40)

    assert run(result.id) == "succeeded"

    assert tf.reports_progress_async.get_result(result.id).return_value == 1
    assert reloaded(result.id).events.filter(kind="progress", message="25% from async").exists()


def test_a_task_taking_the_context_sees_its_attempt():
    result = tf.attempt_number.enqueue("x")

    assert run(result.id) == "succeeded"

    assert tf.attempt_number.get_result(result.id).return_value == {"label": "x", "attempt": 1}


def test_the_frameworks_signals_are_sent(signals, django_capture_on_commit_callbacks):
    result = tf.add.enqueue(1, 2)
    again = tf.add.using(idempotency_key="once").enqueue(1, 2)
    tf.add.using(idempotency_key="once").enqueue(1, 2)  # a repeat: nothing enqueued

    with django_capture_on_commit_callbacks(execute=True):
        assert run(result.id) == "succeeded"

    assert signals == [
        ("enqueued", result.id, TaskResultStatus.READY),
        ("enqueued", again.id, TaskResultStatus.READY),
        ("started", result.id, TaskResultStatus.RUNNING),
        ("finished", result.id, TaskResultStatus.SUCCESSFUL),
    ]


def test_a_cancelled_task_fails_with_its_cancellation(signals, django_capture_on_commit_callbacks):
    result = tf.waits_for_cancel.enqueue(3)

    with django_capture_on_commit_callbacks(execute=True):
        services.cancel(reloaded(result.id))

    back = tf.waits_for_cancel.get_result(result.id)
    assert back.status == TaskResultStatus.FAILED
    [error] = back.errors
    assert error.exception_class is TaskCancelled
    assert signals[-1] == ("finished", result.id, TaskResultStatus.FAILED)


def test_an_idempotency_key_makes_one_job():
    first = tf.add.using(idempotency_key="sum-1").enqueue(1, 2)
    second = tf.add.using(idempotency_key="sum-1").enqueue(1, 2)

    assert first.id == second.id
    assert Job.objects.count() == 1
    with pytest.raises(IdempotencyConflict):
        tf.add.using(idempotency_key="sum-1").enqueue(5, 5)


def test_current_job_is_only_there_while_a_task_runs():
    with pytest.raises(RuntimeError, match="only available while a task runs"):
        current_job()


def test_a_task_outside_the_backends_modules_is_refused_at_enqueue(tasks):
    tasks.TASKS = tasks_setting(modules="examples.tasks")

    with pytest.raises(InvalidTaskError, match="not in a module of this backend's"):
        tf.add.enqueue(1, 2)

    assert Job.objects.count() == 0


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("antigravity.fly", "may not run here"),
        ("os.system", "may not run here"),
        ("tests.jobs.task_functions.not_a_task", "is not a @task function"),
        ("tests.jobs.task_functions.TaskBoom", "is not a @task function"),
        ("tests.jobs.task_functions.add.func", "Cannot import"),
        ("tests.jobs.task_functions", "may not run here"),
    ],
)
def test_a_worker_runs_only_task_functions_of_allowed_modules(path, why):
    job = services.enqueue("tasks.run", {"task": path, "args": ["echo pwned"]}).job

    assert run(job) == "failed"

    job = reloaded(job)
    assert why in job.error
    assert job.attempts == 1
    assert "antigravity" not in sys.modules


def test_a_payload_naming_another_backend_is_refused():
    job = services.enqueue(
        "tasks.run", {"task": "tests.jobs.task_functions.add", "backend": "elsewhere"}
    ).job

    assert run(job) == "failed"
    assert "No task backend 'elsewhere'" in reloaded(job).error


def test_tasks_are_created_by_the_application_only(api, staff_api):
    job = {"type": "tasks.run", "payload": {"task": "tests.jobs.task_functions.add"}}

    refused = [api.post("/api/jobs/", job), staff_api.post("/api/jobs/", job)]

    assert [r.status_code for r in refused] == [400, 400]
    assert "created by the application" in refused[1].json()["errors"]["type"][0]
    assert Job.objects.count() == 0


def test_tasks_are_listed_with_the_other_jobs(staff_api, api):
    result = tf.add.enqueue(1, 2)

    listed = staff_api.get("/api/jobs/", params={"type": "tasks.run"}).json()
    mine = api.get("/api/jobs/").json()

    assert [(j["id"], j["type"]) for j in listed["results"]] == [(result.id, "tasks.run")]
    assert mine["results"] == []  # the application's jobs: staff see them


def test_the_backend_says_what_it_supports():
    backend = task_backends["default"]

    assert isinstance(backend, JobsiteBackend)
    assert backend.supports_defer and backend.supports_priority
    assert backend.supports_get_result and backend.supports_async_task


def test_tasks_show_in_the_dashboard_the_admin_and_metrics(client, admin_user, settings):
    settings.METRICS_TOKEN = "scrape-me"
    result = tf.add.enqueue(1, 2)
    assert run(result.id) == "succeeded"
    client.force_login(admin_user)

    dashboard = client.get("/dashboard/data/")
    admin_page = client.get(f"/admin/jobs/job/{result.id}/change/")
    metrics = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-me")

    assert dashboard.status_code == admin_page.status_code == metrics.status_code == 200
    assert "tasks.run" in dashboard.content.decode()
    assert "tests.jobs.task_functions.add" in admin_page.content.decode()
    assert 'jobsite_jobs{status="succeeded",type="tasks.run"} 1.0' in metrics.content.decode()


def test_a_job_may_run_on_another_queue_than_its_types():
    job = services.enqueue("system.noop", queue="emails").job

    assert job.queue == "emails"
    with pytest.raises(ValidationError) as refused:
        services.enqueue("system.noop", queue="nowhere")
    assert list(refused.value.detail) == ["queue"]
    assert Job.objects.count() == 1
