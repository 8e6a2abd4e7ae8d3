"""Pages: created at once, saved by jobs in the order the saves were accepted (on a real
worker for concurrent saves, in the test process otherwise)."""

from datetime import timedelta

import pytest
from django.conf import settings

from jobs.context import JobContext
from jobs.models import Job
from jobs.store import job_store
from notes import services
from notes.jobs import save_page
from notes.models import Image, ImageStatus, Page
from tests.engine import event_kinds, reloaded, run, run_when_due
from tests.support import run_in_threads


def stored_image(owner, url: str) -> Image:
    return Image.objects.create(
        owner=owner, status=ImageStatus.STORED, content_type="image/png", size=1, url=url
    )


def test_a_page_is_created_at_once(api, user):
    response = api.post("/api/notes/pages/", {"title": "Ideas", "content": "# Ideas"})

    assert response.status_code == 201
    assert response.json()["content"] == "# Ideas"
    assert Page.objects.get(owner=user).title == "Ideas"


def test_a_page_needs_a_title(api):
    response = api.post("/api/notes/pages/", {"content": "no title"})

    assert response.status_code == 400
    assert "title" in response.json()["errors"]
    assert Page.objects.count() == 0


def test_an_update_is_a_202_and_the_content_shows_once_its_job_succeeds(api, user):
    page = api.post("/api/notes/pages/", {"title": "Ideas", "content": "old"}).json()

    response = api.request("PATCH", f"/api/notes/pages/{page['id']}/", json={"content": "new"})

    assert response.status_code == 202
    job = response.json()["job"]
    assert job["type"] == "notes.save_page" and job["queue"] == "pages"
    assert api.get(f"/api/notes/pages/{page['id']}/").json()["content"] == "old"
    assert run_when_due(job["id"]) == "succeeded"
    assert api.get(f"/api/notes/pages/{page['id']}/").json()["content"] == "new"


@pytest.mark.worker
def test_concurrent_saves_end_with_the_last_accepted_one(live_api, user, worker):
    api = live_api
    page = api.post("/api/notes/pages/", {"title": "Draft", "content": ""}).json()

    responses = run_in_threads(
        12,
        lambda i: api.request(
            "PUT", f"/api/notes/pages/{page['id']}/", json={"content": f"draft {i}"}
        ),
    )

    assert all(r.status_code == 202 for r in responses)
    job_ids = {r.json()["job"]["id"] for r in responses}
    for job_id in job_ids:
        api.wait_for_status(job_id, "succeeded")
    last = max((Job.objects.get(id=j) for j in job_ids), key=lambda j: j.payload["version"])
    saved = Page.objects.get(id=page["id"])
    assert last.payload["version"] == 12
    assert (saved.content, saved.applied_version, saved.accepted_version) == (
        last.payload["content"],
        12,
        12,
    )


def test_a_burst_of_saves_is_one_job_that_writes_the_last_content(api, user):
    page = api.post("/api/notes/pages/", {"title": "Draft", "content": "v0"}).json()
    url = f"/api/notes/pages/{page['id']}/"

    responses = [api.request("PATCH", url, json={"content": f"draft {i}"}) for i in range(1, 8)]

    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["job"]["id"] for r in responses}) == 1
    job = Job.objects.get(type="notes.save_page")
    assert job.payload == {"page_id": page["id"], "version": 7, "content": "draft 7"}
    assert event_kinds(job).count("debounced") == 6
    debounce = timedelta(seconds=settings.NOTES_SAVE_DEBOUNCE)
    assert abs(job.run_at - (job.created_at + debounce)) < timedelta(seconds=0.5)

    assert run(job, now=job.run_at - timedelta(seconds=1.5)) == "early"
    assert run(job, now=job.run_at) == "succeeded"
    saved = Page.objects.get(id=page["id"])
    assert (saved.content, saved.applied_version, saved.accepted_version) == ("draft 7", 7, 7)
    assert reloaded(job).result == {"page_id": page["id"], "version": 7, "applied": True}


def test_a_save_while_the_pages_job_runs_queues_a_new_one_and_the_last_save_wins(user):
    page = services.create_page(user, "Plan", "v0")
    first = services.accept_save(page, "first")
    assert services.accept_save(page, "second").id == first.id
    running = job_store().claim(first.id, first.run_at, first.run_at)
    assert running is not None and running.payload["content"] == "second"

    later = services.accept_save(page, "third")
    assert services.accept_save(page, "fourth").id == later.id != first.id

    assert run_when_due(later) == "succeeded"
    # The first run, slower, ends after it: its older save is not applied.
    assert save_page(JobContext(running)) == {"page_id": page.id, "version": 2, "applied": False}
    page.refresh_from_db()
    assert (page.content, page.applied_version) == ("fourth", 4)


def test_a_stale_save_never_overwrites_a_newer_one(user):
    page = services.create_page(user, "Plan", "v0")

    assert services.apply_save(page.id, 2, "second") is True
    assert services.apply_save(page.id, 1, "first, but late") is False

    page.refresh_from_db()
    assert (page.content, page.applied_version) == ("second", 2)


def test_a_save_records_the_images_the_page_shows(user, other_user):
    by_url = stored_image(user, "https://res.cloudinary.com/demo/image/upload/cat.png")
    by_id = stored_image(user, "https://example.com/dog.png")
    unused = stored_image(user, "https://example.com/unused.png")
    theirs = stored_image(other_user, "https://example.com/theirs.png")
    page = services.create_page(user, "Pets", "")

    services.apply_save(
        page.id,
        1,
        f"![cat]({by_url.url})\n\nSee image:{by_id.id} and ![x]({theirs.url})",
    )

    assert set(page.images.values_list("id", flat=True)) == {by_url.id, by_id.id}
    services.apply_save(page.id, 2, "no pictures now")
    assert not page.images.exists()
    assert unused.pages.count() == 0


def test_another_users_page_is_404(api, other_api):
    page = api.post("/api/notes/pages/", {"title": "Mine"}).json()

    assert other_api.get(f"/api/notes/pages/{page['id']}/").status_code == 404
    assert (
        other_api.request(
            "PATCH", f"/api/notes/pages/{page['id']}/", json={"content": "x"}
        ).status_code
        == 404
    )
    assert other_api.get("/api/notes/pages/").json()["results"] == []
