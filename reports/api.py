"""The reports HTTP API: ask for a report, watch it, download, cancel and retry it."""

from __future__ import annotations

import uuid

from django.db.models import Q
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response

from jobs.engine import (
    LINE_HELP,
    PUSH_REFUSED,
    WAIT_PARAMETER,
    InvalidTransition,
    LineSerializer,
    Status,
    Via,
    line_representation,
    long_poll,
    one_line_error,
)
from jobsite.api import conflict, etag_for, if_none_match, uuid_or_404

from . import services
from .models import Report


class ReportSerializer(serializers.ModelSerializer):
    status = serializers.CharField(read_only=True)
    progress = serializers.IntegerField(source="job.progress", default=100, read_only=True)
    message = serializers.CharField(source="job.message", default="", read_only=True)
    error = serializers.SerializerMethodField(
        help_text="The failed job's exception: its type and message, on one line."
    )
    job_id = serializers.UUIDField(allow_null=True, read_only=True)
    started_at = serializers.DateTimeField(
        source="job.started_at", default=None, allow_null=True, read_only=True
    )
    finished_at = serializers.DateTimeField(
        source="job.finished_at", default=None, allow_null=True, read_only=True
    )
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = Report
        fields = [
            "id",
            "kind",
            "title",
            "parameters",
            "status",
            "progress",
            "message",
            "error",
            "job_id",
            "size",
            "page_count",
            "download_url",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields

    def get_error(self, report: Report) -> str:
        return one_line_error(report.job.error) if report.job_id is not None else ""

    def get_download_url(self, report: Report) -> str | None:
        return f"/api/reports/{report.id}/download/" if report.is_ready else None


class ReportDetailSerializer(ReportSerializer):
    line = serializers.SerializerMethodField(help_text=LINE_HELP)

    class Meta(ReportSerializer.Meta):
        fields = [*ReportSerializer.Meta.fields, "line"]
        read_only_fields = fields

    @extend_schema_field(LineSerializer(allow_null=True))
    def get_line(self, report: Report) -> dict | None:
        return line_representation(report.line)


class ReportCreateSerializer(serializers.Serializer):
    kind = serializers.CharField(max_length=40)
    title = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    parameters = serializers.JSONField(required=False, default=dict)


class ReportStatusSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.CharField()
    progress = serializers.IntegerField()
    message = serializers.CharField()
    updated_at = serializers.DateTimeField()
    line = LineSerializer(allow_null=True, help_text=LINE_HELP)


class ReportPagination(CursorPagination):
    ordering = "-created_at"
    page_size = 20
    page_size_query_param = "page_size"
    max_page_size = 100


def filter_reports(reports, status_filter: str | None, query: str | None):
    """The list filters shared by the API and the page: status, and id or title."""
    if status_filter:
        reports = reports.with_status(status_filter)
    if query:
        query = query.strip()
        condition = Q(title__icontains=query)
        try:
            condition |= Q(id=uuid.UUID(query))
        except ValueError:
            pass
        reports = reports.filter(condition)
    return reports


def _status_of(report: Report) -> tuple[str, dict]:
    """A report's polled status and its ETag."""
    job = report.job
    row = {
        "id": report.id,
        "status": report.status,
        "progress": job.progress if job else 100,
        "message": job.message if job else "",
        "updated_at": job.updated_at if job else report.created_at,
        "line": report.line,
    }
    return etag_for(row), row


def _conflict(report: Report, detail: str, code: str) -> Response:
    return conflict(detail, code, report_id=str(report.id), status=report.status)


@extend_schema(tags=["reports"])
class ReportViewSet(viewsets.GenericViewSet):
    serializer_class = ReportSerializer
    pagination_class = ReportPagination
    lookup_value_regex = "[0-9a-fA-F-]{32,36}"

    def get_queryset(self):
        return Report.objects.owned_by(self.request.user).select_related("job", "owner")

    def get_object(self) -> Report:
        return get_object_or_404(self.get_queryset(), id=uuid_or_404(self.kwargs["pk"]))

    @extend_schema(
        parameters=[
            OpenApiParameter("status", enum=[s.value for s in Status]),
            OpenApiParameter("q", str, description="Report id or words of its title"),
        ]
    )
    def list(self, request: Request) -> Response:
        status_filter = request.query_params.get("status")
        if status_filter and status_filter not in Status.values:
            raise serializers.ValidationError(
                {
                    "status": [
                        f"Unknown status {status_filter!r}. Known: {', '.join(Status.values)}."
                    ]
                }
            )
        reports = filter_reports(self.get_queryset(), status_filter, request.query_params.get("q"))
        page = self.paginate_queryset(reports)
        return self.get_paginated_response(ReportSerializer(page, many=True).data)

    @extend_schema(request=ReportCreateSerializer, responses={202: ReportSerializer})
    def create(self, request: Request) -> Response:
        incoming = ReportCreateSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        data = incoming.validated_data
        report = services.request_report(
            request.user, data["kind"], data["parameters"], data["title"]
        )
        return Response(ReportSerializer(report).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(responses=ReportDetailSerializer)
    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(ReportDetailSerializer(self.get_object()).data)

    @extend_schema(
        parameters=[WAIT_PARAMETER],
        responses={200: ReportStatusSerializer, 304: None, 503: PUSH_REFUSED},
    )
    @action(detail=True, methods=["get"])
    def status(self, request: Request, pk: str) -> Response:
        report = self.get_object()
        answer = long_poll(
            request, report.job_id, _status_of(report), lambda: self._status_now(report.id)
        )
        if isinstance(answer, Response):
            return answer
        if answer is None:
            raise Http404
        etag, row = answer
        if etag in if_none_match(request):
            return Response(status=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag})
        response = Response(ReportStatusSerializer(row).data)
        response["ETag"] = etag
        response["Cache-Control"] = "no-cache"
        return response

    def _status_now(self, report_id) -> tuple[str, dict] | None:
        report = self.get_queryset().filter(id=report_id).first()
        return None if report is None else _status_of(report)

    @extend_schema(responses={(200, "application/pdf"): bytes, 409: None})
    @action(detail=True, methods=["get"])
    def download(self, request: Request, pk: str):
        report = self.get_object()
        if not report.is_ready:
            return _conflict(report, f"The report is {report.status}, not ready.", "not_ready")
        return pdf_response(report)

    @extend_schema(request=None, responses={200: ReportSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        report = self.get_object()
        try:
            services.cancel_report(report, by=request.user, via=Via.API)
        except InvalidTransition as exc:
            return _conflict(report, str(exc), "not_cancellable")
        report.job.refresh_from_db()
        return Response(ReportSerializer(report).data)

    @extend_schema(request=None, responses={200: ReportSerializer})
    def destroy(self, request: Request, pk: str) -> Response:
        return self.cancel(request, pk)

    @extend_schema(request=None, responses={202: ReportSerializer})
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str) -> Response:
        report = self.get_object()
        try:
            services.retry_report(report, by=request.user, via=Via.API)
        except InvalidTransition as exc:
            return _conflict(report, str(exc), "not_retryable")
        report.job.refresh_from_db()
        return Response(ReportSerializer(report).data, status=status.HTTP_202_ACCEPTED)


def pdf_response(report: Report) -> FileResponse:
    return FileResponse(
        report.file.open("rb"),
        as_attachment=True,
        filename=report.download_name(),
        content_type="application/pdf",
    )
