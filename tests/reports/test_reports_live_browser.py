"""The reports page in Chromium follows its reports' jobs through the event stream
(/api/events/) instead of polling, and polls when the stream is refused."""

import pytest
from django.utils import timezone

from jobs import live
from jobs.models import Job, Status
from jobs.store import job_store
from reports import services
from tests.conftest import CHROMIUM
from tests.reports.test_reports_browser import badge, sign_in
from tests.support import wait_for

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium package"),
]


@pytest.fixture(autouse=True)
def fresh_hub(settings):
    # Keep-alives often: a stream the page closed is noticed at the next one.
    settings.PUSH_KEEPALIVE_SECONDS = 0.5
    live.hub.stop()
    yield
    live.hub.stop()


def status_requests(page) -> int:
    """How many status requests the page has sent (the browser's own record of them)."""
    return page.evaluate(
        "performance.getEntriesByType('resource').filter(e => e.name.includes('/status/')).length"
    )


def start_running(report, percent: int, message: str) -> Job:
    """What a worker does to the report's job: claim it, report progress."""
    store, now = job_store(), timezone.now()
    job = store.claim(report.job_id, now, now)
    assert job is not None
    assert store.progress(job, percent, message, None, timezone.now())
    return job


def bar(row):
    return row.locator("[data-role=bar]")


def test_a_row_follows_its_job_through_the_stream_without_polling(page, user):
    report = services.request_report(user, "job_activity", title="Pushed")
    sign_in(page, user)
    row = page.locator(f"#report-{report.id}")
    badge(row, "Queued").wait_for()
    wait_for(lambda: live.hub.waiting == 1, timeout=20, what="the page's stream to open")
    # Once open, the page reads each active row once, for what changed before.
    wait_for(lambda: status_requests(page) == 1, timeout=10)

    job = start_running(report, 40, "Counting jobs")
    badge(row, "Running").wait_for()
    page.wait_for_function(
        f"document.querySelector('#report-{report.id} [data-role=bar]')"
        ".getAttribute('aria-valuenow') === '40'"
    )
    assert row.locator("[data-role=message]").inner_text() == "Counting jobs"

    assert job_store().finish(job, Status.FAILED, timezone.now(), error="No data")
    badge(page.locator(f"#report-{report.id}"), "Failed").wait_for()

    assert status_requests(page) == 1  # every change came through the stream
    wait_for(lambda: live.hub.waiting == 0, timeout=20, what="the idle page to close it")


def test_the_page_polls_when_the_stream_is_refused(page, user):
    page.route(
        "**/api/events/**",
        lambda route: route.fulfill(
            status=503,
            content_type="application/json",
            body='{"detail": "Too many clients are waiting", "code": "push_busy"}',
        ),
    )
    report = services.request_report(user, "job_activity", title="Polled")
    sign_in(page, user)
    row = page.locator(f"#report-{report.id}")
    badge(row, "Queued").wait_for()

    wait_for(lambda: status_requests(page) >= 2, timeout=20, what="the page to poll")
    start_running(report, 60, "Counting jobs")
    badge(row, "Running").wait_for()
    page.wait_for_function(
        f"document.querySelector('#report-{report.id} [data-role=bar]')"
        ".getAttribute('aria-valuenow') === '60'"
    )
    assert live.hub.waiting == 0
