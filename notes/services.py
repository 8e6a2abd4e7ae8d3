"""Notes: page saves in order, image uploads to Cloudinary or storage, image clean-up,
task reminders. Views and jobs call these; the rules live here."""

from __future__ import annotations

import io
import logging
import re
import secrets
import smtplib
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.mail import EmailMessage
from django.db import transaction
from django.db.models import F, Q
from django.urls import reverse
from django.utils import timezone
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from jobs.engine import JobContext, PermanentError, enqueue

from .models import Image, ImageStatus, Page, Task

log = logging.getLogger(__name__)

ALLOWED_FORMATS = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "GIF": "image/gif",
    "WEBP": "image/webp",
}
MARKDOWN_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
IMAGE_ID = re.compile(r"(?:image:|/api/notes/images/)(\d+)")


class InvalidUpload(ValueError):
    pass


# --- pages ------------------------------------------------------------------------------


def create_page(owner, title: str, content: str = "") -> Page:
    with transaction.atomic():
        page = Page.objects.create(owner=owner, title=title, content=content)
        link_images(page, content)
    return page


def accept_save(page: Page, content: str, title: str | None = None):
    """Number this save and queue the job that applies it. Returns the job."""
    with transaction.atomic():
        Page.objects.filter(id=page.id).update(accepted_version=F("accepted_version") + 1)
        version = Page.objects.values_list("accepted_version", flat=True).get(id=page.id)
        payload = {"page_id": page.id, "version": version, "content": content}
        if title is not None:
            payload["title"] = title
        return enqueue("notes.save_page", payload, owner=page.owner).job


def apply_save(page_id: int, version: int, content: str, title: str | None = None) -> bool:
    """Apply save number `version` unless a newer one is already applied. True if applied."""
    with transaction.atomic():
        changes: dict[str, Any] = {
            "content": content,
            "applied_version": version,
            "updated_at": timezone.now(),
        }
        if title is not None:
            changes["title"] = title
        applied = Page.objects.filter(id=page_id, applied_version__lt=version).update(**changes)
        if applied:
            link_images(Page.objects.get(id=page_id), content)
    return bool(applied)


def referenced_image_ids(owner_id: int, content: str) -> set[int]:
    """The owner's images the markdown shows, by URL or by id."""
    urls = set(MARKDOWN_IMAGE.findall(content))
    ids = {int(i) for i in IMAGE_ID.findall(content)}
    if not urls and not ids:
        return set()
    matches = Image.objects.filter(owner_id=owner_id).filter(Q(url__in=urls) | Q(id__in=ids))
    return set(matches.values_list("id", flat=True))


def link_images(page: Page, content: str) -> None:
    page.images.set(referenced_image_ids(page.owner_id, content))


# --- images -----------------------------------------------------------------------------

# Cloudinary keeps the images as "authenticated" assets: nothing is delivered without a
# signature, and the signed download URLs the owner is sent to expire.
CLOUDINARY_TYPE = "authenticated"
CLOUDINARY_TIMEOUT = 10


@dataclass(frozen=True)
class Sniffed:
    content_type: str
    width: int
    height: int


def sniff_image(data: bytes) -> Sniffed:
    """What the bytes really are: refuse anything but PNG, JPEG, GIF and WebP, and images
    with more pixels than the limit, judged from the header before any pixel is decoded."""
    limit = settings.NOTES_IMAGE_MAX_PIXELS
    too_many_pixels = f"the limit is {limit:,} pixels"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            with PILImage.open(io.BytesIO(data)) as img:
                kind, (width, height) = img.format, img.size
                if width * height > limit:
                    raise InvalidUpload(
                        f"The image is {width}x{height}, {width * height:,} pixels;"
                        f" {too_many_pixels}."
                    )
                img.verify()
    except InvalidUpload:
        raise
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as exc:
        raise InvalidUpload(f"The image has too many pixels to open; {too_many_pixels}.") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvalidUpload("The file is not an image we accept (PNG, JPEG, GIF, WebP).") from exc
    if kind not in ALLOWED_FORMATS:
        raise InvalidUpload(f"{kind} images are not accepted; use PNG, JPEG, GIF or WebP.")
    return Sniffed(ALLOWED_FORMATS[kind], width, height)


def accept_upload(owner, name: str, data: bytes) -> Image:
    """Check the upload, keep its bytes, and queue the job that stores it."""
    limit = settings.NOTES_IMAGE_MAX_BYTES
    if len(data) > limit:
        raise InvalidUpload(f"The image is {len(data)} bytes; the limit is {limit}.")
    if not data:
        raise InvalidUpload("The file is empty.")
    sniffed = sniff_image(data)
    with transaction.atomic():
        image = Image.objects.create(
            owner=owner,
            original_name=name[:255],
            content_type=sniffed.content_type,
            size=len(data),
            width=sniffed.width,
            height=sniffed.height,
        )
        image.url = content_url(image)
        image.file.save(_stored_name(image), ContentFile(data), save=True)
        image.job = enqueue("notes.upload_image", {"image_id": image.id}, owner=owner).job
        image.save(update_fields=["job"])
    return image


def content_url(image: Image) -> str:
    """The owner-only URL the image is shown from (pages link it by this URL)."""
    return reverse("image-content", args=[image.id])


def _stored_name(image: Image) -> str:
    """A name nobody can guess: it says nothing of the owner or the image's id."""
    return f"{secrets.token_urlsafe(24)}.{_extension(image)}"


def _extension(image: Image) -> str:
    return image.content_type.split("/")[1].replace("jpeg", "jpg")


def cloudinary_configured() -> bool:
    return bool(settings.CLOUDINARY_URL)


def store_image(ctx: JobContext, image_id: int) -> dict[str, Any]:
    """Send the image to Cloudinary (or keep it in storage) and record where it is."""
    image = Image.objects.filter(id=image_id).first()
    if image is None:
        raise PermanentError(f"Image {image_id} no longer exists")
    if image.status == ImageStatus.STORED:
        return {"image_id": image.id, "url": image.url, "already": True}
    if cloudinary_configured():
        if not image.public_id:
            # Chosen once, so a retried upload overwrites rather than adds an asset.
            image.public_id = f"{settings.CLOUDINARY_FOLDER}/{secrets.token_urlsafe(24)}"
            image.save(update_fields=["public_id"])
        result = _upload_to_cloudinary(image)
        staged = image.file.name
        image.backend, image.public_id = "cloudinary", result["public_id"]
        image.url = content_url(image)
        image.width = result.get("width") or image.width
        image.height = result.get("height") or image.height
        image.file = ""
        image.status = ImageStatus.STORED
        image.save()
        default_storage.delete(staged)
    else:
        image.backend, image.public_id = "storage", image.file.name
        image.url = content_url(image)
        image.status = ImageStatus.STORED
        image.save()
    return {"image_id": image.id, "url": image.url, "backend": image.backend}


def _cloudinary():
    import cloudinary
    import cloudinary.uploader
    import cloudinary.utils

    cloudinary.reset_config()  # read CLOUDINARY_URL as it is now
    return cloudinary


def _upload_to_cloudinary(image: Image) -> dict[str, Any]:
    cloudinary = _cloudinary()
    with image.file.open("rb") as f:
        return cloudinary.uploader.upload(
            f.read(),
            public_id=image.public_id,
            type=CLOUDINARY_TYPE,
            overwrite=True,
            resource_type="image",
        )


def mark_upload_failed(image_id: int, error: str) -> None:
    Image.objects.filter(id=image_id).exclude(status=ImageStatus.STORED).update(
        status=ImageStatus.FAILED, error=error
    )


def delete_from_store(image: Image) -> None:
    # An upload that failed may still have reached Cloudinary under the id chosen for it.
    if image.backend == "cloudinary" or (not image.backend and image.public_id):
        cloudinary = _cloudinary()
        result = cloudinary.uploader.destroy(
            image.public_id, type=CLOUDINARY_TYPE, resource_type="image"
        )
        if result.get("result") not in ("ok", "not found"):
            raise RuntimeError(f"Cloudinary refused to delete {image.public_id}: {result}")
    if image.file:
        image.file.delete(save=False)


def on_cloudinary(image: Image) -> bool:
    """Whether the bytes live on Cloudinary only (no copy in storage)."""
    return image.backend == "cloudinary" and not image.file


def signed_url(image: Image, expires_in: int = 300) -> str:
    """A URL a browser may use for a short while: for an image on Cloudinary a signed
    download URL that expires after `expires_in` seconds; for one in storage the
    owner-only content URL, which needs the owner's login."""
    if not on_cloudinary(image):
        return content_url(image)
    cloudinary = _cloudinary()
    return cloudinary.utils.private_download_url(
        image.public_id,
        _extension(image),
        type=CLOUDINARY_TYPE,
        resource_type="image",
        expires_at=int(time.time()) + expires_in,
    )


def image_content(image: Image) -> tuple[bytes, str]:
    """The image's bytes and content type, from storage or downloaded from Cloudinary.
    Raises FileNotFoundError when the bytes are gone."""
    if not on_cloudinary(image):
        if not image.file:
            raise FileNotFoundError(f"Image {image.id} has no stored file")
        with image.file.open("rb") as f:
            return f.read(), image.content_type
    url = signed_url(image, expires_in=60)
    most = max(image.size, settings.NOTES_IMAGE_MAX_BYTES)
    try:
        with urllib.request.urlopen(url, timeout=CLOUDINARY_TIMEOUT) as response:
            data = response.read(most + 1)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise FileNotFoundError(f"Cloudinary has no image {image.public_id}") from exc
        raise
    if len(data) > most:
        raise ValueError(f"Cloudinary sent more than the {most} bytes expected")
    return data, image.content_type


# --- clean-up ---------------------------------------------------------------------------

CLEANUP_KINDS = ("mark-orphaned", "delete-marked", "comprehensive")


def unreferenced_images():
    return Image.objects.filter(status=ImageStatus.STORED, pages__isnull=True)


def cleanup_images(
    kind: str, batch_size: int, grace: timedelta, progress=lambda message: None
) -> dict[str, int]:
    """Mark stored images no page shows, un-mark those shown again, and delete images
    marked longer than `grace` from their store and the database, `batch_size` at a time."""
    counts = {"marked": 0, "unmarked": 0, "deleted": 0}
    if kind in ("mark-orphaned", "comprehensive"):
        counts["unmarked"] = _in_batches(
            Image.objects.filter(orphaned_at__isnull=False, pages__isnull=False),
            batch_size,
            lambda ids: Image.objects.filter(id__in=ids).update(orphaned_at=None),
        )
        now = timezone.now()
        counts["marked"] = _in_batches(
            unreferenced_images().filter(orphaned_at__isnull=True),
            batch_size,
            lambda ids: Image.objects.filter(id__in=ids, pages__isnull=True).update(
                orphaned_at=now
            ),
        )
        progress(f"Marked {counts['marked']}, un-marked {counts['unmarked']}")
    if kind in ("delete-marked", "comprehensive"):
        cutoff = timezone.now() - grace
        counts["deleted"] = _in_batches(
            unreferenced_images().filter(orphaned_at__lt=cutoff),
            batch_size,
            _delete_images,
        )
        progress(f"Deleted {counts['deleted']}")
    return counts


def _in_batches(queryset, batch_size: int, handle) -> int:
    done, after = 0, 0
    while True:
        ids = list(
            queryset.filter(id__gt=after).order_by("id").values_list("id", flat=True)[:batch_size]
        )
        if not ids:
            return done
        done += handle(ids) or 0
        after = ids[-1]


def _delete_images(ids: list[int]) -> int:
    deleted = 0
    for image in Image.objects.filter(id__in=ids, pages__isnull=True):
        delete_from_store(image)
        image.delete()
        deleted += 1
    return deleted


# --- reminders --------------------------------------------------------------------------


@dataclass
class Reminder:
    email: str
    username: str
    due_soon: list[Task]
    overdue: list[Task]

    def text(self) -> str:
        lines = [f"Hello {self.username},", ""]
        if self.due_soon:
            lines.append("Due within the hour:")
            lines += [
                f"  - {t.title} (due {timezone.localtime(t.due_at):%H:%M})" for t in self.due_soon
            ]
        if self.overdue:
            lines.append("Overdue:")
            lines += [
                f"  - {t.title} (was due {timezone.localtime(t.due_at):%Y-%m-%d %H:%M})"
                for t in self.overdue
            ]
        return "\n".join(lines) + "\n"


class RemindersNotSent(Exception):
    """Some owners' reminders could not be sent; their tasks are released for the next run."""

    def __init__(self, failed_owner_ids: list[int], owners: int):
        super().__init__(
            f"Reminders could not be sent to {len(failed_owner_ids)} of {owners} owners"
            f" (user ids {', '.join(map(str, failed_owner_ids))}); their tasks are left"
            " for the next run."
        )
        self.failed_owner_ids = failed_owner_ids


def send_task_reminders(now: datetime | None = None) -> dict[str, int]:
    """E-mail each owner about tasks due within the hour (with five minutes' slack) and
    overdue ones, once per task and kind.

    Owners are reminded one at a time: an owner's tasks are claimed right before their
    e-mail goes out and released if it cannot be sent. Claiming per owner (rather than
    every owner's tasks up front) means a worker killed mid-loop leaves at most one
    owner's tasks claimed without a sent e-mail; the owners it had not reached yet are
    untouched and the next run reminds them. A failure for one owner does not stop the
    others; the run then raises RemindersNotSent, so the job retries, and the retry
    reminds only the released owners. A mail server that cannot be reached at all stops
    the run at once: every other owner would wait for it in turn.
    """
    now = now or timezone.now()
    due = _due_soon(now) | _overdue(now)
    owner_ids = list(
        Task.objects.filter(due, done=False, owner__email__gt="")
        .order_by("owner_id")
        .values_list("owner_id", flat=True)
        .distinct()
    )
    counts = {"emails": 0, "due_soon": 0, "overdue": 0}
    failed: list[int] = []
    for owner_id in owner_ids:
        try:
            reminder = _remind_owner(owner_id, now)
        except Exception as exc:
            if _fails_every_owner(exc):
                raise
            log.warning("Task reminder to user %s could not be sent", owner_id, exc_info=True)
            failed.append(owner_id)
            continue
        if reminder is not None:
            counts["emails"] += 1
            counts["due_soon"] += len(reminder.due_soon)
            counts["overdue"] += len(reminder.overdue)
    if failed:
        raise RemindersNotSent(failed, len(owner_ids))
    return counts


def _due_soon(now: datetime) -> Q:
    horizon = now + timedelta(minutes=65)
    return Q(due_at__gt=now, due_at__lte=horizon, due_soon_sent_at__isnull=True)


def _overdue(now: datetime) -> Q:
    return Q(due_at__lte=now, overdue_sent_at__isnull=True)


def _remind_owner(owner_id: int, now: datetime) -> Reminder | None:
    """Claim the owner's due tasks and send them one e-mail; None when another run has
    claimed them all. The claims are released if the e-mail cannot be sent."""
    tasks = Task.objects.filter(owner_id=owner_id, done=False, owner__email__gt="")
    soon_ids = _claim(tasks.filter(_due_soon(now)), "due_soon_sent_at", now)
    overdue_ids = _claim(tasks.filter(_overdue(now)), "overdue_sent_at", now)
    if not soon_ids and not overdue_ids:
        return None
    try:
        reminder = _reminder(soon_ids, overdue_ids)
        if reminder is None:  # the tasks were deleted meanwhile
            return None
        EmailMessage(
            _reminder_subject(reminder),
            reminder.text(),
            settings.DEFAULT_FROM_EMAIL,
            [reminder.email],
        ).send()
    except BaseException:
        _release(soon_ids, "due_soon_sent_at", now)
        _release(overdue_ids, "overdue_sent_at", now)
        raise
    return reminder


def _fails_every_owner(exc: Exception) -> bool:
    """Whether the next owner would fail the same way: the mail server cannot be reached
    or hung up, or the job's time is up. A refused address or message is the owner's own."""
    if isinstance(exc, SoftTimeLimitExceeded | smtplib.SMTPConnectError):
        return True
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return True
    return isinstance(exc, OSError) and not isinstance(exc, smtplib.SMTPException)


def _claim(queryset, flag: str, now: datetime) -> list[int]:
    claimed = []
    for task_id in queryset.values_list("id", flat=True):
        # One conditional UPDATE per task: a second run at the same moment claims nothing.
        if Task.objects.filter(id=task_id, **{f"{flag}__isnull": True}).update(**{flag: now}):
            claimed.append(task_id)
    return claimed


def _release(ids: list[int], flag: str, now: datetime) -> None:
    # Only this run's claims: a task whose reminders were reset and claimed again since
    # belongs to that other run.
    if ids:
        Task.objects.filter(id__in=ids, **{flag: now}).update(**{flag: None})


def _reminder(soon_ids: list[int], overdue_ids: list[int]) -> Reminder | None:
    tasks = Task.objects.filter(id__in=[*soon_ids, *overdue_ids]).select_related("owner")
    reminder = None
    for task in tasks.order_by("due_at"):
        reminder = reminder or Reminder(task.owner.email, task.owner.get_username(), [], [])
        (reminder.due_soon if task.id in soon_ids else reminder.overdue).append(task)
    return reminder


def _reminder_subject(reminder: Reminder) -> str:
    parts = []
    if reminder.due_soon:
        parts.append(f"{len(reminder.due_soon)} due soon")
    if reminder.overdue:
        parts.append(f"{len(reminder.overdue)} overdue")
    return "Tasks: " + ", ".join(parts)


def update_task(task: Task, **changes: Any) -> Task:
    """Change a task; a new due time earns new reminders."""
    if "due_at" in changes and changes["due_at"] != task.due_at:
        task.due_soon_sent_at = None
        task.overdue_sent_at = None
    for field, value in changes.items():
        setattr(task, field, value)
    task.save()
    return task


# --- reading images for reports ----------------------------------------------------------

IMAGE_REFERENCE = re.compile(r"image:([0-9]{1,18})")
IMAGE_API_PATH = re.compile(r"/api/notes/images/([0-9]{1,18})/(?:content/)?")


def report_image(owner_id: int, url: str) -> tuple[bytes, str] | None:
    """The bytes and content type of the owner's stored image that `url` names: `image:<id>`,
    its API path (also on SITE_URL) or exactly the image's own URL. None for anything else,
    for another owner's image and for one that cannot be read."""
    stored = Image.objects.filter(owner_id=owner_id, status=ImageStatus.STORED)
    image_id = _image_id_named_by(url)
    if image_id is not None:
        image = stored.filter(id=image_id).first()
    else:
        image = stored.filter(url=url).first() if url else None
    if image is None:
        return None
    try:
        return image_content(image)
    except Exception:
        log.warning("Image %s could not be read for a report", image.id, exc_info=True)
        return None


def _image_id_named_by(url: str) -> int | None:
    if match := IMAGE_REFERENCE.fullmatch(url):
        return int(match[1])
    try:
        parts, site = urlsplit(url), urlsplit(settings.SITE_URL)
    except ValueError:
        return None
    if (parts.scheme or parts.netloc) and (parts.scheme.lower(), parts.netloc.lower()) != (
        site.scheme.lower(),
        site.netloc.lower(),
    ):
        return None
    match = IMAGE_API_PATH.fullmatch(parts.path)
    return int(match[1]) if match else None
