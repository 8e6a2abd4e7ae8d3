"""Defence in depth: a job with an owner acts only on its owner's pages, images and
reports, however it was created. A mismatch fails the job at once and changes nothing;
jobs without an owner (created by the application) act on anyone's. The jobs run in the
test process."""

import io

from django.core.files.base import ContentFile
from PIL import Image as PILImage

from jobs import services
from jobs.models import Job, Status
from notes import services as notes_services
from notes.models import Image, ImageStatus
from reports.models import Report
from tests.engine import reloaded, run_when_due


def finished(job: Job) -> Job:
    run_when_due(job)
    return reloaded(job)


def assert_refused(job: Job, what: str) -> None:
    job = finished(job)
    assert job.status == Status.FAILED
    assert job.attempts == 1  # no retries
    assert f"{what} does not belong to the owner of this job" in job.error


def test_a_page_save_owned_by_another_user_fails_and_changes_nothing(user, other_user, other_api):
    page = notes_services.create_page(other_user, "Bob's page", "original")

    attack = services.enqueue(
        "notes.save_page",
        {"page_id": page.id, "version": 2147483647, "content": "pwned"},
        owner=user,
    ).job

    assert_refused(attack, f"Page {page.id}")
    page.refresh_from_db()
    assert (page.content, page.applied_version) == ("original", 0)
    saved = other_api.request("PATCH", f"/api/notes/pages/{page.id}/", json={"content": "mine"})
    assert run_when_due(saved.json()["job"]["id"]) == "succeeded"
    page.refresh_from_db()
    assert (page.content, page.applied_version) == ("mine", 1)


def test_a_page_save_without_an_owner_still_applies(other_user):
    page = notes_services.create_page(other_user, "Bob's page", "original")

    job = services.enqueue(
        "notes.save_page", {"page_id": page.id, "version": 1, "content": "by the application"}
    ).job

    assert finished(job).status == Status.SUCCEEDED
    page.refresh_from_db()
    assert page.content == "by the application"


def png() -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (4, 4), (0, 120, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_image_upload_owned_by_another_user_fails_and_changes_nothing(user, other_user):
    image = Image.objects.create(
        owner=other_user, content_type="image/png", size=len(png()), original_name="bob.png"
    )
    image.file.save("bob.png", ContentFile(png()), save=True)

    attack = services.enqueue("notes.upload_image", {"image_id": image.id}, owner=user).job

    assert_refused(attack, f"Image {image.id}")
    image.refresh_from_db()
    assert (image.status, image.backend, image.url, image.error) == (
        ImageStatus.PENDING,
        "",
        "",
        "",
    )
    own = services.enqueue("notes.upload_image", {"image_id": image.id}, owner=other_user).job
    assert finished(own).status == Status.SUCCEEDED
    image.refresh_from_db()
    assert image.status == ImageStatus.STORED


def test_a_report_owned_by_another_user_fails_and_changes_nothing(user, other_user):
    report = Report.objects.create(owner=other_user, kind="notes_export", title="Bob's notes")

    attack = services.enqueue("reports.generate", {"report_id": str(report.id)}, owner=user).job

    assert_refused(attack, f"Report {report.id}")
    report.refresh_from_db()
    assert not report.file and report.size is None and report.page_count is None
    own = services.enqueue("reports.generate", {"report_id": str(report.id)}, owner=other_user).job
    assert finished(own).status == Status.SUCCEEDED
    report.refresh_from_db()
    assert report.file and report.page_count >= 1
