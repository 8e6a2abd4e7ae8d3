"""Notes job types: page saves, image uploads, image clean-up, task reminders.

None is creatable through the jobs API (the default exposure): the notes endpoints,
the schedules and the staff clean-up endpoint create them.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from rest_framework import serializers

from jobs.engine import JobContext, Unique, job_type

from . import services
from .models import Image, Page


class SavePagePayload(serializers.Serializer):
    page_id = serializers.IntegerField()
    version = serializers.IntegerField(min_value=1)
    content = serializers.CharField(allow_blank=True, max_length=1_000_000)
    title = serializers.CharField(required=False, max_length=200)


@job_type(
    "notes.save_page",
    serializer=SavePagePayload,
    queue="pages",
    max_attempts=5,
    backoff_base=1,
    soft_time_limit=60,
    # A burst of saves of a page is one job, run once with the last save's content.
    unique=Unique(fields=("page_id",), debounce=settings.NOTES_SAVE_DEBOUNCE),
    description="Apply a page save (in order) and record the images it shows.",
)
def save_page(ctx: JobContext) -> dict:
    p = ctx.payload
    owner_id = Page.objects.filter(id=p["page_id"]).values_list("owner_id", flat=True).first()
    if owner_id is not None:
        ctx.check_owner(owner_id, f"Page {p['page_id']}")
    applied = services.apply_save(p["page_id"], p["version"], p["content"], p.get("title"))
    return {"page_id": p["page_id"], "version": p["version"], "applied": applied}


class UploadImagePayload(serializers.Serializer):
    image_id = serializers.IntegerField()


@job_type(
    "notes.upload_image",
    serializer=UploadImagePayload,
    queue="images",
    max_attempts=3,
    backoff_base=5,
    soft_time_limit=120,
    description="Store an uploaded image on Cloudinary (or in Django storage).",
)
def upload_image(ctx: JobContext) -> dict:
    image_id = ctx.payload["image_id"]
    owner_id = Image.objects.filter(id=image_id).values_list("owner_id", flat=True).first()
    if owner_id is not None:
        ctx.check_owner(owner_id, f"Image {image_id}")
    try:
        return services.store_image(ctx, image_id)
    except Exception as exc:
        if ctx.attempt >= ctx.job.max_attempts:
            services.mark_upload_failed(image_id, f"{type(exc).__name__}: {exc}")
        raise


class CleanupPayload(serializers.Serializer):
    type = serializers.ChoiceField(choices=services.CLEANUP_KINDS, default="comprehensive")
    batch_size = serializers.IntegerField(min_value=1, max_value=1000, required=False)
    grace_hours = serializers.FloatField(min_value=0, required=False)


@job_type(
    "notes.image_cleanup",
    serializer=CleanupPayload,
    queue="maintenance",
    max_attempts=3,
    backoff_base=60,
    soft_time_limit=1800,
    description="Mark images no page shows; delete those marked past the grace period.",
    # The grace period and batch size are the operators' settings.
    staff_fields=frozenset({"batch_size", "grace_hours"}),
)
def image_cleanup(ctx: JobContext) -> dict:
    p = ctx.payload
    return services.cleanup_images(
        p["type"],
        batch_size=p.get("batch_size") or settings.NOTES_CLEANUP_BATCH,
        grace=timedelta(hours=p.get("grace_hours", settings.NOTES_CLEANUP_GRACE_HOURS)),
        progress=lambda message: ctx.progress(50, message),
    )


@job_type(
    "notes.task_reminders",
    queue="emails",
    max_attempts=3,
    backoff_base=30,
    soft_time_limit=300,
    description="E-mail owners about tasks due within the hour and overdue tasks, once each.",
)
def task_reminders(ctx: JobContext) -> dict:
    return services.send_task_reminders()
