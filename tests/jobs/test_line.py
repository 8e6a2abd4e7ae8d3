"""A queued job's place in line (jobs/line.py): the jobs ahead of it, the estimate of its
start, and the `line` object of the job and report status endpoints."""

import uuid
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from jobs import controls, line
from jobs.audit import Via
from jobs.models import Held, Job, Priority, Scope, Status, WorkerHeartbeat
from jobs.store import COUNT_AHEAD_SQL, STATUS_LINE_SQL
from jobsite.api import etag_for
from reports.models import Report
from tests.engine import run
from tests.support import wait_for

LINE_KEYS = {"ahead", "ahead_capped", "estimated_start_at", "estimated_wait_seconds"}


@pytest.fixture(autouse=True)
def fresh_estimates():
    line.forget_cached()
    yield
    line.forget_cached()


@pytest.fixture
def now():
    return timezone.now()


def queued(now, seconds_ago: float, *, queue="default", priority=Priority.NORMAL, **fields) -> Job:
    """A queued job created `seconds_ago` before `now`."""
    job = Job.objects.create(type="system.noop", queue=queue, priority=priority, **fields)
    Job.objects.filter(id=job.id).update(created_at=now - timedelta(seconds=seconds_ago))
    job.refresh_from_db()
    return job


def finished(now, seconds: float, *, job_type="system.noop", status=Status.SUCCEEDED) -> Job:
    """A job of `job_type` that ran for `seconds` and ended a minute ago."""
    end = now - timedelta(minutes=1)
    return Job.objects.create(
        type=job_type,
        status=status,
        started_at=end - timedelta(seconds=seconds),
        finished_at=end,
    )


def worker(queues: list[str], concurrency: int, name: str = "w1") -> WorkerHeartbeat:
    now = timezone.now()
    return WorkerHeartbeat.objects.create(
        hostname=name, pid=1, queues=queues, concurrency=concurrency, started_at=now, seen_at=now
    )


# --- the jobs ahead ------------------------------------------------------------------


def test_ahead_counts_higher_priorities_and_older_jobs_of_the_same_queue(db, now):
    queued(now, 50)  # older, same priority: ahead
    queued(now, 40)  # older, same priority: ahead
    queued(now, 5, priority=Priority.HIGH)  # newer but higher: ahead
    job = queued(now, 30)
    queued(now, 20)  # newer, same priority: behind
    queued(now, 60, priority=Priority.LOW)  # older but lower: behind
    queued(now, 70, queue="reports")  # another queue
    Job.objects.create(type="system.noop", status=Status.RUNNING)  # taken already

    place = line.place_in_line(job, now)

    assert place.ahead == 3
    assert place.ahead_capped is False


def test_held_and_delayed_jobs_are_not_ahead(db, now):
    queued(now, 50, held=Held.PAUSED)
    queued(now, 45, held=Held.CONCURRENCY)
    queued(now, 40, run_at=now + timedelta(minutes=5))  # delayed: not due
    queued(now, 35, run_at=now - timedelta(seconds=1))  # due: ahead
    job = queued(now, 30)

    assert line.place_in_line(job, now).ahead == 1


def test_the_first_in_line_has_no_one_ahead(db, now):
    job = queued(now, 30)
    queued(now, 10)

    assert line.place_in_line(job, now).ahead == 0


@override_settings(JOBS_LINE_CAP=3)
def test_the_count_stops_at_the_cap(db, now):
    for seconds in range(40, 60):
        queued(now, seconds)
    job = queued(now, 30)
    for seconds in range(40, 43):
        queued(now, seconds - 30, priority=Priority.HIGH)

    place = line.place_in_line(job, now)

    assert (place.ahead, place.ahead_capped) == (3, True)
    assert line.in_words(place).startswith("3+ jobs ahead")


@override_settings(JOBS_LINE_CAP=3)
def test_exactly_the_cap_ahead_is_not_capped(db, now):
    for seconds in range(40, 43):
        queued(now, seconds)
    job = queued(now, 30)

    place = line.place_in_line(job, now)

    assert (place.ahead, place.ahead_capped) == (3, False)


def test_the_status_read_counts_the_jobs_ahead_as_the_line_does(db, now):
    """The status endpoint reads the row and the count together; each store agrees with
    `count_ahead`, and counts nothing for a job without a place."""
    from jobs.store import JobStore, PostgresJobStore

    queued(now, 50)
    queued(now, 45, held=Held.PAUSED)
    queued(now, 40, run_at=now + timedelta(minutes=5))
    queued(now, 5, priority=Priority.HIGH)
    job = queued(now, 30)
    queued(now, 20)
    delayed = queued(now, 10, run_at=now + timedelta(seconds=30))
    paused = queued(now, 10, held=Held.PAUSED)
    running = Job.objects.create(type="system.noop", status=Status.RUNNING)
    stores = [JobStore()] + ([PostgresJobStore()] if connection.vendor == "postgresql" else [])

    for store in stores:
        row = store.status_row(job.id, now=now, ahead_up_to=line.count_to())
        assert row["ahead"] == line.count_ahead(job, now) == 2
        assert row["id"] == job.id
        for other in (delayed, paused, running):
            assert store.status_row(other.id, now=now, ahead_up_to=3)["ahead"] is None
        assert store.status_row(uuid.uuid4(), now=now, ahead_up_to=3) is None


def test_held_delayed_running_and_finished_jobs_have_no_place(db, now):
    paused = queued(now, 5, held=Held.PAUSED)
    delayed = queued(now, 5, run_at=now + timedelta(seconds=30))
    running = Job.objects.create(type="system.noop", status=Status.RUNNING)
    done = finished(now, 3)

    assert [line.place_in_line(j, now) for j in (paused, delayed, running, done)] == [None] * 4


# --- the estimate ---------------------------------------------------------------------


def test_the_estimate_spreads_the_jobs_ahead_over_the_workers_slots(db, now):
    for _ in range(3):
        finished(now, 10)
    for seconds in range(40, 44):
        queued(now, seconds)
    job = queued(now, 30)

    worker(["default"], concurrency=2)
    two_slots = line.place_in_line(job, now)
    line.forget_cached()
    worker(["default", "reports"], concurrency=2, name="w2")
    worker(["reports"], concurrency=8, name="w3")  # takes another queue only
    four_slots = line.place_in_line(job, now)

    # 4 ahead of 10 s each: two slots take them in two rounds, four in one.
    assert two_slots.estimated_wait_seconds == 20
    assert four_slots.estimated_wait_seconds == 10
    assert four_slots.estimated_start_at == now + timedelta(seconds=10)


def test_the_estimate_follows_the_recent_run_times_of_the_type(db, now):
    worker(["default"], concurrency=1)
    for _ in range(3):
        finished(now, 30, job_type="other.type")  # not this type's
    finished(now, 99, status=Status.FAILED)  # only succeeded runs count
    finished(now, 4)
    finished(now, 8)
    queued(now, 40)
    job = queued(now, 30)

    quick = line.place_in_line(job, now)
    line.forget_cached()
    finished(now, 12)
    finished(now, 16)
    slower = line.place_in_line(job, now)

    assert quick.estimated_wait_seconds == 6  # one ahead, the mean of 4 and 8
    assert slower.estimated_wait_seconds == 10  # the mean of 4, 8, 12 and 16


@override_settings(JOBS_LINE_SAMPLE=2)
def test_the_estimate_goes_by_the_latest_runs_only(db, now):
    worker(["default"], concurrency=1)
    old = finished(now, 100)
    Job.objects.filter(id=old.id).update(finished_at=now - timedelta(hours=1))
    finished(now, 10)
    finished(now, 20)
    queued(now, 40)
    job = queued(now, 30)

    assert line.place_in_line(job, now).estimated_wait_seconds == 15


def test_running_jobs_hold_their_slots_for_the_rest_of_their_run(db, now):
    worker(["default"], concurrency=1)
    finished(now, 10)
    Job.objects.create(
        type="system.noop", status=Status.RUNNING, started_at=now - timedelta(seconds=4)
    )
    job = queued(now, 30)

    place = line.place_in_line(job, now)

    assert place.ahead == 0
    assert place.estimated_wait_seconds == 6  # the running job's 10 s, 4 of them gone
    assert line.in_words(place) == "next in line, about 5 s"


def test_without_a_worker_or_a_past_run_there_is_a_place_but_no_estimate(db, now):
    queued(now, 40)
    job = queued(now, 30)
    finished(now, 10)
    no_worker = line.place_in_line(job, now)
    line.forget_cached()
    Job.objects.filter(status=Status.SUCCEEDED).delete()
    worker(["default"], concurrency=4)
    no_history = line.place_in_line(job, now)

    for place in (no_worker, no_history):
        assert place.ahead == 1
        assert (place.estimated_start_at, place.estimated_wait_seconds) == (None, None)
    assert line.in_words(no_worker) == "2nd in line"


def test_stale_workers_give_no_slots(db, now):
    finished(now, 10)
    stale = worker(["default"], concurrency=4)
    WorkerHeartbeat.objects.filter(id=stale.id).update(seen_at=now - timedelta(hours=1))
    job = queued(now, 30)

    assert line.place_in_line(job, now).estimated_start_at is None


def test_start_after_frees_the_soonest_slot_first():
    assert line.start_after(0, 2, [], 10.0) == 0.0
    assert line.start_after(0, 2, [5.0, 7.0], 10.0) == 5.0
    assert line.start_after(1, 2, [5.0, 7.0], 10.0) == 7.0
    assert line.start_after(2, 2, [5.0, 7.0], 10.0) == 15.0
    assert line.start_after(5, 3, [], 10.0) == 10.0


# --- in words -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ahead", "wait", "words"),
    [
        (0, None, "next in line"),
        (0, 0, "next in line, about 5 s"),
        (1, 12, "2nd in line, about 10 s"),
        (2, 40, "3rd in line, about 40 s"),
        (3, 58, "4th in line, about 1 min"),
        (10, 130, "11th in line, about 2 min"),
        (11, 90, "12th in line, about 2 min"),
        (20, 5400, "21st in line, about 2 h"),
        (21, 7, "22nd in line, about 5 s"),
        (112, None, "113th in line"),
    ],
)
def test_a_place_in_words(ahead, wait, words):
    place = {
        "ahead": ahead,
        "ahead_capped": False,
        "estimated_start_at": None,
        "estimated_wait_seconds": wait,
    }
    assert line.in_words(place) == words


# --- the status endpoints --------------------------------------------------------------


def test_a_queued_jobs_status_says_its_place_and_nothing_about_the_jobs_ahead(api, other_user, now):
    worker(["default"], concurrency=1)
    finished(now, 10)
    theirs = queued(now, 60, owner=other_user, payload={"secret": "theirs"})
    theirs.message = "Their message"
    theirs.save()
    mine = api.post("/api/jobs/", {"type": "system.noop"}).json()

    status = api.get(f"/api/jobs/{mine['id']}/status/").json()
    detail = api.get(f"/api/jobs/{mine['id']}/").json()

    assert set(status) == {
        *("id", "status", "progress", "message", "updated_at", "expires_at", "line")
    }
    assert set(status["line"]) == LINE_KEYS
    assert status["line"]["ahead"] == 1
    assert status["line"]["ahead_capped"] is False
    assert status["line"]["estimated_wait_seconds"] == 10
    assert (detail["line"]["ahead"], detail["line"]["estimated_wait_seconds"]) == (1, 10)
    for body in (status, detail):
        text = str(body)
        assert str(theirs.id) not in text and "secret" not in text and "Their message" not in text
        assert other_user.username not in text


def test_only_queued_jobs_have_a_place(api, user):
    job = Job.objects.create(type="system.noop", owner=user, status=Status.RUNNING)
    paused = Job.objects.create(type="system.noop", owner=user, held=Held.PAUSED)

    for j in (job, paused):
        assert api.get(f"/api/jobs/{j.id}/status/").json()["line"] is None
        assert api.get(f"/api/jobs/{j.id}/").json()["line"] is None


def test_the_status_of_another_users_queued_job_is_404_and_staff_see_its_place(
    api, other_api, staff_api, anonymous_api, now
):
    job = api.post("/api/jobs/", {"type": "system.noop"}).json()
    path = f"/api/jobs/{job['id']}/status/"

    assert other_api.get(path).status_code == 404
    assert anonymous_api.get(path).status_code in (401, 403)
    assert staff_api.get(path).json()["line"]["ahead"] == 0


def test_the_etag_changes_as_the_jobs_ahead_are_taken(api, now):
    ahead = queued(now, 60)
    job = api.post("/api/jobs/", {"type": "system.noop"}).json()
    path = f"/api/jobs/{job['id']}/status/"

    first = api.get(path)
    unchanged = api.get(path, headers={"If-None-Match": first.headers["ETag"]})
    Job.objects.filter(id=ahead.id).update(status=Status.RUNNING)
    moved = api.get(path, headers={"If-None-Match": first.headers["ETag"]})

    assert first.json()["line"]["ahead"] == 1
    assert unchanged.status_code == 304
    assert moved.status_code == 200 and moved.json()["line"]["ahead"] == 0


def test_a_reports_status_and_detail_say_its_place_to_its_owner_only(api, other_api, now):
    queued(now, 60, queue="reports")
    report = api.post("/api/reports/", {"kind": "job_activity"}).json()

    status = api.get(f"/api/reports/{report['id']}/status/")
    detail = api.get(f"/api/reports/{report['id']}/").json()

    assert set(status.json()["line"]) == LINE_KEYS
    assert status.json()["line"]["ahead"] == 1
    assert detail["line"]["ahead"] == 1
    assert other_api.get(f"/api/reports/{report['id']}/status/").status_code == 404
    api.post(f"/api/reports/{report['id']}/cancel/")
    assert api.get(f"/api/reports/{report['id']}/status/").json()["line"] is None


def test_a_paused_reports_type_shows_no_place_but_why_it_waits(api, staff_user, now):
    controls.pause(Scope.TYPE, "reports.generate", by=staff_user, via=Via.API)
    report = api.post("/api/reports/", {"kind": "job_activity"}).json()
    job = Report.objects.get(id=report["id"]).job
    run(job)  # a worker handed its message holds it

    status = api.get(f"/api/reports/{report['id']}/status/").json()

    assert Job.objects.get(id=job.id).held == Held.PAUSED
    assert status["status"] == "queued" and status["line"] is None
    assert "paused" in status["message"].lower()


def test_the_reports_page_shows_a_queued_reports_place(client, user, now):
    client.force_login(user)
    queued(now, 60, queue="reports")
    queued(now, 50, queue="reports")
    client.post("/reports/", {"kind": "job_activity", "title": "March"})

    page = client.get("/reports/").content.decode()

    assert "3rd in line" in page


def test_the_schema_describes_the_line(api):
    schema = api.get("/api/schema/", headers={"Accept": "application/vnd.oai.openapi+json"}).json()
    components = schema["components"]["schemas"]

    for name in ("JobStatus", "ReportStatus", "JobDetail", "ReportDetail"):
        assert "line" in components[name]["properties"], name
    assert set(components["Line"]["properties"]) == LINE_KEYS


# --- PostgreSQL's plan ------------------------------------------------------------------

# 100,000 queued jobs, one a second, the oldest first in line; one in 1,000 is high. Behind
# them in time, a history of 200,000 finished jobs.
HISTORY_SQL = """
INSERT INTO jobs_job (id, type, payload, error, status, progress, message, attempts,
    max_attempts, snoozes, stalled_count, priority, queue, held, cancel_requested,
    created_at, updated_at, started_at, finished_at)
SELECT gen_random_uuid(), 'system.noop', '{}', '', 'succeeded', 100, '', 1, 3, 0, 0,
    5, 'default', '', false, %s - make_interval(secs => 100000 + i), now(), now(), now()
FROM generate_series(1, 200000) AS i
"""
DEEP_QUEUE_SQL = """
INSERT INTO jobs_job (id, type, payload, error, status, progress, message, attempts,
    max_attempts, snoozes, stalled_count, priority, queue, held, cancel_requested,
    created_at, updated_at)
SELECT gen_random_uuid(), 'system.noop', '{}', '', 'queued', 0, '', 0, 3, 0, 0,
    CASE WHEN i %% 1000 = 0 THEN 9 ELSE 5 END, 'default', '', false,
    %s - make_interval(secs => i), now()
FROM generate_series(1, 100000) AS i
"""


def _plans(job, now) -> list[str]:
    """The plan of the statement counting the jobs ahead of `job` (the PostgreSQL store's)."""
    params = {
        "queue": job.queue,
        "priority": job.priority,
        "created_at": job.created_at,
        "now": now,
        "up_to": settings.JOBS_LINE_CAP + 1,
    }
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, COSTS OFF) " + COUNT_AHEAD_SQL, params)
        return ["\n".join(row[0] for row in cursor.fetchall())]


def test_the_count_reads_only_the_jobs_ahead_from_the_line_index(transactional_db, now, settings):
    if connection.vendor != "postgresql":
        pytest.skip("reads PostgreSQL's query plan")
    settings.JOBS_LINE_CAP = 1000
    with connection.cursor() as cursor:
        cursor.execute(HISTORY_SQL, [now])
        cursor.execute(DEEP_QUEUE_SQL, [now])
        cursor.execute("VACUUM ANALYZE jobs_job")
    near_the_front = queued(now, 99_990.5)  # 100 high ones and 9 older ones ahead
    last = queued(now, 0)

    plans = _plans(near_the_front, now)

    (plan,) = plans  # one statement, both counts
    assert plan.count("Index Only Scan using job_queued_line") == 2, plan
    assert "Rows Removed by Filter" not in plan, plan
    assert "rows=100 loops" in plan and "rows=9 loops" in plan, plan
    assert line.place_in_line(near_the_front, now).ahead == 109
    # The status read counts in the same way, from the same index.
    params = {"id": near_the_front.id, "now": now, "up_to": settings.JOBS_LINE_CAP + 1}
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, COSTS OFF) " + STATUS_LINE_SQL, params)
        status_plan = "\n".join(row[0] for row in cursor.fetchall())
    assert status_plan.count("Index Only Scan using job_queued_line") == 2, status_plan
    assert "rows=100 loops" in status_plan and "rows=9 loops" in status_plan, status_plan
    place = line.place_in_line(last, now)
    assert (place.ahead, place.ahead_capped) == (1000, True)


@pytest.mark.worker
def test_a_worker_records_its_slots_for_the_estimate(start_worker):
    start_worker(queues=["reports"], concurrency=3, beat=False)

    wait_for(
        lambda: WorkerHeartbeat.objects.filter(queues=["reports"]).exists(),
        what="the worker's liveness row",
    )

    assert WorkerHeartbeat.objects.get(queues=["reports"]).concurrency == 3
    assert (line.worker_slots("reports"), line.worker_slots("default")) == (3, 0)


def test_a_status_etag_holds_while_only_the_estimated_wait_counts_down():
    start = timezone.now().replace(microsecond=0) + timedelta(seconds=60)
    start -= timedelta(seconds=start.second % 10)
    row = {"status": "queued", "progress": 0, "message": "", "updated_at": timezone.now()}

    def tag(ahead: int, start_at, wait: int) -> str:
        place = {
            "ahead": ahead,
            "ahead_capped": False,
            "estimated_start_at": start_at,
            "estimated_wait_seconds": wait,
        }
        return etag_for({**row, "line": place})

    assert tag(2, start, 40) == tag(2, start + timedelta(seconds=1), 39)
    assert tag(2, start, 40) != tag(1, start, 40)
    assert tag(2, start, 40) != tag(2, start + timedelta(seconds=30), 70)
    assert tag(2, None, None) != tag(2, start, 40)
