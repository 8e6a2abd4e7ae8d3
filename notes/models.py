"""Notes: pages of markdown, the images they show, and todo tasks."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from jobs.engine import Job


class Page(models.Model):
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="pages"
    )
    title = models.CharField(max_length=200)
    content = models.TextField(blank=True)
    # Saves are numbered when accepted; a save job applies only a newer number, so a
    # slow older save never overwrites a newer one.
    accepted_version = models.PositiveIntegerField(default=0)
    applied_version = models.PositiveIntegerField(default=0)
    images = models.ManyToManyField("Image", blank=True, related_name="pages")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]
        indexes = [models.Index(fields=["owner", "-updated_at"], name="page_owner_recent")]

    def __str__(self) -> str:
        return self.title


class ImageStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    STORED = "stored", "Stored"
    FAILED = "failed", "Failed"


class Image(models.Model):
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="images"
    )
    status = models.CharField(
        max_length=16, choices=ImageStatus.choices, default=ImageStatus.PENDING
    )
    job = models.OneToOneField(
        Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="image"
    )
    original_name = models.CharField(max_length=255, blank=True)
    content_type = models.CharField(max_length=50)
    size = models.PositiveIntegerField()
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    # Where the bytes wait for the upload job, then where they live when kept locally.
    file = models.FileField(upload_to="notes/images/%Y/%m/", blank=True)
    backend = models.CharField(max_length=16, blank=True)  # "cloudinary" or "storage"
    public_id = models.CharField(max_length=255, blank=True)
    # The owner-only URL it is shown from (/api/notes/images/<id>/content/), never a public one.
    url = models.CharField(max_length=500, blank=True)
    error = models.TextField(blank=True)
    orphaned_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["owner", "-created_at"], name="image_owner_recent"),
            models.Index(fields=["status", "orphaned_at"], name="image_cleanup"),
        ]

    def __str__(self) -> str:
        return self.original_name or f"image {self.pk}"


class Task(models.Model):
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="tasks"
    )
    title = models.CharField(max_length=200)
    due_at = models.DateTimeField(null=True, blank=True)
    done = models.BooleanField(default=False)
    # When each reminder went out; cleared when the due time changes.
    due_soon_sent_at = models.DateTimeField(null=True, blank=True)
    overdue_sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["done", "due_at", "-created_at"]
        indexes = [models.Index(fields=["done", "due_at"], name="task_due")]

    def __str__(self) -> str:
        return self.title
