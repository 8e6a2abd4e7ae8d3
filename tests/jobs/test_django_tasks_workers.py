"""Django Tasks through real Celery workers: the README's example, enqueued from its view
and read back, and a task whose worker is killed mid-run."""

import pytest
from django.test import Client
from django_tasks import TaskResultStatus, task_backends

from jobs.models import Job, JobEffect
from tests.jobs import task_functions as tf
from tests.jobs.test_django_tasks import tasks_setting
from tests.support import wait_for

pytestmark = pytest.mark.worker

WORKER_ENV = {"JOBS_TASKS_MODULES": tf.TASK_MODULES}


@pytest.fixture(autouse=True)
def tasks(settings):
    settings.TASKS = tasks_setting()


def result_when(result_id: str, *statuses: str, timeout: float = 30):
    backend = task_backends["default"]
    return wait_for(
        lambda: (r := backend.get_result(result_id)).status in statuses and r,
        timeout=timeout,
        what=f"task {result_id} to become {' or '.join(statuses)}",
    )


@pytest.mark.urls("examples.urls")
def test_the_example_view_enqueues_a_task_a_worker_runs(start_worker, user, other_user):
    start_worker(env=WORKER_ENV)
    client, other = Client(), Client()
    client.force_login(user)
    other.force_login(other_user)

    started = client.post("/count/", {"text": "one two\n\nthree four five"})

    assert started.status_code == 202
    result_id = started.json()["id"]
    assert started.json()["status"] == "READY"
    result_when(result_id, TaskResultStatus.SUCCESSFUL)
    answer = client.get(f"/count/{result_id}/").json()
    assert answer == {
        "id": result_id,
        "status": "SUCCESSFUL",
        "attempts": 1,
        "result": {"user_id": user.id, "words": 5, "paragraphs": 2},
    }
    assert other.get(f"/count/{result_id}/").status_code == 404
    job = Job.objects.get(id=result_id)
    assert (job.type, job.progress) == ("tasks.run", 100)
    assert job.events.filter(kind="progress").exists()


def test_a_task_whose_worker_is_killed_runs_again_with_its_effect_once(start_worker):
    first = start_worker(lock_duration=3.0, sweep_interval=1.0, env=WORKER_ENV)
    result = tf.effect_then_sleep.enqueue(4)
    wait_for(
        lambda: JobEffect.objects.filter(job_id=result.id).exists(),
        what="the task to reserve its effect",
    )
    assert result_when(result.id, TaskResultStatus.RUNNING).attempts == 1
    first.kill()

    start_worker(lock_duration=3.0, sweep_interval=1.0, env=WORKER_ENV)
    back = result_when(result.id, TaskResultStatus.SUCCESSFUL, timeout=60)

    assert back.attempts == 2
    assert back.return_value == {"attempt": 2, "effect_here": False, "effects": 1}
    kinds = list(Job.objects.get(id=result.id).events.values_list("kind", flat=True))
    assert kinds.count("recovered") == 1
    assert kinds.count("started") == 2
    assert back.started_at < back.last_attempted_at
