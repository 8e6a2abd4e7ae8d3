"""Reports: ask for one, render it (the `reports.generate` job), cancel and retry it."""

from __future__ import annotations

import io
import logging
from typing import Any

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.mail import EmailMessage
from django.db import transaction
from django.http import Http404
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from rest_framework import serializers

from jobs import engine
from jobs.engine import Job, JobContext, PermanentError

from .kinds import KINDS, ReportKind
from .models import Report

log = logging.getLogger(__name__)
JOB_TYPE = "reports.generate"


def kind_of(name: str) -> ReportKind:
    try:
        return KINDS[name]
    except KeyError:
        known = ", ".join(sorted(KINDS))
        raise serializers.ValidationError(
            {"kind": [f"Unknown kind {name!r}. Known: {known}."]}
        ) from None


def validate_parameters(kind: ReportKind, parameters: Any) -> dict[str, Any]:
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        raise serializers.ValidationError({"parameters": ["Must be a JSON object."]})
    serializer = kind.parameters(data=parameters)
    if not serializer.is_valid():
        raise serializers.ValidationError({"parameters": serializer.errors})
    return serializer.validated_data


def request_report(owner, kind_name: str, parameters: Any = None, title: str = "") -> Report:
    """Create a report and its job in one transaction; the job is sent on commit."""
    kind = kind_of(kind_name)
    parameters = validate_parameters(kind, parameters)
    with transaction.atomic():
        report = Report.objects.create(
            owner=owner,
            kind=kind.name,
            title=title.strip() or kind.default_title(parameters),
            parameters=parameters,
        )
        report.job = engine.enqueue(JOB_TYPE, {"report_id": str(report.id)}, owner=owner).job
        report.save(update_fields=["job"])
    return report


def cancel_report(report: Report, *, by=None, via: str | None = None) -> Report:
    """Cancel the report's job; `by` through `via` is recorded (jobs' audit log)."""
    engine.cancel(_job_of(report), by=by, via=via)
    return report


def retry_report(report: Report, *, by=None, via: str | None = None) -> Report:
    """Retry the report's job; `by` through `via` is recorded (jobs' audit log)."""
    engine.retry(_job_of(report), by=by, via=via)
    return report


def _job_of(report: Report) -> Job:
    if report.job is None:
        raise Http404("This report's job has been purged.")
    return report.job


# --- rendering (runs inside the job) ---------------------------------------------------


def generate(ctx: JobContext, report_id: str) -> dict[str, Any]:
    """Gather, compute, render, store, notify: progress at each phase, cancellation
    checked between them, the e-mail sent at most once."""
    report = Report.objects.select_related("owner").filter(id=report_id).first()
    if report is None:
        raise PermanentError(f"Report {report_id} no longer exists")
    kind = KINDS[report.kind]

    ctx.progress(5, "Gathering data")
    data = kind.gather(report, lambda f: ctx.progress(5 + 35 * f, "Gathering data"))
    ctx.progress(40, "Computing figures")
    figures = kind.compute(report, data)
    ctx.progress(55, "Rendering PDF")
    pdf, pages = render_pdf(kind.template, {"report": report, **figures}, report.owner_id)
    ctx.progress(90, "Storing the file")
    store(report, pdf, pages)
    ctx.progress(97, "Notifying the owner")
    notify_owner(ctx, report)
    return {"report_id": str(report.id), "pages": pages, "size": len(pdf)}


def render_pdf(
    template: str, context: dict[str, Any], owner_id: int | None = None
) -> tuple[bytes, int]:
    """Render the template to PDF. WeasyPrint loads only `data:` URLs and, when `owner_id`
    is given, that user's stored images; any other URL is left out of the document."""
    from weasyprint import HTML

    from .fetcher import ReportFetcher

    html = render_to_string(template, {**context, "generated_at": timezone.now()})
    document = HTML(string=html, url_fetcher=ReportFetcher(owner_id)).render()
    buffer = io.BytesIO()
    document.write_pdf(buffer)
    return buffer.getvalue(), len(document.pages)


def store(report: Report, pdf: bytes, pages: int) -> None:
    """Save the PDF, replacing what an earlier attempt stored."""
    old_name = report.file.name if report.file else None
    report.file.save(report.download_name(), ContentFile(pdf), save=False)
    report.size = len(pdf)
    report.page_count = pages
    report.save(update_fields=["file", "size", "page_count"])
    if old_name and old_name != report.file.name:
        report.file.storage.delete(old_name)


def notify_owner(ctx: JobContext, report: Report) -> None:
    if not report.owner.email:
        return
    with ctx.effect("ready-email") as ours:
        if ours:
            link = settings.SITE_URL.rstrip("/") + reverse("report-download", args=[report.id])
            EmailMessage(
                f"Your report is ready: {report.title}",
                f"Hello {report.owner.get_username()},\n\n"
                f'Your report "{report.title}" ({report.page_count} pages) is ready:\n'
                f"{link}\n",
                settings.DEFAULT_FROM_EMAIL,
                [report.owner.email],
            ).send()
