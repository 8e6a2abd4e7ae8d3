"""The report job type."""

from datetime import timedelta

from rest_framework import serializers

from jobs.context import JobContext
from jobs.registry import Retention, job_type

from . import services


class GeneratePayload(serializers.Serializer):
    report_id = serializers.UUIDField()


@job_type(
    services.JOB_TYPE,
    serializer=GeneratePayload,
    queue="reports",
    max_attempts=3,
    backoff_base=2,
    soft_time_limit=600,
    retention=Retention(succeeded_for=timedelta(days=30), failed_for=timedelta(days=30)),
    description="Render a PDF report in phases and e-mail its owner a link.",
)
def generate_report(ctx: JobContext) -> dict:
    return services.generate(ctx, str(ctx.payload["report_id"]))
