"""The reports pages: the list with its form, and the download a signed-in user follows."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404

from .api import pdf_response
from .models import Report


@login_required
def download(request: HttpRequest, report_id) -> HttpResponse:
    report = get_object_or_404(Report.objects.owned_by(request.user), id=report_id)
    if not report.is_ready:
        return HttpResponse(
            f"The report is {report.status}, not ready yet.", status=409, content_type="text/plain"
        )
    return pdf_response(report)
