"""The broker hangs (its Redis paused with SIGSTOP, as on a network partition): requests
still answer, bounded by the publish timeout rather than the broker's, and once it is
back every job runs exactly once. How fast they answer is measured by benchmark 9
(bench/hang.py)."""

import threading
import time

import pytest
from django.conf import settings as django_settings

from jobs.models import Job, JobEvent
from jobsite import throttles
from tests.support import Api, wait_for

pytestmark = pytest.mark.worker

THREADS = 4
POSTS_PER_THREAD = 10
BULKS = 4
BULK_SIZE = 25
# A publish not bounded by JOBS_PUBLISH_TIMEOUT would wait for the transport's own
# socket timeout (10 s) or for ever; a bounded one answers in a fraction of a second,
# a few times that on a loaded machine.
UNBOUNDED_WAIT = django_settings.CELERY_BROKER_TRANSPORT_OPTIONS["socket_timeout"]


@pytest.fixture
def hung_redis(private_broker, settings):
    """The private broker is also the cache and the rate limits' store; `hang()` pauses
    it, and it is always resumed at the end."""
    settings.CACHES = {
        "default": {**django_settings.CACHES["default"], "LOCATION": private_broker.url}
    }
    throttles.throttle_redis.cache_clear()
    yield private_broker
    private_broker.resume()
    throttles.throttle_redis.cache_clear()


def post_in_threads(
    api: Api, paths_and_bodies: list[tuple[str, dict]]
) -> list[tuple[float, object]]:
    """Send the requests from THREADS threads at once; (seconds, response) for each."""
    token = api.session.headers["Authorization"]
    results: list[tuple[float, object]] = []
    lock = threading.Lock()
    todo = list(paths_and_bodies)

    def run() -> None:
        with Api(api.base_url, token=None) as client:
            client.session.headers["Authorization"] = token
            while True:
                with lock:
                    if not todo:
                        return
                    path, body = todo.pop()
                started = time.monotonic()
                response = client.post(path, body)
                elapsed = time.monotonic() - started
                with lock:
                    results.append((elapsed, response))

    threads = [threading.Thread(target=run) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_with_the_broker_paused_requests_answer_fast_and_every_job_runs_once_after(
    live_api, start_worker, hung_redis
):
    api = live_api
    start_worker(broker_url=hung_redis.url)
    before = api.post("/api/jobs/", {"type": "system.noop"}).json()["id"]
    api.wait_for_status(before, "succeeded")

    hung_redis.pause()
    try:
        paused_at = time.monotonic()
        requests = [("/api/jobs/", {"type": "system.noop"})] * (THREADS * POSTS_PER_THREAD)
        requests += [("/api/jobs/bulk/", {"jobs": [{"type": "system.noop"}] * BULK_SIZE})] * BULKS
        results = post_in_threads(api, requests)
        ids = [r.json()["id"] for _, r in results if "id" in r.json()]
        ids += [j["id"] for _, r in results for j in r.json().get("jobs", [])]
        # None reached the broker: each was left to the dispatch sweeper.
        assert Job.objects.filter(id__in=ids, dispatched_at__isnull=True).count() == len(ids)
        # Longer than the worker's own 10 s socket timeout, so its consumer and Beat
        # have to come back from broken connections, not just from a slow answer.
        time.sleep(max(0.0, 12 - (time.monotonic() - paused_at)))
    finally:
        hung_redis.resume()

    statuses = [response.status_code for _, response in results]
    assert statuses == [202] * len(requests), results[0][1].text
    worst = max(seconds for seconds, _ in results)
    assert worst < UNBOUNDED_WAIT / 2, sorted(seconds for seconds, _ in results)[-5:]

    assert len(ids) == THREADS * POSTS_PER_THREAD + BULKS * BULK_SIZE
    wait_for(
        lambda: Job.objects.filter(id__in=ids, status="succeeded").count() == len(ids),
        timeout=60,
        what="every job posted during the pause to succeed",
    )
    assert set(Job.objects.filter(id__in=ids).values_list("attempts", flat=True)) == {1}
    assert JobEvent.objects.filter(job_id__in=ids, kind="started").count() == len(ids)

    after = api.post("/api/jobs/", {"type": "system.noop"}).json()["id"]
    api.wait_for_status(after, "succeeded", timeout=30)


def test_a_job_posted_once_the_broker_is_back_is_sent_at_once(api, start_worker, hung_redis):
    start_worker(broker_url=hung_redis.url)
    hung_redis.pause()
    try:
        during = api.post("/api/jobs/", {"type": "system.noop"})
    finally:
        hung_redis.resume()
    assert during.status_code == 202
    assert Job.objects.get(id=during.json()["id"]).dispatched_at is None

    # The breaker lets one publish through once its open time is up; that one closes it.
    def sent_directly() -> bool:
        job_id = api.post("/api/jobs/", {"type": "system.noop"}).json()["id"]
        return Job.objects.get(id=job_id).dispatched_at is not None

    wait_for(sent_directly, timeout=django_settings.JOBS_PUBLISH_BREAKER_SECONDS + 10, interval=0.2)
    api.wait_for_status(during.json()["id"], "succeeded", timeout=30)
