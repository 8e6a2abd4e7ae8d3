"""PostgreSQL restarted under load, twice (a fast shutdown, then an immediate one, which
the next start recovers from as after a crash), with the production layout running
on a PostgreSQL and a Redis of the test's own.

While the database is down the API answers 503 JSON saying so, each request within a
few seconds, and pages a plain 503; no request gets a 500. Afterwards every job posted
ends once, Beat fires and picks up a new schedule, and the sweeper dispatches the jobs
that wait for it.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import requests

from jobsite.embedded_redis import EmbeddedRedis
from tests.servers import PostgresServer, postgres_bin_dir
from tests.stack import Stack
from tests.support import Api, wait_for

pytestmark = [
    pytest.mark.worker,
    pytest.mark.skipif(postgres_bin_dir() is None, reason="no PostgreSQL server installed"),
]

# Generous: the promise is "quickly", not a figure; a hang would take the client's 30 s.
ANSWER_WITHIN = 5.0
LOCK_DURATION = 12.0  # a retry window of 3 s (a quarter of it)


@dataclass
class Answer:
    path: str
    sent: float
    took: float
    status: int
    code: str | None
    retry_after: str | None
    content_type: str


def call(api: Api, method: str, path: str, **body) -> tuple[Answer, dict]:
    """Send a request; its answer, and its JSON body if any. A connection the server
    dropped counts as status 0."""
    sent = time.monotonic()
    try:
        response = api.request(method, path, json=body or None)
    except requests.ConnectionError:
        return Answer(path, sent, time.monotonic() - sent, 0, None, None, ""), {}
    content_type = response.headers.get("Content-Type", "")
    data = response.json() if content_type.startswith("application/json") else {}
    answer = Answer(
        path,
        sent,
        time.monotonic() - sent,
        response.status_code,
        data.get("code"),
        response.headers.get("Retry-After"),
        content_type,
    )
    return answer, data


class JobStream:
    """Posts short sleeps, about ten a second, from a thread, until stopped."""

    def __init__(self, api: Api):
        self.api = api
        self.answers: list[Answer] = []
        self.ids: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            payload = {"seconds": round(random.uniform(0.2, 0.5), 2)}
            # Half report progress as they go (and meet the outage mid-run), half only
            # write at their start and end.
            payload["checkpoints"] = random.random() < 0.5
            answer, body = call(
                self.api, "POST", "/api/jobs/", type="system.sleep", payload=payload
            )
            if answer.status == 202:
                self.ids.append(body["id"])
            self.answers.append(answer)


def probe_while_down(api: Api, job_id: str, seconds: float) -> list[Answer]:
    """Ask the API, a page and /health/ over and over while the database is down."""
    page = Api(api.base_url, token=None)
    page.session.cookies.set("sessionid", "a-session-the-database-would-know")
    answers = []
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        answers.append(call(api, "GET", f"/api/jobs/{job_id}/")[0])
        answers.append(call(api, "GET", "/api/me/")[0])
        answers.append(call(page, "GET", "/reports/")[0])
        answers.append(call(page, "GET", "/health/")[0])
    return answers


class Database:
    """Reads of the stack's database, from the test, over a connection of its own."""

    def __init__(self, url: str):
        self.url = url

    def rows(self, query: str, *params) -> list[tuple]:
        with psycopg.connect(self.url, connect_timeout=3) as conn:
            return conn.execute(query, params).fetchall()

    def jobs(self) -> dict[str, tuple]:
        return {
            str(job_id): (status, attempts)
            for job_id, status, attempts in self.rows("SELECT id, status, attempts FROM jobs_job")
        }

    def events(self, kind: str) -> dict[str, int]:
        return {
            str(job_id): count
            for job_id, count in self.rows(
                "SELECT job_id, count(*) FROM jobs_jobevent WHERE kind = %s GROUP BY job_id", kind
            )
        }


@pytest.fixture
def postgres():
    server = PostgresServer()
    server.start()
    yield server
    server.destroy()


@pytest.fixture
def stack(postgres, tmp_path, request):
    broker = EmbeddedRedis(data_dir=tmp_path / "redis", persist=False)
    broker.start()
    stack = Stack(
        database_url=postgres.create_database("jobsite"),
        redis_url=broker.url,
        log_dir=tmp_path / "logs",
        workers=["worker"],
        concurrency={"worker": 4},
        lock_duration=LOCK_DURATION,
        sweep_interval=1.0,
        # Delayed jobs wait in the database for the sweeper, whatever their delay.
        env={"JOBS_BROKER_DELAY_MAX": "0"},
    )
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        broker.stop()
        if getattr(request.node, "rep_call", None) and request.node.rep_call.failed:
            print(stack.logs())


def restart(postgres: PostgresServer, mode: str, api: Api, job_id: str, down_for: float):
    """Stop PostgreSQL (`mode`), probe the stack while it is down, start it again."""
    postgres.stop(mode)
    answers = probe_while_down(api, job_id, down_for)
    postgres.start()
    return answers


def test_a_database_restarted_under_load_answers_503_then_every_job_ends_once(postgres, stack):
    database = Database(postgres.url("jobsite"))
    api = stack.api("operator", staff=True)
    stream = JobStream(api)
    stream.start()
    try:
        wait_for(lambda: len(stream.ids) >= 10, timeout=20, what="jobs to be posted")
        some_job = stream.ids[0]

        during = restart(postgres, "fast", api, some_job, down_for=1.5)
        posted = len(stream.ids)
        wait_for(lambda: len(stream.ids) > posted, timeout=20, what="a job posted after it")
        api.wait_for_status(stream.ids[posted], "succeeded", timeout=30)

        during += restart(postgres, "immediate", api, some_job, down_for=4.0)
        back = time.monotonic()
        due = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
        # (/bulk/: POST /api/jobs/ sends a delayed job's message at once, with an ETA.)
        response = api.post(
            "/api/jobs/bulk/", {"jobs": [{"type": "system.noop", "run_at": due}] * 3}
        )
        delayed = [job["id"] for job in response.json()["jobs"]]
        stack.manage("shell", "-c", NEW_SCHEDULE)
    finally:
        stream.stop()

    # While down: 503s that say why, quickly; /health/ stays JSON; never a 500.
    answers = during + stream.answers
    assert max(a.took for a in answers) < ANSWER_WITHIN, sorted(a.took for a in answers)[-5:]
    assert not [a for a in answers if a.status not in (200, 202, 503)]
    for path in (f"/api/jobs/{some_job}/", "/api/me/"):
        unavailable = [a for a in during if a.path == path and a.status == 503]
        assert unavailable, f"{path} never answered 503 while the database was down"
        assert {(a.code, a.retry_after) for a in unavailable} == {("database_unavailable", "5")}
    pages = [a for a in during if a.path == "/reports/"]
    assert pages and {(a.status, a.content_type.split(";")[0]) for a in pages} == {
        (503, "text/html")
    }
    health = [a for a in during if a.path == "/health/"]
    assert {(a.status, a.content_type) for a in health} == {(503, "application/json")}
    refused_posts = [a for a in stream.answers if a.status == 503]
    assert refused_posts and {a.code for a in refused_posts} == {"database_unavailable"}

    # Afterwards: every job ends, once.
    def all_ended() -> bool:
        return all(status == "succeeded" for status, _ in database.jobs().values())

    wait_for(all_ended, timeout=LOCK_DURATION + 25, interval=0.5, what="every job to succeed")
    drained = time.monotonic() - back
    jobs = database.jobs()
    assert set(stream.ids) | set(delayed) <= set(jobs)
    assert database.events("succeeded") == {job_id: 1 for job_id in jobs}
    # The sweeper sent the delayed jobs, due after the restarts: nothing else sends them.
    assert all(database.events("dispatched").get(job_id) == 1 for job_id in delayed)
    started = database.events("started")
    assert {job_id: started.get(job_id) for job_id in jobs} == {
        job_id: attempts for job_id, (_, attempts) in jobs.items()
    }
    # A second attempt only where an outage cut the first short: the job was recovered
    # after its lock expired, or its handler met the outage and it was retried.
    again = {job_id for job_id, (_, attempts) in jobs.items() if attempts > 1}
    explained = set(database.events("recovered")) | set(database.events("retry_scheduled"))
    assert again <= explained
    assert max(attempts for _, attempts in jobs.values()) <= 2

    # Beat carries on: it reads a schedule added after the restarts and fires it.
    wait_for(
        lambda: database.rows(
            "SELECT 1 FROM jobs_job WHERE idempotency_key LIKE %s", "schedule:tick:%"
        ),
        timeout=15,
        what="the new schedule to fire",
    )
    assert all(p.alive() for p in stack.processes.values())
    print(
        f"\n{len(jobs)} jobs, {len(again)} ran twice; {len(refused_posts)} posts refused "
        f"(503) while down; slowest answer {max(a.took for a in answers):.2f}s; every job "
        f"ended {drained:.1f}s after the second restart"
    )


NEW_SCHEDULE = """
import json
from django_celery_beat.models import IntervalSchedule, PeriodicTask
PeriodicTask.objects.create(
    name="tick",
    task="jobs.enqueue_scheduled",
    interval=IntervalSchedule.objects.create(every=1, period=IntervalSchedule.SECONDS),
    kwargs=json.dumps({"type": "system.noop", "payload": {}, "schedule": "tick"}),
    queue="default",
)
"""


@pytest.fixture
def silent_database():
    """A TCP port that accepts connections and never says a word, as a database host
    that hangs does: only a connect timeout ends the wait."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"postgres://postgres@127.0.0.1:{listener.getsockname()[1]}/jobsite"


def test_a_database_that_never_answers_costs_a_request_the_connect_timeout(
    silent_database, tmp_path
):
    broker = EmbeddedRedis(data_dir=tmp_path / "redis", persist=False)
    broker.start()
    stack = Stack(
        database_url=silent_database,
        redis_url=broker.url,
        log_dir=tmp_path / "logs",
        workers=[],
        beats=0,
        env={"DATABASE_CONNECT_TIMEOUT": "2"},
    )
    try:
        stack.start(migrate=False)
        anonymous = Api(stack.url, token=None)
        anonymous.session.cookies.set("sessionid", "a-session-the-database-would-know")
        sign_in, _ = call(anonymous, "POST", "/api/auth/token/", username="a", password="b")
        page, _ = call(anonymous, "GET", "/reports/")
        health, _ = call(anonymous, "GET", "/health/")
    finally:
        stack.stop()
        broker.stop()

    assert (sign_in.status, sign_in.code) == (503, "database_unavailable")
    assert page.status == 503
    assert (health.status, health.content_type) == (503, "application/json")
    for answer in (sign_in, page, health):
        assert 2 <= answer.took < ANSWER_WITHIN, answer
