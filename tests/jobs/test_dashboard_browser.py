"""The dashboard in Chromium: it refreshes itself without reloading the page, draws the
history charts, pauses a queue from its Controls section, follows batches as their jobs
end and cancels one."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from jobs import controls, history, live, scheduling, services
from jobs.batches import create_batch
from jobs.models import Batch, BatchState, Job, OperatorAction, Scope, Status
from jobs.services import JobSpec
from tests import engine
from tests.conftest import CHROMIUM, PASSWORD
from tests.support import wait_for

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium package"),
]


def open_dashboard(page, staff_user, path: str = "/dashboard/") -> None:
    """Sign in through the form the dashboard sends a visitor to, and land on it."""
    page.goto(path)
    page.get_by_label("Username").fill(staff_user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"**{path}")


def test_the_dashboard_updates_in_place_and_retries_with_one_click(page, staff_user):
    staff_user.user_permissions.add(Permission.objects.get(codename="retry_job"))
    failed = services.enqueue("system.noop").job
    Job.objects.filter(id=failed.id).update(status=Status.FAILED, error="Disk full")
    open_dashboard(page, staff_user)
    page.evaluate("window.__notReloaded = true")
    queued = page.locator("[data-total=queued]")
    assert queued.inner_text() == "0"

    for _ in range(4):
        services.enqueue("system.noop")
    page.wait_for_function(
        "document.querySelector('[data-total=queued]').textContent === '4'", timeout=15_000
    )
    assert page.evaluate("window.__notReloaded") is True

    page.get_by_role("row", name=failed.type).get_by_role("button", name="Retry").click()
    page.wait_for_function(
        "document.querySelector('[data-total=failed]').textContent === '0'", timeout=15_000
    )
    assert page.evaluate("window.__notReloaded") is True
    assert page.get_by_text("No failed jobs.").is_visible()
    failed.refresh_from_db()
    assert failed.status == Status.QUEUED


def finished_job(finished_at, status=Status.SUCCEEDED, type_name="system.noop", ran=1.0) -> Job:
    job = Job.objects.create(type=type_name, status=status, attempts=1, finished_at=finished_at)
    started_at = finished_at - timedelta(seconds=ran)
    Job.objects.filter(id=job.id).update(
        created_at=started_at - timedelta(seconds=2), started_at=started_at
    )
    return job


def bars(page, selector: str) -> list[dict]:
    return page.eval_on_selector_all(
        selector,
        """rects => rects.map(r => ({status: r.dataset.status, count: Number(r.dataset.count),
            height: r.height.baseVal.value, width: r.width.baseVal.value}))""",
    )


def test_the_history_charts_draw_the_jobs_and_switch_between_hour_and_day(page, staff_user):
    _, end = history.bounds(history.WINDOWS["hour"], timezone.now())
    two_minutes_ago = end - timedelta(minutes=3) + timedelta(seconds=5)
    five_minutes_ago = end - timedelta(minutes=6) + timedelta(seconds=5)
    finished_job(two_minutes_ago, ran=1)
    finished_job(two_minutes_ago, ran=3)
    finished_job(five_minutes_ago, ran=2)
    finished_job(five_minutes_ago, Status.FAILED, ran=4)
    finished_job(end - timedelta(hours=3), type_name="system.sleep", ran=50)
    for _ in range(3):
        services.enqueue("system.noop")

    open_dashboard(page, staff_user)
    page.wait_for_selector("#history[data-drawn=hour]")

    finished = page.locator("#chart-finished")
    assert finished.get_attribute("data-buckets") == "60"
    hour = bars(page, "#chart-finished rect.bar")
    assert sorted((b["status"], b["count"]) for b in hour) == [
        ("failed", 1),
        ("succeeded", 1),
        ("succeeded", 2),
    ]
    tallest = next(b for b in hour if b["count"] == 2)
    single = [b for b in hour if b["count"] == 1]
    assert all(b["height"] == pytest.approx(tallest["height"] / 2, abs=0.05) for b in single)
    assert page.locator("[data-history-total=succeeded]").inner_text() == "3"
    assert page.locator("[data-history-total=failed]").inner_text() == "1"

    noop_runs = page.locator("#chart-run g[data-type='system.noop']")
    assert "p50 2.50 s · p95 3.85 s (4)" in noop_runs.text_content()
    p50, p95 = (
        float(noop_runs.locator(f"rect[data-quantile='{q}']").get_attribute("width"))
        for q in ("0.5", "0.95")
    )
    assert p50 == pytest.approx(p95 * 2.5 / 3.85, rel=0.01)
    assert page.locator("#chart-run g[data-type='system.sleep']").count() == 0
    assert page.locator("#chart-wait g[data-type='system.noop']").count() == 1

    waiting = page.locator("#chart-queues g[data-queue=default] rect[data-state=waiting]")
    assert waiting.get_attribute("data-count") == "3"
    assert "3 waiting" in page.locator("#chart-queues g[data-queue=default]").text_content()

    page.get_by_role("button", name="Last day").click()
    page.wait_for_selector("#history[data-drawn=day]")

    assert page.get_by_role("button", name="Last day").get_attribute("aria-pressed") == "true"
    assert page.get_by_role("button", name="Last hour").get_attribute("aria-pressed") == "false"
    assert finished.get_attribute("data-buckets") == "96"
    day = bars(page, "#chart-finished rect.bar")
    assert sum(b["count"] for b in day if b["status"] == "succeeded") == 4
    assert page.locator("[data-history-total=succeeded]").inner_text() == "4"
    assert "15 minutes" in page.locator("#finished-caption").inner_text()
    assert page.locator("#chart-run g[data-type='system.sleep']").count() == 1
    # The day's bars are narrower: 96 buckets in the same width.
    assert max(b["width"] for b in day) < min(b["width"] for b in hour)


def test_a_queue_paused_from_the_dashboard_shows_paused_beside_the_schedules(page, staff_user):
    staff_user.user_permissions.add(
        *Permission.objects.filter(codename__in=["pause_jobs", "change_periodictask"])
    )
    scheduling.sync()
    open_dashboard(page, staff_user)
    page.evaluate("window.__notReloaded = true")
    emails = page.locator('[data-control="queue:emails"]')
    assert emails.locator("[data-state]").inner_text() == "active"

    page.get_by_role("button", name="Pause queue emails").click()

    page.wait_for_function(
        """document.querySelector('[data-control="queue:emails"] [data-state]')
             .textContent === 'paused'""",
        timeout=15_000,
    )
    assert page.get_by_role("button", name="Resume queue emails").is_visible()
    assert not page.get_by_role("button", name="Pause queue emails").is_visible()
    assert page.evaluate("window.__notReloaded") is True
    assert controls.is_paused(Scope.QUEUE, "emails")
    audit_rows = page.locator("#audit-rows")
    audit_rows.get_by_text("queue emails").wait_for(timeout=15_000)

    reminder = page.locator('[data-schedule="reminder"]')
    assert "Every 5 minutes" in reminder.inner_text()
    assert reminder.get_by_role("button", name="Run schedule reminder now").is_visible()


def test_the_dashboard_refreshes_when_jobs_change_not_on_a_timer(page, staff_user, settings):
    """With the page's clock stopped, its 5 s polling timer never fires: the figures can
    only move because a change was pushed (the refresh it triggers runs after 0.3 s)."""
    settings.PUSH_KEEPALIVE_SECONDS = 0.5
    live.hub.stop()
    page.clock.install()
    open_dashboard(page, staff_user)
    page.clock.pause_at(timezone.now() + timedelta(minutes=5))
    wait_for(lambda: live.hub.waiting == 1, timeout=20, what="the dashboard's stream to open")
    page.clock.run_for(400)  # the refresh that follows the stream's opening
    queued = page.locator("[data-total=queued]")
    page.wait_for_function("document.querySelector('[data-total=queued]').textContent === '0'")

    for _ in range(3):
        services.enqueue("system.noop")

    # Four seconds of the page's time at most, a tenth at a time: short of its 5 s timer.
    for _ in range(40):
        page.clock.run_for(100)
        if queued.inner_text() == "3":
            break
        page.wait_for_timeout(50)
    assert queued.inner_text() == "3"
    live.hub.stop()


def test_the_batches_page_follows_a_batch_to_its_end_and_cancels_another(page, staff_user):
    staff_user.user_permissions.add(Permission.objects.get(codename="cancel_job"))
    noop = JobSpec("system.noop")
    album = create_batch([noop] * 4, owner=staff_user, on_success=noop, description="album")
    naps = create_batch([noop] * 3, owner=None, description="naps")
    open_dashboard(page, staff_user, "/dashboard/batches/")
    page.evaluate("window.__notReloaded = true")
    row = page.locator(f'[data-batch="{album.id}"]')
    assert row.locator("progress").get_attribute("value") == "0"
    assert "album" in row.inner_text() and "naps" in page.locator("#batch-rows").inner_text()

    for job in Job.objects.filter(batch=album).order_by("id")[:2]:
        assert engine.run(job) == "succeeded"
    page.wait_for_function(
        f"""document.querySelector('[data-batch="{album.id}"] progress').value === 50""",
        timeout=15_000,
    )
    assert row.locator('[data-count="succeeded"] b').inner_text() == "2"
    assert row.locator("[data-state]").inner_text() == "running"

    for job in Job.objects.filter(batch=album, status=Status.QUEUED):
        assert engine.run(job) == "succeeded"
    row.locator("[data-state]", has_text="succeeded").wait_for(timeout=15_000)
    assert row.locator("progress").get_attribute("value") == "100"
    album.refresh_from_db()
    callback = row.locator("[data-callbacks] a")
    assert callback.get_attribute("href") == f"/admin/jobs/job/{album.success_job_id}/change/"
    assert not row.get_by_role("button", name=f"Cancel batch {str(album.id)[:8]}").count()
    assert page.evaluate("window.__notReloaded") is True

    page.get_by_role("link", name=str(naps.id)[:8]).click()
    page.wait_for_url(f"**/dashboard/batches/{naps.id}/")
    page.evaluate("window.__notReloaded = true")
    assert page.locator("#batch-job-rows tr").count() == 3
    page.get_by_role("button", name=f"Cancel batch {str(naps.id)[:8]}").click()

    page.locator("#batch-summary [data-state]", has_text="cancelled").wait_for(timeout=15_000)
    assert page.locator("#batch-job-rows .badge-cancelled").count() == 3
    assert page.evaluate("window.__notReloaded") is True
    assert Batch.objects.get(id=naps.id).state == BatchState.CANCELLED
    action = OperatorAction.objects.get(target_kind="batch")
    assert (action.target, action.via) == (str(naps.id), "dashboard")

    page.get_by_role("link", name="Batches", exact=True).last.click()
    page.get_by_label("State").select_option("cancelled")
    page.wait_for_url("**/dashboard/batches/?state=cancelled")
    rows = page.locator("#batch-rows tr")
    assert rows.count() == 1 and rows.get_attribute("data-batch") == str(naps.id)
    live.hub.stop()
