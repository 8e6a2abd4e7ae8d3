"""Webhooks: the endpoints users register to be told when their jobs (and batches) end,
and each delivery to them with its attempts."""

from __future__ import annotations

import secrets
import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class Event(models.TextChoices):
    JOB_SUCCEEDED = "job.succeeded"
    JOB_FAILED = "job.failed"
    JOB_CANCELLED = "job.cancelled"
    JOB_EXPIRED = "job.expired"
    BATCH_FINISHED = "batch.finished"


# Sent by POST /api/webhooks/<id>/test/ whatever the endpoint subscribes to.
PING = "ping"


def new_secret() -> str:
    return "whsec_" + secrets.token_hex(32)


class EndpointQuerySet(models.QuerySet):
    def visible_to(self, user) -> EndpointQuerySet:
        return self if user.is_staff else self.filter(owner=user)


class WebhookEndpoint(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_endpoints"
    )
    url = models.URLField(max_length=2000)
    description = models.CharField(max_length=200, blank=True, default="")
    # Signs every delivery; shown to the owner only at creation and when rotated.
    secret = models.CharField(max_length=100, default=new_secret)
    events = models.JSONField(default=list)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = EndpointQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # Every job end asks whether its owner has an active endpoint.
            models.Index(fields=["owner", "active"], name="webhookendpoint_owner_active"),
        ]

    def __str__(self) -> str:
        return self.url

    def subscribes_to(self, event: str) -> bool:
        return event in self.events


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed"
    # Its job was cancelled before the receiver took it.
    CANCELLED = "cancelled", "Cancelled"


class DeliveryQuerySet(models.QuerySet):
    def visible_to(self, user) -> DeliveryQuerySet:
        return self if user.is_staff else self.filter(endpoint__owner=user)


class WebhookDelivery(models.Model):
    """One event sent to one endpoint: the body as sent on every attempt, and how the
    attempts went. A replay is a delivery of its own, pointing at the original."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries", db_index=False
    )
    event = models.CharField(max_length=32)
    # The job's id, or the batch's.
    subject_id = models.CharField(max_length=64)
    payload = models.JSONField()
    replay_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replays"
    )
    status = models.CharField(
        max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True, default="")
    # The webhooks.deliver job sending it (kept when the job row is purged).
    job_id = models.UUIDField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    objects = DeliveryQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        permissions = [("replay_webhookdelivery", "Can replay webhook deliveries")]
        constraints = [
            # A job's end yields at most one original delivery per endpoint, however
            # often it is offered; replays are new deliveries of the same event.
            models.UniqueConstraint(
                fields=["endpoint", "event", "subject_id"],
                condition=Q(replay_of__isnull=True),
                name="webhookdelivery_once_per_subject",
            ),
        ]
        indexes = [
            models.Index(fields=["endpoint", "-created_at"], name="webhookdelivery_endpoint"),
            # The catch-up: which recent jobs have their deliveries.
            models.Index(fields=["subject_id"], name="webhookdelivery_subject"),
        ]

    def __str__(self) -> str:
        return f"{self.event} {self.subject_id} to {self.endpoint_id}"


class DeliveryAttempt(models.Model):
    """One POST to the receiver, as it went."""

    delivery = models.ForeignKey(
        WebhookDelivery, on_delete=models.CASCADE, related_name="log", db_index=False
    )
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField()
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True, default="")

    class Meta:
        ordering = ["delivery", "number"]
        indexes = [models.Index(fields=["delivery", "number"], name="deliveryattempt_delivery")]

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.delivery_id}"
