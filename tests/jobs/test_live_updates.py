"""Live updates: job changes pushed through GET /api/events/ and the status endpoints'
`?wait=` long-poll, over real HTTP, from changes a real worker makes; who gets what; the
cap on waiting clients; and Redis failing under the publisher and the hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import requests

from jobs import live, services
from jobs.batches import cancel_batch, create_batch
from jobs.models import Job, Status
from jobs.services import JobSpec
from jobsite.embedded_redis import EmbeddedRedis
from tests.support import Api, wait_for


@pytest.fixture(autouse=True)
def quick_streams(settings):
    """Streams that send keep-alives often (so a closed client frees its thread soon)
    and a hub started afresh for each test, with its settings."""
    settings.PUSH_KEEPALIVE_SECONDS = 0.5
    settings.PUSH_STREAM_SECONDS = 60
    live.hub.stop()
    live.forget_listeners()
    yield
    live.hub.stop()
    live._publisher.cache_clear()
    live.forget_listeners()


class Stream:
    """An open GET /api/events/: its status and, read by a thread, the events sent."""

    def __init__(self, api: Api, query: str = "", headers: dict | None = None):
        self.events: list[dict] = []
        self.last_id: str | None = None  # as EventSource keeps it, keep-alives' included
        self.response = api.get(
            f"/api/events/{query}", stream=True, timeout=(5, 30), headers=headers
        )
        self.status_code = self.response.status_code
        if self.status_code == 200:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        fields: dict[str, str] = {}
        try:
            for line in self.response.iter_lines(chunk_size=1, decode_unicode=True):
                if line:
                    if not line.startswith(":"):
                        name, _, value = line.partition(": ")
                        fields[name] = value
                    continue
                if "id" in fields:
                    self.last_id = fields["id"]
                if "data" in fields:
                    self.events.append({"event": fields["event"], **json.loads(fields["data"])})
                fields = {}
        except (requests.RequestException, AttributeError):
            pass  # closed by the test

    def of(self, job_id: str) -> list[dict]:
        return [e for e in list(self.events) if e.get("id") == job_id]

    def resets(self) -> list[dict]:
        return [e for e in list(self.events) if e["event"] == "reset"]

    def close(self) -> None:
        self.response.close()


@pytest.fixture
def streams():
    opened: list[Stream] = []

    def open_stream(api: Api, query: str = "", headers: dict | None = None) -> Stream:
        stream = Stream(api, query, headers)
        opened.append(stream)
        return stream

    yield open_stream
    for stream in opened:
        stream.close()


def test_a_worker_running_a_job_is_seen_on_the_stream_through_each_change(
    live_api, worker, streams
):
    stream = streams(live_api)
    assert stream.status_code == 200
    assert stream.response.headers["Content-Type"].startswith("text/event-stream")

    job_id = live_api.post("/api/jobs/", {"type": "system.sleep", "payload": {"seconds": 1}})
    job_id = job_id.json()["id"]

    wait_for(lambda: any(e["status"] == "succeeded" for e in stream.of(job_id)), timeout=30)
    seen = stream.of(job_id)
    assert [e["status"] for e in seen][0] == "queued"
    assert any(e["status"] == "running" and 0 < e["progress"] < 100 for e in seen)
    assert seen[-1] == {
        "event": "job",
        "id": job_id,
        "batch_id": None,
        "status": "succeeded",
        "progress": 100,
        "message": "Done",
        "updated_at": seen[-1]["updated_at"],
    }
    assert "owner_id" not in seen[-1]


def test_a_long_poll_answers_when_a_worker_starts_the_job(live_api, start_worker, settings):
    settings.PUSH_MAX_WAIT_SECONDS = 300
    job_id = live_api.post("/api/jobs/", {"type": "system.noop"}).json()["id"]
    first = live_api.get(f"/api/jobs/{job_id}/status/")
    answers: list[requests.Response] = []

    def long_poll() -> None:
        headers = {"If-None-Match": first.headers["ETag"]}
        answers.append(live_api.get(f"/api/jobs/{job_id}/status/?wait=300", headers=headers))

    waiting = threading.Thread(target=long_poll)
    waiting.start()
    wait_for(lambda: live.hub.waiting == 1, timeout=10, what="the long-poll to wait")
    start_worker()

    # The answer comes with the worker's change, long before the wait is over.
    waiting.join(timeout=120)
    [answer] = answers
    assert answer.status_code == 200
    assert answer.json()["status"] in ("running", "succeeded")
    assert answer.headers["ETag"] != first.headers["ETag"]


def test_a_long_poll_of_an_unchanged_job_ends_with_304(live_api):
    job_id = live_api.post("/api/jobs/", {"type": "system.noop"}).json()["id"]  # no worker
    etag = live_api.get(f"/api/jobs/{job_id}/status/").headers["ETag"]

    answer = live_api.get(f"/api/jobs/{job_id}/status/?wait=0.3", headers={"If-None-Match": etag})

    assert answer.status_code == 304
    assert answer.headers["ETag"] == etag


def test_a_long_poll_without_a_matching_etag_answers_at_once(api, user):
    job = services.enqueue("system.noop", owner=user).job

    answer = api.get(f"/api/jobs/{job.id}/status/?wait=30", headers={"If-None-Match": '"old"'})

    assert answer.status_code == 200
    assert answer.json()["status"] == "queued"


@pytest.mark.parametrize("wait", ["soon", "-1", "nan", "inf"])
def test_a_bad_wait_is_refused_naming_the_field(api, user, wait):
    job = services.enqueue("system.noop", owner=user).job

    answer = api.get(f"/api/jobs/{job.id}/status/?wait={wait}")

    assert answer.status_code == 400
    assert "wait" in answer.json()["errors"]


def test_a_report_status_long_poll_answers_when_its_job_changes(live_api, user):
    report = live_api.post("/api/reports/", {"kind": "job_activity"}).json()
    first = live_api.get(f"/api/reports/{report['id']}/status/")
    answers: list[requests.Response] = []

    def long_poll() -> None:
        headers = {"If-None-Match": first.headers["ETag"]}
        path = f"/api/reports/{report['id']}/status/?wait=30"
        answers.append(live_api.get(path, headers=headers))

    waiting = threading.Thread(target=long_poll)
    waiting.start()
    wait_for(lambda: live.hub.waiting == 1, timeout=10, what="the long-poll to wait")
    live_api.post(f"/api/reports/{report['id']}/cancel/")

    waiting.join(timeout=20)
    [answer] = answers
    assert answer.status_code == 200
    assert answer.json()["status"] == "cancelled"


# --- who gets what -----------------------------------------------------------------------


def test_users_get_their_own_jobs_staff_get_all(
    live_api, live_other_api, live_staff_api, user, other_user, streams
):
    mine, others, staffs = streams(live_api), streams(live_other_api), streams(live_staff_api)
    wait_for(lambda: live.hub.waiting == 3, timeout=10)

    job = services.enqueue("system.noop", owner=user).job
    services.cancel(job)
    theirs = services.enqueue("system.noop", owner=other_user).job

    wait_for(lambda: [e["status"] for e in mine.of(str(job.id))] == ["queued", "cancelled"])
    wait_for(lambda: len(staffs.of(str(job.id))) == 2 and staffs.of(str(theirs.id)))
    wait_for(lambda: others.of(str(theirs.id)))
    assert not others.of(str(job.id))
    assert not mine.of(str(theirs.id))


def test_mine_keeps_a_staff_stream_to_their_own_jobs(live_staff_api, user, staff_user, streams):
    stream = streams(live_staff_api, "?mine=1")
    wait_for(lambda: live.hub.waiting == 1, timeout=10)

    theirs = services.enqueue("system.noop", owner=user).job
    own = services.enqueue("system.noop", owner=staff_user).job

    wait_for(lambda: stream.of(str(own.id)))
    assert not stream.of(str(theirs.id))


def test_a_job_filter_streams_only_those_jobs(live_api, user, streams):
    watched = services.enqueue("system.noop", owner=user).job
    unwatched = services.enqueue("system.noop", owner=user).job
    stream = streams(live_api, f"?job={watched.id}")
    wait_for(lambda: live.hub.waiting == 1, timeout=10)

    services.cancel(unwatched)
    services.cancel(watched)

    wait_for(lambda: stream.of(str(watched.id)))
    assert not stream.of(str(unwatched.id))


def test_a_filter_on_another_users_job_is_not_found(live_other_api, user, streams):
    job = services.enqueue("system.noop", owner=user).job

    assert streams(live_other_api, f"?job={job.id}").status_code == 404
    assert live_other_api.get(f"/api/jobs/{job.id}/status/?wait=5").status_code == 404
    assert streams(live_other_api, "?job=not-a-uuid").status_code == 400


def test_anonymous_clients_are_refused(live_anonymous_api, user):
    job = services.enqueue("system.noop", owner=user).job

    assert live_anonymous_api.get("/api/events/").status_code == 401
    assert live_anonymous_api.get(f"/api/jobs/{job.id}/status/?wait=5").status_code == 401


def test_a_signed_in_browser_session_gets_the_stream(live_server, user, client, streams):
    client.force_login(user)
    with Api(live_server.url, token=None) as browser:
        browser.session.cookies.set("sessionid", client.cookies["sessionid"].value)
        stream = streams(browser)
        assert stream.status_code == 200
        job = services.enqueue("system.noop", owner=user).job
        wait_for(lambda: stream.of(str(job.id)))


# --- the cap -------------------------------------------------------------------------------


def test_clients_over_the_cap_are_told_to_poll(live_api, settings, streams):
    settings.PUSH_MAX_WAITING = 1
    first = streams(live_api)
    assert first.status_code == 200

    refused = live_api.get("/api/events/")
    job_id = live_api.post("/api/jobs/", {"type": "system.noop"}).json()["id"]
    etag = live_api.get(f"/api/jobs/{job_id}/status/").headers["ETag"]
    long_poll = live_api.get(f"/api/jobs/{job_id}/status/?wait=5", headers={"If-None-Match": etag})
    plain = live_api.get(f"/api/jobs/{job_id}/status/")

    for answer in (refused, long_poll):
        assert answer.status_code == 503
        assert answer.json()["code"] == "push_busy"
        assert int(answer.headers["Retry-After"]) >= 1
    assert plain.status_code == 200

    first.close()
    wait_for(lambda: live.hub.waiting == 0, timeout=10, what="the closed stream to leave")
    assert streams(live_api).status_code == 200


# --- Redis failing -------------------------------------------------------------------------


@pytest.fixture
def own_redis(tmp_path, settings):
    """A Redis of the test's own for live updates, that the test may stop or pause."""
    server = EmbeddedRedis(data_dir=tmp_path / "live", persist=False)
    server.start()
    settings.PUSH_REDIS_URL = server.url
    settings.PUSH_CONNECT_TIMEOUT = 0.5
    live._publisher.cache_clear()
    live.forget_listeners()
    live.hub.stop()
    yield server
    if server.process is not None:
        server.resume()
    server.stop()


def test_a_hung_redis_does_not_hold_the_store_and_the_breaker_skips_it(
    transactional_db, own_redis, user
):
    own_redis.pause()

    job = services.enqueue("system.noop", owner=user).job  # its publish times out
    assert live.breaker.is_open()
    services.cancel(job)  # skipped without trying

    assert Job.objects.get(id=job.id).status == Status.CANCELLED
    assert not live.publish([{"id": str(job.id)}])


def test_a_stopped_redis_does_not_fail_the_store(transactional_db, own_redis, user):
    own_redis.stop()

    job = services.enqueue("system.noop", owner=user).job
    services.cancel(job)

    assert Job.objects.get(id=job.id).status == Status.CANCELLED
    assert live.breaker.is_open()


def test_without_redis_the_channel_tells_clients_to_poll_and_returns_with_it(
    live_api, own_redis, streams
):
    job_id = live_api.post("/api/jobs/", {"type": "system.noop"}).json()["id"]
    etag = live_api.get(f"/api/jobs/{job_id}/status/").headers["ETag"]
    assert streams(live_api).status_code == 200
    own_redis.stop()

    wait_for(lambda: not live.hub.connected, timeout=10, what="the hub to notice")
    refused = live_api.get("/api/events/")
    long_poll = live_api.get(f"/api/jobs/{job_id}/status/?wait=5", headers={"If-None-Match": etag})
    for answer in (refused, long_poll):
        assert answer.status_code == 503
        assert answer.json()["code"] == "push_unavailable"
    assert live_api.get(f"/api/jobs/{job_id}/status/").status_code == 200

    own_redis.start()
    live.breaker.reset()
    stream = wait_for(lambda: (s := streams(live_api)).status_code == 200 and s, timeout=20)
    live_api.post(f"/api/jobs/{job_id}/cancel/")
    wait_for(lambda: stream.of(job_id))


def test_a_hung_redis_is_noticed_by_the_hub(live_api, own_redis, settings, streams):
    settings.PUSH_KEEPALIVE_SECONDS = 0.2
    assert streams(live_api).status_code == 200

    own_redis.pause()

    wait_for(lambda: not live.hub.connected, timeout=10, what="the hub to notice")
    assert live_api.get("/api/events/").status_code == 503


# --- the schema ----------------------------------------------------------------------------


def test_the_schema_describes_the_stream_and_the_wait_parameter(api):
    schema = api.get("/api/schema/", headers={"Accept": "application/vnd.oai.openapi+json"})
    paths = schema.json()["paths"]

    stream = paths["/api/events/"]["get"]
    assert "text/event-stream" in stream["responses"]["200"]["content"]
    names = {p["name"] for p in stream["parameters"]}
    assert names >= {"job", "batch", "mine", "last_event_id", "Last-Event-ID"}
    assert "503" in stream["responses"]
    for path in ("/api/jobs/{id}/status/", "/api/reports/{id}/status/"):
        operation = paths[path]["get"]
        assert "wait" in {p["name"] for p in operation["parameters"]}
        assert {"200", "304", "503"} <= set(operation["responses"])


def test_a_batch_filter_streams_the_batch_and_its_jobs_to_its_owner_only(
    live_api, live_other_api, user, streams
):
    batch = create_batch([JobSpec("system.noop"), JobSpec("system.noop")], owner=user)
    (first, second) = batch.jobs.order_by("created_at", "id")
    mine = streams(live_api, f"?batch={batch.id}")
    theirs = streams(live_other_api, f"?batch={batch.id}")
    wait_for(lambda: live.hub.waiting == 2, timeout=10)

    cancel_batch(batch)

    wait_for(lambda: [e for e in mine.of(str(batch.id)) if e["status"] == "cancelled"])
    told = [e for e in mine.of(str(batch.id)) if e["status"] == "cancelled"][-1]
    assert (told["event"], told["progress"]) == ("batch", 100)
    for job in (first, second):
        wait_for(lambda job=job: mine.of(str(job.id)))
        assert mine.of(str(job.id))[-1]["batch_id"] == str(batch.id)
    assert theirs.events == []


# --- exiting -------------------------------------------------------------------------------

# A process whose hub hears an embedded Redis that it stops at exit (as tests/plugin.py
# does): the stop is registered first, the hub starts later.
EXITING = textwrap.dedent(
    """
    import atexit, os, sys, tempfile, time
    from jobsite.embedded_redis import EmbeddedRedis

    server = EmbeddedRedis(data_dir=tempfile.mkdtemp(), persist=False)
    server.start()
    os.environ["REDIS_URL"] = server.url
    os.environ.pop("PUSH_REDIS_URL", None)

    def stop_redis():
        server.stop()
        # A hub still hearing it notices within a keep-alive or two.
        deadline = time.monotonic() + 10
        while live.hub.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        print("redis stopped", flush=True)

    atexit.register(stop_redis)

    import django
    django.setup()
    from jobs import live

    live.hub.start()
    deadline = time.monotonic() + 10
    while not live.hub.connected:
        if time.monotonic() > deadline:
            sys.exit("the hub never heard Redis")
        time.sleep(0.05)
    print("heard", flush=True)
    """
)


def test_a_process_that_exits_stops_its_hub_before_its_redis_goes_away():
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "PUSH_REDIS_URL")},
        "DJANGO_SETTINGS_MODULE": "jobsite.settings",
        "DJANGO_DEBUG": "1",
        "PUSH_KEEPALIVE_SECONDS": "0.5",
    }
    done = subprocess.run(
        [sys.executable, "-c", EXITING],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["heard", "redis", "stopped"]
    assert "lost Redis" not in done.stderr
    assert "Logging error" not in done.stderr


# --- publishing only while someone listens -------------------------------------------------


def _publishes(server: EmbeddedRedis) -> int:
    """PUBLISH commands the Redis has run."""
    stats = _redis(server).info("commandstats")
    return stats.get("cmdstat_publish", {}).get("calls", 0)


def _redis(server: EmbeddedRedis):
    import redis

    return redis.Redis.from_url(server.url, socket_timeout=5)


def test_nothing_is_published_while_nobody_waits(transactional_db, own_redis, settings, user):
    settings.PUSH_LISTENERS_CHECK_SECONDS = 60
    job = services.enqueue("system.noop", owner=user).job
    services.cancel(job)
    services.enqueue_many([JobSpec("system.noop"), JobSpec("system.noop")], owner=user)

    assert _publishes(own_redis) == 0
    stats = _redis(own_redis).info("commandstats")
    assert stats["cmdstat_exists"]["calls"] == 1  # asked once, then trusted for a second


def test_changes_are_published_while_a_client_waits_and_no_longer_once_it_left(
    live_api, own_redis, settings, user, streams
):
    settings.PUSH_LISTENERS_TTL = 1
    client = _redis(own_redis)
    stream = streams(live_api)
    assert stream.status_code == 200
    assert client.exists(live.listeners_key())

    job = services.enqueue("system.noop", owner=user).job
    wait_for(lambda: stream.of(str(job.id)))
    assert _publishes(own_redis) >= 1
    # The hub renews the key while its client waits, past its one-second life.
    wait_for(lambda: client.info("commandstats").get("cmdstat_expire", {}).get("calls", 0) >= 4)
    assert client.exists(live.listeners_key())

    stream.close()
    wait_for(lambda: live.hub.waiting == 0, timeout=10, what="the closed stream to leave")
    wait_for(lambda: not client.exists(live.listeners_key()), what="the key to expire")
    live.forget_listeners()  # as a publisher's second of trust runs out
    published = _publishes(own_redis)
    services.cancel(job)
    assert _publishes(own_redis) == published


PUBLISHER = """
import sys
import django

django.setup()
from jobs import live, services
from jobs.models import Job

assert not live.listened()  # nobody listens: trusted for PUSH_LISTENERS_CHECK_SECONDS
print("ready", flush=True)
sys.stdin.readline()
services.cancel(Job.objects.get(id=sys.argv[1]))
print("cancelled", flush=True)
"""


def test_clients_arriving_while_a_publisher_thinks_nobody_listens_get_its_change(
    live_api, own_redis, settings, user, streams, tmp_path
):
    """A process that looked for listeners just before the clients came skips its
    PUBLISH; the clients read their job again once the process's look is out of date."""
    import os
    import subprocess
    import sys

    from tests.support import ROOT, test_database_url

    settings.PUSH_LISTENERS_CHECK_SECONDS = 5
    settings.PUSH_MAX_WAIT_SECONDS = 300
    job = services.enqueue("system.noop", owner=user).job
    etag = live_api.get(f"/api/jobs/{job.id}/status/").headers["ETag"]
    publisher = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, str(job.id)],
        cwd=ROOT,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "jobsite.settings",
            "DJANGO_DEBUG": "1",
            "DATABASE_URL": test_database_url(),
            "REDIS_URL": own_redis.url,
            "PUSH_LISTENERS_CHECK_SECONDS": "5",
        },
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert publisher.stdout.readline().strip() == "ready"
        stream = streams(live_api, f"?job={job.id}")
        answers: list[requests.Response] = []

        def long_poll() -> None:
            path = f"/api/jobs/{job.id}/status/?wait=300"
            answers.append(live_api.get(path, headers={"If-None-Match": etag}))

        waiting = threading.Thread(target=long_poll)
        waiting.start()
        wait_for(lambda: live.hub.waiting == 2, timeout=10, what="both clients to wait")

        publisher.stdin.write("go\n")
        publisher.stdin.flush()
        assert publisher.stdout.readline().strip() == "cancelled"
        assert _publishes(own_redis) == 0  # the change was not published

        wait_for(lambda: [e for e in stream.of(str(job.id)) if e["status"] == "cancelled"])
        waiting.join(timeout=60)  # long before its wait is over
        [answer] = answers
        assert answer.status_code == 200
        assert answer.json()["status"] == "cancelled"
    finally:
        publisher.kill()
        publisher.wait()


def test_a_hung_redis_does_not_hold_the_look_for_listeners(transactional_db, own_redis, user):
    own_redis.pause()

    assert not live.listened()  # times out, and opens the breaker
    assert live.breaker.is_open()
    job = services.enqueue("system.noop", owner=user).job  # skipped without asking

    assert Job.objects.get(id=job.id).status == Status.QUEUED
    assert not live.listened()


# --- resuming after a reconnect ------------------------------------------------------------


@pytest.fixture
def quick_settling(settings):
    """Publishers trust their look for listeners briefly: a stream settles (its ids are
    vouched for by the hub) soon after it opens."""
    settings.PUSH_LISTENERS_CHECK_SECONDS = 0.05
    live.forget_listeners()


def _vouched(event_id: str | None) -> bool:
    position = event_id and live.parse_event_id(event_id)
    return bool(position) and position.token == live.hub.token


def _from_elsewhere(event_id: str) -> str:
    """The same position as another web process would have named it."""
    position = live.parse_event_id(event_id)
    return live.event_id(live.Position(position.at, "0badc0de", position.seq))


def _left_after(api: Api, streams, query: str = "", job=None) -> str:
    """Open a stream, see `job`'s change on it (when given), close it once its last id
    is one the hub vouches for; that id."""
    stream = streams(api, query)
    assert stream.status_code == 200
    if job is not None:
        services.cancel(job)
        wait_for(lambda: stream.of(str(job.id)), what="the change on the stream")
    last_id = wait_for(lambda: _vouched(stream.last_id) and stream.last_id, timeout=10)
    stream.close()
    wait_for(lambda: live.hub.waiting == 0, timeout=10, what="the closed stream to leave")
    return last_id


def _heard(changes: int, before: int) -> None:
    wait_for(lambda: live.hub.seq >= before + changes, timeout=10, what="the hub to hear")


def _statuses(stream: Stream, job) -> list[str]:
    return [e["status"] for e in stream.of(str(job.id))]


@pytest.mark.parametrize("where", ["this process", "another process"])
def test_a_reopened_stream_gets_the_changes_it_missed_and_only_its_callers(
    live_api, user, other_user, streams, quick_settling, where
):
    seen = services.enqueue("system.noop", owner=user).job
    last_id = _left_after(live_api, streams, job=seen)
    if where == "another process":
        last_id = _from_elsewhere(last_id)

    before = live.hub.seq
    missed = services.enqueue("system.noop", owner=user).job
    services.cancel(missed)
    theirs = services.enqueue("system.noop", owner=other_user).job
    services.cancel(theirs)
    _heard(4, before)

    resumed = streams(live_api, headers={"Last-Event-ID": last_id})

    assert resumed.status_code == 200
    wait_for(lambda: "cancelled" in _statuses(resumed, missed))
    if where == "this process":
        # Replayed from the hub's ring: each change as it was heard.
        assert _statuses(resumed, missed) == ["queued", "cancelled"]
        assert not resumed.of(str(seen.id))  # seen before the id
    else:
        # Read again: the jobs changed since the id's time, as they are now.
        assert _statuses(resumed, missed) == ["cancelled"]
    assert not resumed.of(str(theirs.id))
    assert not resumed.resets()
    # And it goes on as any stream.
    later = services.enqueue("system.noop", owner=user).job
    wait_for(lambda: resumed.of(str(later.id)))


@pytest.mark.parametrize("where", ["this process", "another process"])
def test_a_reopened_stream_keeps_its_filters(live_api, user, streams, quick_settling, where):
    watched = services.enqueue("system.noop", owner=user).job
    unwatched = services.enqueue("system.noop", owner=user).job
    last_id = _left_after(live_api, streams, f"?job={watched.id}")
    if where == "another process":
        last_id = _from_elsewhere(last_id)

    before = live.hub.seq
    services.cancel(unwatched)
    services.cancel(watched)
    _heard(2, before)

    resumed = streams(live_api, f"?job={watched.id}", headers={"Last-Event-ID": last_id})

    wait_for(lambda: _statuses(resumed, watched) == ["cancelled"])
    assert not resumed.of(str(unwatched.id))


def test_another_users_id_resumes_only_the_callers_own_changes(
    live_api, live_other_api, user, other_user, streams, quick_settling
):
    their_id = _left_after(live_other_api, streams)

    before = live.hub.seq
    mine = services.enqueue("system.noop", owner=user).job
    theirs = services.enqueue("system.noop", owner=other_user).job
    _heard(2, before)

    for last_id in (their_id, _from_elsewhere(their_id)):
        resumed = streams(live_api, headers={"Last-Event-ID": last_id})
        wait_for(lambda resumed=resumed: resumed.of(str(mine.id)))
        assert not resumed.of(str(theirs.id))


def test_a_hub_that_heard_nothing_meanwhile_has_the_stream_read_its_jobs_again(
    live_api, user, streams, quick_settling
):
    """Changes made while the process heard nothing (here, its hub stopped) are not in
    its ring: an id from before makes the stream read its jobs again."""
    job = services.enqueue("system.noop", owner=user).job
    last_id = _left_after(live_api, streams)
    live.hub.stop()

    services.cancel(job)  # heard by no one

    resumed = streams(live_api, headers={"Last-Event-ID": last_id})
    assert resumed.status_code == 200
    wait_for(lambda: _statuses(resumed, job) == ["cancelled"])
    assert not resumed.resets()


def test_a_resume_by_query_parameter_for_clients_without_headers(
    live_api, user, streams, quick_settling
):
    last_id = _left_after(live_api, streams)
    before = live.hub.seq
    job = services.enqueue("system.noop", owner=user).job
    _heard(1, before)

    resumed = streams(live_api, f"?last_event_id={last_id}")

    wait_for(lambda: _statuses(resumed, job) == ["queued"])


@pytest.mark.parametrize(
    "last_event_id",
    ["garbage", "17", "1-2", "-1-abc-3", "12-ab-", "9" * 40, "1-ABC-2"],
)
def test_a_malformed_id_gets_a_reset_event_not_an_error(
    live_api, user, streams, quick_settling, last_event_id
):
    resumed = streams(live_api, headers={"Last-Event-ID": last_event_id})

    assert resumed.status_code == 200
    wait_for(lambda: resumed.resets())
    assert resumed.resets()[0]["detail"]
    # The stream goes on, and names where it stands.
    job = services.enqueue("system.noop", owner=user).job
    wait_for(lambda: resumed.of(str(job.id)))
    wait_for(lambda: _vouched(resumed.last_id), timeout=10)


@pytest.mark.parametrize("seconds_ago", [400, -60])
def test_an_id_from_too_long_ago_or_the_future_gets_a_reset_event(
    live_api, user, streams, quick_settling, seconds_ago
):
    import time

    job = services.enqueue("system.noop", owner=user).job
    last_id = _left_after(live_api, streams)
    position = live.parse_event_id(last_id)
    old = live.Position(time.time() - seconds_ago, position.token, position.seq)
    services.cancel(job)

    resumed = streams(live_api, headers={"Last-Event-ID": live.event_id(old)})

    assert resumed.status_code == 200
    wait_for(lambda: resumed.resets())
    assert not resumed.of(str(job.id))


def test_resuming_is_off_with_no_seconds_to_resume(
    live_api, user, streams, quick_settling, settings
):
    last_id = _left_after(live_api, streams)
    settings.PUSH_RESUME_SECONDS = 0

    resumed = streams(live_api, headers={"Last-Event-ID": last_id})

    wait_for(lambda: resumed.resets())


def test_too_many_changes_to_read_again_get_a_reset_event(
    live_api, user, streams, quick_settling, settings
):
    settings.PUSH_RESUME_MAX_CHANGES = 1
    last_id = _from_elsewhere(_left_after(live_api, streams))
    services.enqueue_many([JobSpec("system.noop"), JobSpec("system.noop")], owner=user)

    resumed = streams(live_api, headers={"Last-Event-ID": last_id})

    wait_for(lambda: resumed.resets())
    assert not [e for e in resumed.events if e["event"] == "job"]


def test_a_stream_opened_cold_with_too_much_to_read_again_gets_a_reset_event(
    live_api, own_redis, user, streams, quick_settling, settings
):
    # The first waiter sets the listeners key afresh: publishers may still trust their
    # "nobody listens" for a moment, so the stream reads its jobs once more after it;
    # a user with thousands of jobs just made gets a reset, not a flood of events.
    settings.PUSH_RESUME_MAX_CHANGES = 2
    services.enqueue_many([JobSpec("system.noop") for _ in range(3)], owner=user)

    stream = streams(live_api, "?mine=1")

    assert stream.status_code == 200
    wait_for(lambda: stream.resets(), what="a reset event")
    assert not [e for e in stream.events if e["event"] == "job"]
