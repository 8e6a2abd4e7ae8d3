"""The dashboard's history: jobs finished per time bucket by status, p50/p95 of wait and
run times per type, jobs per queue; as JSON for staff at /dashboard/history/ and as
/metrics lines."""

import random
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection, connections, transaction
from django.db.models import Sum
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from jobs import history, retention, services, sweepers
from jobs.models import Held, HistoryMark, HistoryRollup, Job, Status
from tests.engine import job_type, reloaded, run, run_to_the_end
from tests.support import run_in_threads

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 30, 12, 30, 30, tzinfo=UTC)
HOUR, DAY = history.WINDOWS["hour"], history.WINDOWS["day"]


def ended(
    finished_at: datetime,
    status: str = Status.SUCCEEDED,
    *,
    type_name: str = "system.noop",
    ran: float | None = 1.0,
    waited: float = 1.0,
    attempts: int = 1,
    queue: str = "default",
) -> Job:
    """A job that ended at `finished_at` after waiting `waited` s and running `ran` s
    (None: it never started)."""
    started_at = None if ran is None else finished_at - timedelta(seconds=ran)
    job = Job.objects.create(
        type=type_name, status=status, attempts=attempts, queue=queue, finished_at=finished_at
    )
    created_at = (started_at or finished_at) - timedelta(seconds=waited)
    Job.objects.filter(id=job.id).update(created_at=created_at, started_at=started_at)
    return job


def counts(bucket: dict) -> tuple[int, int, int, int]:
    return (bucket["succeeded"], bucket["failed"], bucket["cancelled"], bucket["expired"])


def test_the_last_hour_has_a_bucket_per_minute_ending_with_the_minute_under_way():
    ended(NOW - timedelta(seconds=20))  # 12:30:10
    ended(NOW - timedelta(seconds=25), Status.FAILED)  # 12:30:05
    ended(datetime(2026, 11, 30, 12, 29, tzinfo=UTC), Status.CANCELLED)  # a bucket's first instant
    ended(datetime(2026, 11, 30, 11, 31, tzinfo=UTC), Status.EXPIRED, ran=None)  # the first bucket
    ended(datetime(2026, 11, 30, 11, 30, 59, 999999, tzinfo=UTC))  # just before the window

    buckets = history.finished_per_bucket(HOUR, NOW)

    assert len(buckets) == 60
    assert buckets[0]["start"] == datetime(2026, 11, 30, 11, 31, tzinfo=UTC)
    assert buckets[-1]["start"] == datetime(2026, 11, 30, 12, 30, tzinfo=UTC)
    assert counts(buckets[-1]) == (1, 1, 0, 0)
    assert counts(buckets[-2]) == (0, 0, 1, 0)
    assert counts(buckets[0]) == (0, 0, 0, 1)
    assert sum(sum(counts(b)) for b in buckets) == 4
    assert history.finished_totals(buckets) == {
        "succeeded": 1,
        "failed": 1,
        "cancelled": 1,
        "expired": 1,
    }
    assert history.finished_counts(HOUR, NOW) == history.finished_totals(buckets)


def test_the_last_day_has_a_bucket_per_quarter_hour():
    ended(NOW)  # 12:30:30: the bucket under way
    for minutes_ago in (5, 14):  # 12:25:30, 12:16:30: the 12:15 bucket
        ended(NOW - timedelta(minutes=minutes_ago))
    ended(NOW - timedelta(hours=3), Status.FAILED)  # 09:30:30: the 09:30 bucket
    ended(NOW - timedelta(hours=25))  # outside

    buckets = history.finished_per_bucket(DAY, NOW)

    assert len(buckets) == 96
    assert buckets[-1]["start"] == datetime(2026, 11, 30, 12, 30, tzinfo=UTC)
    assert buckets[0]["start"] == datetime(2026, 11, 29, 12, 45, tzinfo=UTC)
    assert counts(buckets[-1]) == (1, 0, 0, 0)
    assert counts(buckets[-2]) == (2, 0, 0, 0)
    by_start = {b["start"]: b for b in buckets}
    assert counts(by_start[datetime(2026, 11, 30, 9, 30, tzinfo=UTC)]) == (0, 1, 0, 0)
    assert history.finished_totals(buckets)["succeeded"] == 3
    assert history.finished_totals(history.finished_per_bucket(HOUR, NOW))["failed"] == 0


def test_p50_and_p95_of_run_and_wait_times_per_type():
    for seconds in (1, 2, 3, 4, 10):
        ended(NOW - timedelta(minutes=5), ran=seconds, waited=seconds * 10)
    ended(NOW - timedelta(minutes=6), Status.FAILED, type_name="system.sleep", ran=6, waited=0.5)
    # Retried: the start on its row is its last attempt's, so it has no wait time.
    ended(NOW - timedelta(minutes=7), Status.FAILED, type_name="system.sleep", ran=2, attempts=3)
    # Cancelled or expired: not a run.
    ended(NOW - timedelta(minutes=8), Status.CANCELLED, type_name="system.sleep", ran=500)
    ended(NOW - timedelta(minutes=8), Status.EXPIRED, type_name="system.sleep", ran=None)
    # Only in the day.
    ended(NOW - timedelta(hours=5), type_name="system.sleep", ran=100, waited=100)

    hour = {row["type"]: row for row in history.durations(HOUR, NOW)}
    day = {row["type"]: row for row in history.durations(DAY, NOW)}

    assert hour["system.noop"] == {
        "type": "system.noop",
        "runs": 5,
        "run_p50": 3.0,
        "run_p95": 8.8,  # 4 + (10 - 4) * 0.8, between the closest ranks
        "waits": 5,
        "wait_p50": 30.0,
        "wait_p95": 88.0,
    }
    assert hour["system.sleep"] == {
        "type": "system.sleep",
        "runs": 2,
        "run_p50": 4.0,
        "run_p95": 5.8,
        "waits": 1,
        "wait_p50": 0.5,
        "wait_p95": 0.5,
    }
    assert (day["system.sleep"]["runs"], day["system.sleep"]["waits"]) == (3, 2)
    assert day["system.sleep"]["run_p95"] == pytest.approx(6 + (100 - 6) * 0.9)


def test_a_type_whose_jobs_all_retried_has_run_times_and_no_wait_times():
    ended(NOW - timedelta(minutes=1), ran=3, attempts=2)

    [row] = history.durations(HOUR, NOW)

    assert (row["runs"], row["run_p50"], row["waits"], row["wait_p50"]) == (1, 3.0, 0, None)


def test_percentiles_interpolate_like_postgresql():
    assert history.percentile([5], 0.95) == 5
    assert history.percentile([1, 2, 3, 4], 0.5) == 2.5
    assert history.percentile([10, 1, 4, 3, 2], 0.95) == pytest.approx(8.8)


def test_jobs_run_by_the_engine_are_timed_from_their_creation_and_claim():
    job = services.enqueue("system.noop").job
    now = timezone.now()
    Job.objects.filter(id=job.id).update(created_at=now - timedelta(seconds=30))

    assert run(job, now=now - timedelta(seconds=10)) == "succeeded"

    [row] = history.durations(HOUR)
    assert (row["type"], row["waits"], row["wait_p50"]) == ("system.noop", 1, 20.0)
    assert row["run_p50"] == pytest.approx(10, abs=2)
    assert history.finished_totals(history.finished_per_bucket(HOUR))["succeeded"] == 1


def test_a_job_the_engine_retried_counts_its_run_but_not_its_wait():
    attempts = []

    def fails_once(ctx):
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("flaky")

    with job_type(fails_once, backoff_base=0) as jt:
        job = services.enqueue(jt.name).job
        assert run_to_the_end(job) == ["retry", "succeeded"]
        assert reloaded(job).attempts == 2

        [row] = history.durations(HOUR)

    assert (row["type"], row["runs"], row["waits"], row["wait_p50"]) == (jt.name, 1, 0, None)


def test_queue_depths_count_waiting_held_and_running_jobs_per_queue():
    for _ in range(3):
        services.enqueue("system.noop")
    held = services.enqueue("system.noop").job
    Job.objects.filter(id=held.id).update(held=Held.PAUSED)
    running = services.enqueue("system.noop").job
    Job.objects.filter(id=running.id).update(status=Status.RUNNING)
    ended(NOW, queue="default")
    Job.objects.create(type="system.noop", queue="elsewhere")

    depths = {row["queue"]: row for row in history.queue_depths({"default": 7})}

    assert depths["default"] == {
        "queue": "default",
        "waiting": 3,
        "held": 1,
        "running": 1,
        "broker": 7,
    }
    assert depths["emails"] == {
        "queue": "emails",
        "waiting": 0,
        "held": 0,
        "running": 0,
        "broker": None,
    }
    assert list(depths)[-1] == "elsewhere" and depths["elsewhere"]["waiting"] == 1
    assert history.queue_depths()[0]["broker"] is None


# --- the JSON endpoint ----------------------------------------------------------------


@pytest.fixture
def staff(staff_user) -> Client:
    client = Client()
    client.force_login(staff_user)
    return client


def test_staff_read_the_history_of_the_last_hour_or_day(staff):
    now = timezone.now()
    ended(now - timedelta(seconds=1), ran=2, waited=4)
    ended(now - timedelta(hours=3), Status.FAILED)
    services.enqueue("system.noop")

    hour = staff.get("/dashboard/history/").json()
    day = staff.get("/dashboard/history/?window=day").json()

    assert (hour["window"], hour["bucket_seconds"], len(hour["finished"])) == ("hour", 60, 60)
    assert sum(b["succeeded"] for b in hour["finished"]) == 1
    assert hour["finished_totals"] == {"succeeded": 1, "failed": 0, "cancelled": 0, "expired": 0}
    assert hour["statuses"] == ["succeeded", "failed", "cancelled", "expired"]
    assert hour["durations"] == [
        {
            "type": "system.noop",
            "runs": 1,
            "run_p50": 2.0,
            "run_p95": 2.0,
            "waits": 1,
            "wait_p50": 4.0,
            "wait_p95": 4.0,
        }
    ]
    default = next(q for q in hour["queues"] if q["queue"] == "default")
    assert default["waiting"] == 1 and default["broker"] is not None
    assert (day["window"], day["bucket_seconds"], len(day["finished"])) == ("day", 900, 96)
    assert day["finished_totals"]["failed"] == 1
    datetime.fromisoformat(day["finished"][0]["start"])


def test_an_unknown_window_is_a_400_naming_the_field(staff):
    response = staff.get("/dashboard/history/?window=week")

    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid"
    assert "week" in body["errors"]["window"][0] and "hour" in body["detail"]


def test_the_history_is_for_staff_only(client, user):
    anonymous = client.get("/dashboard/history/")
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith("/accounts/login/")

    client.force_login(user)
    assert client.get("/dashboard/history/").status_code == 403
    assert client.post("/dashboard/history/").status_code == 403


def test_a_broker_that_does_not_answer_leaves_the_database_figures(staff, private_broker):
    services.enqueue("system.noop")
    private_broker.pause()
    try:
        body = staff.get("/dashboard/history/").json()
    finally:
        private_broker.resume()

    default = next(q for q in body["queues"] if q["queue"] == "default")
    assert (default["waiting"], default["broker"]) == (1, None)


# --- /metrics ----------------------------------------------------------------------------


def scrape(client: Client) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.content
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def test_metrics_expose_the_same_figures(staff):
    now = timezone.now()
    for seconds in (1, 2, 3):
        ended(now - timedelta(seconds=5), ran=seconds, waited=seconds * 2)
    ended(now - timedelta(hours=2), Status.FAILED, ran=10, waited=1)
    services.enqueue("email.send", {"to": ["a@example.com"], "subject": "s", "body": "b"})

    samples = scrape(staff)

    def finished(status: str, window: str) -> float:
        return samples[("jobsite_jobs_finished_recent", (("status", status), ("window", window)))]

    def timing(name: str, quantile: str, window: str) -> float:
        labels = (("quantile", quantile), ("type", "system.noop"), ("window", window))
        return samples[(name, labels)]

    assert (finished("succeeded", "hour"), finished("failed", "hour")) == (3, 0)
    assert (finished("succeeded", "day"), finished("failed", "day")) == (3, 1)
    assert finished("expired", "day") == 0
    assert timing("jobsite_job_run_seconds", "0.5", "hour") == 2
    assert timing("jobsite_job_run_seconds", "0.95", "hour") == pytest.approx(2.9)
    assert timing("jobsite_job_wait_seconds", "0.5", "hour") == 4
    assert timing("jobsite_job_run_seconds", "0.5", "day") == 2.5
    assert samples[("jobsite_queue_jobs", (("queue", "emails"), ("state", "waiting")))] == 1
    assert samples[("jobsite_queue_jobs", (("queue", "emails"), ("state", "running")))] == 0


# --- cost ---------------------------------------------------------------------------------


def test_the_history_reads_the_finished_rows_through_the_retention_indexes():
    if connection.vendor != "postgresql":
        pytest.skip("reads PostgreSQL's query plans")
    # A month of finished jobs, so the planner weighs a window against a large table.
    statuses = [Status.SUCCEEDED] * 3 + [Status.FAILED, Status.CANCELLED]
    Job.objects.bulk_create(
        Job(
            type="system.noop",
            status=statuses[i % len(statuses)],
            attempts=1,
            started_at=NOW - timedelta(minutes=15 * i, seconds=1),
            finished_at=NOW - timedelta(minutes=15 * i),
        )
        for i in range(3000)
    )
    since, _ = history.bounds(DAY, NOW)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Job._meta.db_table}")
        plans = [
            history._finished_since(since).filter(status__in=group).explain()
            for group in history.STATUS_GROUPS
        ]
        plans += [history._ran_query(since, status).explain() for status in history.RAN]
        # ANALYZE's row count outlives the test's rollback: leave the next tests' planner
        # an empty table, as it found it.
        Job.objects.all().delete()
        cursor.execute(f"ANALYZE {Job._meta.db_table}")

    for plan, index in zip(
        plans, ["job_purge_succeeded", "job_purge_failed", "job_purge_succeeded"], strict=False
    ):
        assert index in plan and "Seq Scan" not in plan, plan
    # The failed rows that ran: job_purge_failed, or the failed list's own index.
    assert "Index" in plans[3] and "Seq Scan" not in plans[3], plans[3]


# --- rolled-up minutes ------------------------------------------------------------------


def many_ended(count: int, *, since: timedelta, seed: int = 7) -> None:
    """`count` jobs of two types that ended over the `since` before NOW, with run and wait
    times spread from milliseconds to minutes, some retried, some cancelled or expired."""
    rng = random.Random(seed)
    statuses = [Status.SUCCEEDED] * 6 + [Status.FAILED, Status.CANCELLED, Status.EXPIRED]
    drawn = []
    for _ in range(count):
        finished_at = NOW - since * rng.random()
        status = rng.choice(statuses)
        ran = None if status == Status.EXPIRED else rng.lognormvariate(0, 2)
        started_at = None if ran is None else finished_at - timedelta(seconds=ran)
        waited = timedelta(seconds=rng.lognormvariate(-1, 2))
        drawn.append(
            Job(
                type=rng.choice(["system.noop", "system.sleep"]),
                status=status,
                attempts=rng.choice([1, 1, 1, 2]),
                started_at=started_at,
                finished_at=finished_at,
                created_at=(started_at or finished_at) - waited,
            )
        )
    created_at = [job.created_at for job in drawn]
    created = Job.objects.bulk_create(drawn)
    # auto_now_add set created_at on insert: put back the drawn one.
    for job, moment in zip(created, created_at, strict=True):
        job.created_at = moment
    Job.objects.bulk_update(created, ["created_at"], batch_size=500)


def roll_up_all(now: datetime = NOW) -> int:
    minutes = 0
    while rolled := history.roll_up(now):
        minutes += rolled
    return minutes


def figures(now: datetime = NOW) -> dict:
    return {
        name: {
            "buckets": history.finished_per_bucket(win, now),
            "counts": history.finished_counts(win, now),
            "durations": history.durations(win, now),
        }
        for name, win in history.WINDOWS.items()
    }


def assert_close(rolled: dict, exact: dict) -> None:
    """Counts equal; percentiles within the histogram's stated error (or its floor)."""
    for name in history.WINDOWS:
        assert rolled[name]["buckets"] == exact[name]["buckets"]
        assert rolled[name]["counts"] == exact[name]["counts"]
        assert len(rolled[name]["durations"]) == len(exact[name]["durations"])
        for got, want in zip(rolled[name]["durations"], exact[name]["durations"], strict=True):
            assert (got["type"], got["runs"], got["waits"]) == (
                want["type"],
                want["runs"],
                want["waits"],
            )
            for key in ("run_p50", "run_p95", "wait_p50", "wait_p95"):
                # The figures are rounded to the millisecond.
                assert got[key] == pytest.approx(
                    want[key], rel=history.ERROR, abs=history.Histogram.FLOOR + 0.001
                ), (name, got["type"], key)


def rolled_up_jobs() -> int:
    minutes = HistoryRollup.objects.filter(seconds=60)
    return minutes.aggregate(total=Sum("finished"))["total"] or 0


def test_counts_and_percentiles_from_rolled_up_minutes_match_the_table():
    many_ended(1500, since=timedelta(hours=30))
    exact = figures()

    minutes = roll_up_all()

    # From a day back (the first pass's start, 12:30) to the last minute that closed LAG
    # ago (12:27, before 12:28).
    mark = history.rolled_up_to()
    assert mark == datetime(2026, 11, 30, 12, 28, tzinfo=UTC)
    assert minutes == 24 * 60 - 2
    assert not HistoryRollup.objects.filter(start__gte=mark).exists()
    # The quarter hours hold what their minutes hold, the last one ending at 12:15.
    quarters = HistoryRollup.objects.filter(seconds=900)
    assert (
        quarters.aggregate(total=Sum("finished"))["total"]
        == Job.objects.filter(
            finished_at__gte=datetime(2026, 11, 29, 12, 30, tzinfo=UTC),
            finished_at__lt=datetime(2026, 11, 30, 12, 15, tzinfo=UTC),
        ).count()
    )
    assert quarters.latest("start").start == datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    assert (
        rolled_up_jobs()
        == Job.objects.filter(
            finished_at__gte=datetime(2026, 11, 29, 12, 30, tzinfo=UTC), finished_at__lt=mark
        ).count()
    )
    assert_close(figures(), exact)
    # The charts draw the same in the same shape.
    assert history.charts(DAY, NOW)["finished_totals"] == exact["day"]["counts"]


def test_the_minutes_since_the_mark_are_read_from_the_job_table():
    roll_up_all()
    mark = history.rolled_up_to()
    ended(mark - timedelta(seconds=30), ran=2)  # in a minute rolled up already: too late
    ended(mark + timedelta(seconds=1), ran=4)  # 12:28:01, after the mark
    ended(NOW, Status.FAILED, ran=8)  # 12:30:30, the minute under way

    hour = history.finished_per_bucket(HOUR, NOW)
    [row] = history.durations(HOUR, NOW)

    assert counts(hour[-3]) == (1, 0, 0, 0) and counts(hour[-1]) == (0, 1, 0, 0)
    # A job whose end lands in a minute already rolled up is not counted: LAG is long
    # enough that none does.
    assert counts(hour[-4]) == (0, 0, 0, 0)
    assert (row["runs"], row["run_p50"], row["run_p95"]) == (2, 6.0, 7.8)


def test_a_minute_is_rolled_up_once_however_often_the_step_runs():
    many_ended(300, since=timedelta(hours=2))
    exact = figures()

    roll_up_all()
    assert history.roll_up(NOW) == 0
    assert history.roll_up(NOW + timedelta(seconds=20)) == 0  # 12:30:50: 12:28 ended 1:50 ago
    assert history.roll_up(NOW + timedelta(seconds=40)) == 1  # 12:31:10: 12:28 ended 2:10 ago
    assert history.rolled_up_to() == datetime(2026, 11, 30, 12, 29, tzinfo=UTC)

    assert_close(figures(), exact)
    assert rolled_up_jobs() == Job.objects.filter(finished_at__lt=history.rolled_up_to()).count()


def test_the_sweep_rolls_up_the_closed_minutes():
    ended(timezone.now() - timedelta(minutes=10))

    # The first pass starts a day back and catches up a quarter hour at a time (CATCH_UP).
    assert sweepers.sweep()["rolled_up"] == history.CATCH_UP
    while sweepers.sweep()["rolled_up"]:
        pass

    assert HistoryRollup.objects.get(seconds=60).finished == 1


@pytest.mark.django_db(transaction=True)
def test_roll_ups_at_the_same_moment_count_each_minute_once():
    if connection.vendor != "postgresql":
        pytest.skip("SQLite runs one writer at a time: there is no race to lose")
    many_ended(400, since=timedelta(hours=3))
    exact = figures()

    def roll_up_in_thread(_: int) -> int:
        try:
            return roll_up_all()
        finally:
            connections.close_all()

    minutes = run_in_threads(4, roll_up_in_thread)

    assert sum(minutes) == 24 * 60 - 2
    assert HistoryMark.objects.get().rolled_up_to == datetime(2026, 11, 30, 12, 28, tzinfo=UTC)
    assert rolled_up_jobs() == Job.objects.filter(finished_at__lt=history.rolled_up_to()).count()
    assert_close(figures(), exact)


def test_the_history_outlives_the_purge_of_the_job_rows():
    many_ended(300, since=timedelta(hours=20))
    roll_up_all()
    # Only rolled-up jobs, so that the figures before and after the purge compare.
    Job.objects.filter(finished_at__gte=history.rolled_up_to()).delete()
    exact = figures()

    # Retention deletes the job rows (well past any policy), not the rolled-up minutes.
    retention.purge_finished(now=NOW + timedelta(days=400))
    assert not Job.objects.exists()

    assert_close(figures(), exact)
    assert sum(figures()["day"]["counts"].values()) == rolled_up_jobs() > 250


def test_the_purge_job_deletes_the_rolled_up_minutes_past_the_longest_window():
    old = timezone.now() - history.KEEP_ROLLUPS_FOR - timedelta(minutes=1)
    for seconds in (60, 900):
        HistoryRollup.objects.create(
            start=old, seconds=seconds, type="system.noop", status="succeeded", finished=3
        )
    HistoryRollup.objects.create(
        start=timezone.now() - timedelta(hours=2),
        seconds=60,
        type="system.noop",
        status="failed",
        finished=1,
    )
    job = services.enqueue("system.purge").job

    assert run(job) == "succeeded"

    assert reloaded(job).result["history_rollups"] == 2
    assert list(HistoryRollup.objects.values_list("status", flat=True)) == ["failed"]


def test_histogram_bins_hold_each_time_within_the_stated_error():
    rng = random.Random(3)
    times = [0.0011, 0.5, 1.0, 2.0, 59.9, 3600.0] + [rng.expovariate(0.1) for _ in range(200)]
    for seconds in times:
        value = history.Histogram.value(history.Histogram.bin(seconds))
        assert abs(value - seconds) <= history.ERROR * seconds + 1e-12
    assert history.Histogram.value(history.Histogram.bin(0.0004)) == 0.0
    assert history.Histogram.bin(-3) == 0
    assert history.ERROR < 0.045
