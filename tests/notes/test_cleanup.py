"""Image clean-up: mark what no page shows, delete what stayed unshown past the grace
period, un-mark what is shown again; in batches."""

from datetime import timedelta

import pytest
from django.core.files.base import ContentFile
from django.utils import timezone

from jobs.models import Job
from notes import services
from notes.models import Image, ImageStatus

pytestmark = pytest.mark.django_db
GRACE = timedelta(hours=24)


def stored_image(owner, name: str = "x.png", orphaned_for: timedelta | None = None) -> Image:
    image = Image.objects.create(
        owner=owner,
        status=ImageStatus.STORED,
        backend="storage",
        content_type="image/png",
        size=3,
        orphaned_at=timezone.now() - orphaned_for if orphaned_for else None,
    )
    image.file.save(name, ContentFile(b"png"), save=True)
    return image


def test_unshown_images_are_marked_over_several_batches(user):
    page = services.create_page(user, "Gallery", "")
    shown = stored_image(user)
    page.images.add(shown)
    unshown = [stored_image(user) for _ in range(5)]

    counts = services.cleanup_images("mark-orphaned", batch_size=2, grace=GRACE)

    assert counts == {"marked": 5, "unmarked": 0, "deleted": 0}
    assert all(Image.objects.get(id=i.id).orphaned_at for i in unshown)
    assert Image.objects.get(id=shown.id).orphaned_at is None


def test_images_marked_past_the_grace_period_are_deleted_with_their_files(user):
    old = [stored_image(user, orphaned_for=GRACE + timedelta(minutes=1)) for _ in range(3)]
    recent = stored_image(user, orphaned_for=GRACE - timedelta(minutes=1))
    files = [i.file.name for i in old]

    counts = services.cleanup_images("delete-marked", batch_size=2, grace=GRACE)

    assert counts["deleted"] == 3
    assert list(Image.objects.values_list("id", flat=True)) == [recent.id]
    assert not any(old[0].file.storage.exists(name) for name in files)


def test_an_image_shown_again_is_unmarked_and_never_deleted(user):
    image = stored_image(user, orphaned_for=GRACE * 2)
    services.create_page(user, "Back again", f"![again](image:{image.id})")

    counts = services.cleanup_images("comprehensive", batch_size=50, grace=GRACE)

    assert counts == {"marked": 0, "unmarked": 1, "deleted": 0}
    image.refresh_from_db()
    assert image.orphaned_at is None


def test_pending_and_failed_uploads_are_left_alone(user):
    Image.objects.create(owner=user, status=ImageStatus.PENDING, content_type="image/png", size=1)
    Image.objects.create(owner=user, status=ImageStatus.FAILED, content_type="image/png", size=1)

    assert services.cleanup_images("comprehensive", batch_size=50, grace=GRACE)["marked"] == 0


def test_staff_can_trigger_the_cleanup_and_others_cannot(api, staff_api):
    assert api.post("/api/notes/images/cleanup/", {"type": "mark-orphaned"}).status_code == 403

    response = staff_api.post("/api/notes/images/cleanup/", {"type": "delete-marked"})

    assert response.status_code == 202, response.text
    job = Job.objects.get(id=response.json()["id"])
    assert (job.type, job.queue, job.payload["type"]) == (
        "notes.image_cleanup",
        "maintenance",
        "delete-marked",
    )
    assert staff_api.post("/api/notes/images/cleanup/", {"type": "all"}).status_code == 400
