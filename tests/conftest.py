from __future__ import annotations

from pathlib import Path

import pytest
import redis
from django.contrib.auth import get_user_model
from django.db import connections
from django.test import override_settings
from kombu import pools

from jobs import limits, live, messages
from jobsite import throttles
from jobsite.celery_app import app as celery_app
from jobsite.embedded_redis import EmbeddedRedis
from tests.support import (
    Api,
    InProcessApi,
    SmtpSink,
    WorkerProcess,
    access_token,
    test_database_url,
    wait_for_worker_sessions_to_close,
)

PASSWORD = "correct-horse-battery-staple"
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"

# Tests using one of these fixtures are marked (and `make test-fast` leaves them out).
WORKER_FIXTURES = {"worker", "start_worker"}
BROWSER_FIXTURES = {"page"}
# A live server, or processes started on the test database.
LIVE_FIXTURES = {"live_server", "database_url", "private_broker"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & WORKER_FIXTURES:
            item.add_marker(pytest.mark.worker)
        if used & BROWSER_FIXTURES:
            item.add_marker(pytest.mark.browser)
        if used & LIVE_FIXTURES:
            item.add_marker(pytest.mark.live)


@pytest.fixture(scope="session", autouse=True)
def fast_settings(django_test_environment):
    """Settings of the test process itself: a fast password hasher (Django's default takes
    a good part of a second per password, and most tests create users) and e-mail kept in
    `django.core.mail.outbox`. Processes the tests start (workers, servers) take their
    settings from the environment and keep the defaults."""
    with override_settings(
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
        EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend",
    ):
        yield


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("alice", "alice@example.com", PASSWORD)


@pytest.fixture
def other_user(db):
    return get_user_model().objects.create_user("bob", "bob@example.com", PASSWORD)


@pytest.fixture
def staff_user(db):
    return get_user_model().objects.create_user(
        "carol", "carol@example.com", PASSWORD, is_staff=True
    )


# The API in this process, signed in without a token: for every test that is not about
# authentication or the HTTP server. Only the database decides the transaction mode: the
# `db` fixture (each test rolled back), or `transactional_db` where a worker process the
# test starts must see the test's rows.


@pytest.fixture
def api(user):
    """The API, signed in as `user`."""
    with InProcessApi(user) as client:
        yield client


@pytest.fixture
def other_api(other_user):
    with InProcessApi(other_user) as client:
        yield client


@pytest.fixture
def staff_api(staff_user):
    with InProcessApi(staff_user) as client:
        yield client


@pytest.fixture
def anonymous_api(db):
    with InProcessApi() as client:
        yield client


# The API over HTTP on the live server, signed in with a JWT from the token endpoint: for
# tests about authentication, the HTTP server itself, or requests sent from several threads.


def _token_for(base_url: str, username: str) -> str:
    return access_token(base_url, username, PASSWORD)


@pytest.fixture
def live_api(live_server, user):
    with Api(live_server.url, _token_for(live_server.url, user.username)) as client:
        yield client


@pytest.fixture
def live_other_api(live_server, other_user):
    with Api(live_server.url, _token_for(live_server.url, other_user.username)) as client:
        yield client


@pytest.fixture
def live_staff_api(live_server, staff_user):
    with Api(live_server.url, _token_for(live_server.url, staff_user.username)) as client:
        yield client


@pytest.fixture
def live_anonymous_api(live_server):
    with Api(live_server.url, token=None) as client:
        yield client


@pytest.fixture
def database_url(transactional_db) -> str:
    """The URL of the test database, for processes the tests start."""
    return test_database_url()


@pytest.fixture
def smtp_sink():
    sink = SmtpSink()
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture
def start_worker(database_url, tmp_path, request):
    """Start real Celery worker processes on the test database; all stop at teardown."""
    started: list[WorkerProcess] = []
    _empty_broker()

    def start(**options) -> WorkerProcess:
        worker = WorkerProcess(
            database_url=database_url,
            log_dir=tmp_path,
            name=f"w{len(started) + 1}",
            **options,
        )
        started.append(worker)
        worker.start()
        return worker

    yield start
    # A test that is about stopping a worker stops it itself; the rest need no warm
    # shutdown (seconds per worker): the next worker test starts on an empty broker.
    for worker in started:
        worker.discard()
    if started:
        wait_for_worker_sessions_to_close()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        for worker in started:
            print(f"--- log of worker {worker.name} ---\n{worker.log()[-20000:]}")


def _empty_broker() -> None:
    """Drop what earlier tests left in the broker for jobs that no longer exist: queued
    messages and, on Redis, the messages discarded workers had taken (which a worker of
    the same name would otherwise put back when it connects)."""
    from jobsite.celery_app import app

    url = app.conf.broker_url
    try:
        if url.startswith(("redis://", "rediss://")):
            client = redis.Redis.from_url(url, socket_timeout=2)
            client.flushdb()
            client.close()
        else:
            app.control.purge()
    except Exception:
        pass


@pytest.fixture
def worker(start_worker, smtp_sink) -> WorkerProcess:
    """One worker on every queue, with Beat sweeping every second, sending mail to `smtp_sink`."""
    return start_worker(smtp=smtp_sink)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def private_broker(tmp_path):
    """A Redis of this test's own (with AOF persistence), used as the broker by the web
    process and by the worker, so the test can stop and restart it."""
    broker = EmbeddedRedis(data_dir=tmp_path / "broker")
    broker.start()
    previous = celery_app.conf.broker_url
    _point_celery_at(broker.url)
    yield broker
    broker.stop()
    _point_celery_at(previous)


def _point_celery_at(url: str) -> None:
    celery_app.pool.force_close_all()
    pools.reset()  # kombu's global producer pools outlive the app's own pool
    celery_app.conf.broker_url = url
    celery_app._pool = None
    celery_app.amqp._producer_pool = None


@pytest.fixture(autouse=True)
def closed_breakers():
    """Each test starts with the broker's and the rate limits' breakers closed."""
    messages.breaker.reset()
    throttles.breaker.reset()
    live.breaker.reset()


@pytest.fixture(autouse=True)
def no_type_found_gated():
    """Each test starts with no job type known to this process as gated (a type a
    previous test paused or limited would otherwise first go to the gate)."""
    limits.forget_found_gated()


@pytest.fixture
def page(live_server, monkeypatch, request):
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls
    # are still plain blocking calls.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        context = browser.new_context(base_url=live_server.url, accept_downloads=True)
        page = context.new_page()
        page.set_default_timeout(20_000)
        yield page
        # While the event loop runs, the test's ORM calls get connections of their own;
        # closed here, or the test database could not be dropped at the end.
        connections.close_all()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
        browser.close()
