"""Pages: created at once, saved by jobs in the order the saves were accepted (on a real
worker for concurrent saves, in the test process otherwise)."""

import pytest

from jobs.models import Job
from notes import services
from notes.models import Image, ImageStatus, Page
from tests.engine import run
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
    assert run(job["id"]) == "succeeded"
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
    jobs = [r.json()["job"] for r in responses]
    for job in jobs:
        api.wait_for_status(job["id"], "succeeded")
    versions = {Job.objects.get(id=j["id"]).payload["version"]: j for j in jobs}
    assert sorted(versions) == list(range(1, 13))
    last = Job.objects.get(id=versions[12]["id"]).payload["content"]
    saved = Page.objects.get(id=page["id"])
    assert (saved.content, saved.applied_version, saved.accepted_version) == (last, 12, 12)


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
