"""The dashboard in Chromium: it refreshes itself without reloading the page, and pauses
a queue from its Controls section."""

import pytest
from django.contrib.auth.models import Permission

from jobs import controls, scheduling, services
from jobs.models import Job, Scope, Status
from tests.conftest import CHROMIUM, PASSWORD

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium package"),
]


def test_the_dashboard_updates_in_place_and_retries_with_one_click(page, staff_user):
    staff_user.user_permissions.add(Permission.objects.get(codename="retry_job"))
    failed = services.enqueue("system.noop").job
    Job.objects.filter(id=failed.id).update(status=Status.FAILED, error="Disk full")
    page.goto("/dashboard/")
    page.get_by_label("Username").fill(staff_user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/dashboard/")
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


def test_a_queue_paused_from_the_dashboard_shows_paused_beside_the_schedules(page, staff_user):
    staff_user.user_permissions.add(
        *Permission.objects.filter(codename__in=["pause_jobs", "change_periodictask"])
    )
    scheduling.sync()
    page.goto("/dashboard/")
    page.get_by_label("Username").fill(staff_user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/dashboard/")
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
