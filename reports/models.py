"""A report: a PDF a user asked for, rendered by a `reports.generate` job."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils.functional import cached_property
from django.utils.text import slugify

from jobs.engine import Job, Status, place_data


class Kind(models.TextChoices):
    JOB_ACTIVITY = "job_activity", "Job activity"
    NOTES_EXPORT = "notes_export", "Notes export"


class ReportQuerySet(models.QuerySet):
    def owned_by(self, user) -> ReportQuerySet:
        return self.filter(owner=user)

    def with_status(self, status: str) -> ReportQuerySet:
        return self.filter(job__status=status)


class Report(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="reports"
    )
    kind = models.CharField(max_length=40, choices=Kind.choices)
    title = models.CharField(max_length=200)
    parameters = models.JSONField(default=dict, blank=True)
    # The job's status is the report's; if the job row is purged, the file tells.
    job = models.OneToOneField(
        Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="report"
    )
    file = models.FileField(upload_to="reports/%Y/%m/", blank=True)
    size = models.PositiveIntegerField(null=True, blank=True)
    page_count = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ReportQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner", "-created_at"], name="report_owner_recent")]

    def __str__(self) -> str:
        return f"{self.title} ({self.get_kind_display()})"

    @property
    def status(self) -> str:
        if self.job_id is not None:
            return self.job.status
        return Status.SUCCEEDED if self.file else Status.FAILED

    @property
    def status_label(self) -> str:
        return "Ready" if self.status == Status.SUCCEEDED else Status(self.status).label

    @property
    def progress(self) -> int:
        return self.job.progress if self.job_id is not None else 100

    @property
    def message(self) -> str:
        return self.job.message if self.job_id is not None else ""

    @cached_property
    def line(self) -> dict | None:
        """While its job is queued, its place in line (jobs.line; two queries), else None."""
        if self.job_id is None or self.job.status != Status.QUEUED:
            return None
        return place_data(self.job)

    @property
    def is_active(self) -> bool:
        return self.status in (Status.QUEUED, Status.RUNNING)

    @property
    def can_retry(self) -> bool:
        return self.status in (Status.FAILED, Status.CANCELLED) and self.job_id is not None

    @property
    def is_ready(self) -> bool:
        return self.status == Status.SUCCEEDED and bool(self.file)

    def download_name(self) -> str:
        return f"{slugify(self.title) or 'report'}-{self.created_at:%Y-%m-%d}.pdf"
