"""The report job type, created by the reports endpoints (not through the jobs API)."""

from datetime import timedelta

from django.conf import settings
from rest_framework import serializers

from jobs.engine import JobContext, Limits, Retention, job_type

from . import services
from .models import Report


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
    # One user's bulk of reports waits its turn instead of taking every worker.
    limits=Limits(owner_concurrency=settings.REPORTS_RUNNING_PER_OWNER),
    description="Render a PDF report in phases and e-mail its owner a link.",
)
def generate_report(ctx: JobContext) -> dict:
    report_id = str(ctx.payload["report_id"])
    owner_id = Report.objects.filter(id=report_id).values_list("owner_id", flat=True).first()
    if owner_id is not None:
        ctx.check_owner(owner_id, f"Report {report_id}")
    return services.generate(ctx, report_id)
