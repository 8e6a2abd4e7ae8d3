"""The webhooks job type: one delivery sent to its endpoint, retried with backoff.

Internal: only the webhooks app creates these jobs (as jobs end, on a replay or a ping).
"""

from __future__ import annotations

from django.conf import settings
from rest_framework import serializers

from jobs.engine import JobContext, job_type

from . import services


class DeliverPayload(serializers.Serializer):
    delivery_id = serializers.UUIDField()


@job_type(
    services.DELIVER,
    serializer=DeliverPayload,
    queue="default",
    max_attempts=settings.WEBHOOKS_MAX_ATTEMPTS,
    backoff_base=settings.WEBHOOKS_BACKOFF_BASE,
    backoff_max=3600,
    # A connection and a read, each bounded by its timeout, with room to record them.
    soft_time_limit=int(settings.WEBHOOKS_CONNECT_TIMEOUT + settings.WEBHOOKS_READ_TIMEOUT) + 30,
    description="POST one webhook delivery to its endpoint, signed.",
)
def deliver(ctx: JobContext) -> dict:
    return services.deliver(ctx)
