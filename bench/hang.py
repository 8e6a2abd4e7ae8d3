"""Benchmark 9: the API while the broker hangs.

gunicorn (the Procfile's web process, production settings) uses a Redis of this
benchmark's own as its broker, cache and rate-limit store. `POST /api/jobs/` and
`POST /api/jobs/bulk/` are sent from a few threads, first with that Redis running, then
with it paused (SIGSTOP, as on a network partition), and the latencies of both are set
side by side. The target is the issue's: p99 <= 1 s with the broker paused. No worker
runs the jobs: this measures the requests only (tests/jobs/test_broker_hang.py shows
that the jobs then run once).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import requests

from bench import api, harness
from jobsite.embedded_redis import EmbeddedRedis

THREADS = int(os.environ.get("BENCH_HANG_THREADS", "4"))
CREATES = int(os.environ.get("BENCH_HANG_CREATES", "400"))
BULKS = int(os.environ.get("BENCH_HANG_BULKS", "40"))
BULK_SIZE = 25


@contextmanager
def own_redis() -> Iterator[EmbeddedRedis]:
    """A Redis of the benchmark's own, as broker and cache of the processes started
    inside; it is never left paused."""
    redis = EmbeddedRedis(data_dir=tempfile.mkdtemp(prefix="jobsite-bench-hang-"), persist=False)
    redis.start()
    saved = {key: os.environ.get(key) for key in ("REDIS_URL", "CELERY_BROKER_URL")}
    os.environ.update({"REDIS_URL": redis.url, "CELERY_BROKER_URL": redis.url})
    try:
        yield redis
    finally:
        redis.resume()
        redis.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def timed_posts(base_url: str, token: str) -> dict[str, list[float]]:
    """CREATES single creates and BULKS bulk creates, from THREADS threads; the seconds
    each took, by endpoint. Anything but a 202 stops the benchmark."""
    headers = {**api.PROXY_HEADERS, "Authorization": f"Bearer {token}"}
    single = ("create", "/api/jobs/", {"type": "system.noop"})
    bulk = ("bulk", "/api/jobs/bulk/", {"jobs": [{"type": "system.noop"}] * BULK_SIZE})
    todo = [single] * CREATES + [bulk] * BULKS
    todo = todo[::2] + todo[1::2]  # bulks spread through the run
    seconds: dict[str, list[float]] = {"create": [], "bulk": []}
    errors: list[str] = []
    lock = threading.Lock()

    def run() -> None:
        with requests.Session() as session:
            session.headers.update(headers)
            while True:
                with lock:
                    if not todo or errors:
                        return
                    key, path, body = todo.pop()
                started = time.monotonic()
                response = session.post(
                    base_url + path,
                    data=json.dumps(body),
                    timeout=60,
                    headers={"Content-Type": "application/json"},
                )
                elapsed = time.monotonic() - started
                with lock:
                    if response.status_code != 202:
                        errors.append(f"{path}: {response.status_code} {response.text[:200]}")
                    seconds[key].append(elapsed)

    threads = [threading.Thread(target=run) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(errors[0])
    return seconds


def main() -> harness.Results:
    results = harness.Results("hang", "API latency with the broker paused against running")
    harness.setup_django()
    harness.bench_user()
    harness.close_connections()
    with own_redis() as redis, api.gunicorn() as server:
        token = api.access_token(server.base_url)
        timed_posts(server.base_url, token)  # warm-up
        running = timed_posts(server.base_url, token)
        redis.pause()
        try:
            paused_at = time.monotonic()
            paused = timed_posts(server.base_url, token)
            paused_for = time.monotonic() - paused_at
        finally:
            redis.resume()
    results.detail(
        "method",
        f"gunicorn with the Procfile's web options and DJANGO_DEBUG=0; a Redis of its own as "
        f"broker, cache and rate-limit store; {THREADS} threads send {CREATES} POST "
        f"/api/jobs/ and {BULKS} POST /api/jobs/bulk/ of {BULK_SIZE} jobs, once with Redis "
        f"running and once with it paused by SIGSTOP ({paused_for:.1f} s)",
    )
    for key, label in [("create", "POST /api/jobs/"), ("bulk", "POST /api/jobs/bulk/")]:
        for state, seconds in [("running", running[key]), ("paused", paused[key])]:
            p50 = harness.median(seconds) * 1000
            p99 = harness.percentile(seconds, 99) * 1000
            results.figure(f"{label} p50, broker {state}", p50, "ms")
            if state == "paused":
                results.figure(
                    f"{label} p99, broker {state}", p99, "ms", target="<= 1000", met=p99 <= 1000
                )
            else:
                results.figure(f"{label} p99, broker {state}", p99, "ms")
        results.detail(
            f"{key}_max_ms",
            {"running": max(running[key]) * 1000, "paused": max(paused[key]) * 1000},
        )
    results.write()
    return results


if __name__ == "__main__":
    harness.recreate_database()
    main()
