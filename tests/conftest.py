from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from kombu import pools

from jobs import messages
from jobsite import throttles
from jobsite.celery_app import app as celery_app
from jobsite.embedded_redis import EmbeddedRedis
from tests.support import (
    Api,
    SmtpSink,
    WorkerProcess,
    access_token,
    test_database_url,
    wait_for_worker_sessions_to_close,
)

PASSWORD = "correct-horse-battery-staple"
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


@pytest.fixture
def user(transactional_db):
    return get_user_model().objects.create_user("alice", "alice@example.com", PASSWORD)


@pytest.fixture
def other_user(transactional_db):
    return get_user_model().objects.create_user("bob", "bob@example.com", PASSWORD)


@pytest.fixture
def staff_user(transactional_db):
    return get_user_model().objects.create_user(
        "carol", "carol@example.com", PASSWORD, is_staff=True
    )


def _token_for(base_url: str, username: str) -> str:
    return access_token(base_url, username, PASSWORD)


@pytest.fixture
def api(live_server, user):
    """An HTTP client for the live server, signed in as `user` with a JWT."""
    with Api(live_server.url, _token_for(live_server.url, user.username)) as client:
        yield client


@pytest.fixture
def other_api(live_server, other_user):
    with Api(live_server.url, _token_for(live_server.url, other_user.username)) as client:
        yield client


@pytest.fixture
def staff_api(live_server, staff_user):
    with Api(live_server.url, _token_for(live_server.url, staff_user.username)) as client:
        yield client


@pytest.fixture
def anonymous_api(live_server):
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
    _purge_queues()

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
    for worker in started:
        worker.stop()
    if started:
        wait_for_worker_sessions_to_close()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        for worker in started:
            print(f"--- log of worker {worker.name} ---\n{worker.log()[-20000:]}")


def _purge_queues() -> None:
    """Drop messages earlier tests left in the broker for jobs that no longer exist."""
    from jobsite.celery_app import app

    try:
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
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
        browser.close()
