"""The reports page in Chromium: sign in, generate, watch progress, download, cancel,
retry, filter. Driven by Playwright against Debian's /usr/bin/chromium."""

import io
from pathlib import Path

import pytest
from django.utils import timezone
from pypdf import PdfReader

from jobs.models import Job, Status
from reports import services
from tests.conftest import CHROMIUM, PASSWORD

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium package"),
]

# Records every badge text and bar value the page shows, however briefly.
WATCH_ROWS = """
window.__seen = {badges: [], progress: []};
new MutationObserver(() => {
  const row = document.querySelector('#report-rows tr.report');
  if (!row) return;
  const badge = row.querySelector('[data-role=badge]').textContent.trim();
  const progress = Number(row.querySelector('[data-role=bar]').getAttribute('aria-valuenow'));
  const seen = window.__seen;
  if (seen.badges[seen.badges.length - 1] !== badge) seen.badges.push(badge);
  if (seen.progress[seen.progress.length - 1] !== progress) seen.progress.push(progress);
}).observe(document.getElementById('report-rows'),
           {subtree: true, childList: true, attributes: true, characterData: true});
"""


def sign_in(page, user) -> None:
    page.goto("/")
    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/reports/")


def badge(row, text: str):
    return row.locator("[data-role=badge]", has_text=text)


def a_busy_month(owner, count: int = 40_000) -> None:
    """Enough of the owner's jobs for a report to spend a few seconds gathering them."""
    now = timezone.now()
    Job.objects.bulk_create(
        [
            Job(
                owner=owner,
                type="system.noop",
                status=Status.SUCCEEDED if i % 10 else Status.FAILED,
                error="" if i % 10 else "Timed out",
                started_at=now,
                finished_at=now,
            )
            for i in range(count)
        ],
        batch_size=5000,
    )


@pytest.mark.worker
def test_a_user_generates_a_report_watches_it_and_downloads_it(page, user, start_worker, smtp_sink):
    a_busy_month(user)
    sign_in(page, user)
    page.evaluate(WATCH_ROWS)

    page.get_by_label("Title", exact=True).fill("Busy month")
    page.get_by_role("button", name="Generate").click()
    row = page.locator("#report-rows tr.report").first
    badge(row, "Queued").wait_for()
    start_worker(smtp=smtp_sink)
    badge(row, "Ready").wait_for(timeout=90_000)

    seen = page.evaluate("window.__seen")
    assert seen["badges"][:1] == ["Queued"] and "Running" in seen["badges"], seen
    assert seen["badges"][-1] == "Ready"
    assert any(0 < p < 100 for p in seen["progress"]), seen
    assert seen["progress"] == sorted(seen["progress"]), "the bar only moves forward"
    assert page.url.endswith("/reports/"), "no navigation happened"

    with page.expect_download() as download_info:
        row.get_by_role("link", name="Download").click()
    download = download_info.value
    assert download.suggested_filename.startswith("busy-month-")
    text = "\n".join(
        p.extract_text() for p in PdfReader(io.BytesIO(Path(download.path()).read_bytes())).pages
    )
    assert "Busy month" in text and "40000" in text


def test_a_user_cancels_a_queued_report_and_retries_a_failed_one(page, user):
    waiting = services.request_report(user, "job_activity", title="Waiting")
    broken = services.request_report(user, "job_activity", title="Broken")
    Job.objects.filter(id=broken.job_id).update(status=Status.FAILED, error="Disk full")
    sign_in(page, user)

    waiting_row = page.locator(f"#report-{waiting.id}")
    waiting_row.get_by_role("button", name="Cancel").click()
    badge(waiting_row, "Cancelled").wait_for()
    assert waiting_row.get_by_role("button", name="Retry").is_visible()

    broken_row = page.locator(f"#report-{broken.id}")
    assert broken_row.get_by_text("Disk full").is_visible()
    broken_row.get_by_role("button", name="Retry").click()
    badge(broken_row, "Queued").wait_for()
    broken.job.refresh_from_db()
    assert broken.job.status == Status.QUEUED


def test_a_user_filters_the_list_and_the_filter_stays_in_the_url(page, user):
    services.request_report(user, "job_activity", title="Alpha")
    beta = services.request_report(user, "job_activity", title="Beta")
    services.cancel_report(beta)
    sign_in(page, user)

    page.get_by_label("Status").select_option("cancelled")
    page.wait_for_url("**/reports/?status=cancelled")
    assert page.locator("#report-rows tr.report").all_inner_texts() == [
        page.locator(f"#report-{beta.id}").inner_text()
    ]

    page.get_by_label("Status").select_option("")
    page.get_by_label("Search").fill("alp")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**/reports/?q=alp")
    assert "Alpha" in page.locator("#report-rows").inner_text()
    assert "Beta" not in page.locator("#report-rows").inner_text()

    page.reload()
    assert page.get_by_label("Search").input_value() == "alp"
    assert "Beta" not in page.locator("#report-rows").inner_text()


def test_a_queued_report_says_its_place_in_line_and_moves_up(page, user, other_user):
    # No worker takes the reports queue: the reports wait, two of another user's first.
    first = services.request_report(other_user, "job_activity", title="Theirs 1")
    services.request_report(other_user, "job_activity", title="Theirs 2")
    sign_in(page, user)

    page.get_by_label("Title", exact=True).fill("Mine")
    page.get_by_role("button", name="Generate").click()
    row = page.locator("#report-rows tr.report", has_text="Mine")
    line = row.locator("[data-role=line]")
    line.get_by_text("3rd in line").wait_for()
    Job.objects.filter(id=first.job_id).update(status=Status.RUNNING)
    line.get_by_text("2nd in line").wait_for()  # the status poll redraws it

    assert line.is_visible()
    assert "Theirs" not in row.inner_text()
    row.get_by_role("button", name="Cancel").click()
    badge(row, "Cancelled").wait_for()
    assert not line.is_visible()
