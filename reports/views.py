"""The reports pages: the list with its form, the row fragments the page's script
fetches, and the actions (generate, cancel, retry, download) as plain forms."""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import (
    require_GET,
    require_http_methods,
    require_POST,
    require_safe,
)
from rest_framework import serializers

from jobs.engine import InvalidTransition, Status, Via

from . import services
from .api import filter_reports, pdf_response
from .forms import ReportForm
from .models import Report

PAGE_SIZE = 50


def _filters(request: HttpRequest) -> dict[str, str]:
    status = request.GET.get("status", "")
    return {
        "q": request.GET.get("q", "").strip(),
        "status": status if status in Status.values else "",
    }


def _reports(request: HttpRequest, filters: dict[str, str]):
    reports = Report.objects.owned_by(request.user).select_related("job")
    return filter_reports(reports, filters["status"], filters["q"])[:PAGE_SIZE]


def _back(request: HttpRequest) -> HttpResponse:
    query = {k: v for k, v in _filters(request).items() if v}
    return redirect("/reports/" + (f"?{urlencode(query)}" if query else ""))


@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def index(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return _create(request)
    return _page(request, ReportForm())


def _page(request: HttpRequest, form: ReportForm, status: int = 200) -> HttpResponse:
    filters = _filters(request)
    return render(
        request,
        "reports/index.html",
        {
            "form": form,
            "reports": _reports(request, filters),
            "filters": filters,
            "statuses": Status.choices,
        },
        status=status,
    )


def _create(request: HttpRequest) -> HttpResponse:
    form = ReportForm(request.POST)
    if form.is_valid():
        try:
            report = services.request_report(
                request.user,
                form.cleaned_data["kind"],
                form.parameters(),
                form.cleaned_data["title"],
            )
        except serializers.ValidationError as exc:
            _add_errors(form, exc.detail)
        else:
            if _wants_fragment(request):
                return render(request, "reports/_row.html", {"report": report}, status=201)
            messages.success(request, f"Report “{report.title}” is queued.")
            return _back(request)
    if _wants_fragment(request):
        return render(request, "reports/_form_errors.html", {"form": form}, status=400)
    return _page(request, form, status=400)


def _add_errors(form: ReportForm, detail) -> None:
    errors = detail.get("parameters", detail) if isinstance(detail, dict) else {}
    for field, problems in errors.items():
        target = field if field in form.fields else None
        for problem in problems if isinstance(problems, list) else [problems]:
            form.add_error(target, str(problem))


def _wants_fragment(request: HttpRequest) -> bool:
    return request.headers.get("X-Requested-With") == "fetch"


@login_required
@require_GET
def rows(request: HttpRequest) -> HttpResponse:
    return render(request, "reports/_rows.html", {"reports": _reports(request, _filters(request))})


@login_required
@require_GET
def row(request: HttpRequest, report_id) -> HttpResponse:
    report = get_object_or_404(Report.objects.owned_by(request.user), id=report_id)
    return render(request, "reports/_row.html", {"report": report})


@login_required
@require_POST
def cancel(request: HttpRequest, report_id) -> HttpResponse:
    return _act(request, report_id, services.cancel_report, "cancelled")


@login_required
@require_POST
def retry(request: HttpRequest, report_id) -> HttpResponse:
    return _act(request, report_id, services.retry_report, "queued again")


def _act(request: HttpRequest, report_id, action, done: str) -> HttpResponse:
    report = get_object_or_404(Report.objects.owned_by(request.user), id=report_id)
    try:
        action(report, by=request.user, via=Via.WEB)
    except InvalidTransition as exc:
        if _wants_fragment(request):
            return HttpResponse(str(exc), status=409, content_type="text/plain")
        messages.error(request, str(exc))
        return _back(request)
    report.job.refresh_from_db()
    if _wants_fragment(request):
        return render(request, "reports/_row.html", {"report": report})
    messages.success(request, f"Report “{report.title}” {done}.")
    return _back(request)


@login_required
@require_safe
def download(request: HttpRequest, report_id) -> HttpResponse:
    report = get_object_or_404(Report.objects.owned_by(request.user), id=report_id)
    if not report.is_ready:
        return HttpResponse(
            f"The report is {report.status}, not ready yet.", status=409, content_type="text/plain"
        )
    return pdf_response(report)
