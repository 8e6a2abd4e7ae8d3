"""The jobs HTTP API: create, list, watch, cancel and retry jobs; list job types."""

from __future__ import annotations

import hashlib
import uuid

from django.conf import settings
from django.db import connections
from django.db.models import Q
from django.http import Http404
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from . import registry, services
from .errors import IdempotencyConflict, InvalidTransition
from .models import Job, JobEvent, Priority, Status

PRIORITY_NAMES = [p.label for p in Priority]


class JobEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = JobEvent
        fields = ["kind", "message", "attempt", "created_at"]


class JobSerializer(serializers.ModelSerializer):
    priority = serializers.CharField(source="priority_name", read_only=True)
    owner = serializers.CharField(
        source="owner.username", default=None, allow_null=True, read_only=True
    )
    duration_seconds = serializers.FloatField(allow_null=True, read_only=True)

    class Meta:
        model = Job
        fields = [
            "id",
            "type",
            "status",
            "progress",
            "message",
            "payload",
            "result",
            "error",
            "attempts",
            "max_attempts",
            "priority",
            "queue",
            "idempotency_key",
            "owner",
            "cancel_requested",
            "run_at",
            "dispatched_at",
            "started_at",
            "finished_at",
            "created_at",
            "updated_at",
            "duration_seconds",
        ]
        read_only_fields = fields


class JobDetailSerializer(JobSerializer):
    events = JobEventSerializer(many=True, read_only=True)

    class Meta(JobSerializer.Meta):
        fields = [*JobSerializer.Meta.fields, "events"]
        read_only_fields = fields


class JobStatusSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.CharField()
    progress = serializers.IntegerField()
    message = serializers.CharField()
    updated_at = serializers.DateTimeField()


STATUS_FIELDS = list(JobStatusSerializer._declared_fields)

# One instance of each response serializer, its fields built once: building them for
# every response cost more than the rest of the view (a ModelSerializer reads the model
# to make each field). Representing an object keeps no state on the serializer.
_job_representation = JobSerializer()
_status_representation = JobStatusSerializer()


def job_data(job: Job) -> dict:
    """A job as `JobSerializer` shows it."""
    return _job_representation.to_representation(job)


class JobCreateSerializer(serializers.Serializer):
    type = serializers.CharField(max_length=100)
    payload = serializers.JSONField(required=False, default=dict)
    idempotency_key = serializers.CharField(max_length=255, required=False, allow_null=True)
    priority = serializers.ChoiceField(choices=PRIORITY_NAMES, default="normal")
    run_at = serializers.DateTimeField(required=False, allow_null=True)

    def validate_type(self, value: str) -> str:
        try:
            registry.get(value)
        except registry.UnknownJobType as exc:
            raise serializers.ValidationError(str(exc)) from None
        return value

    def to_spec(self) -> services.JobSpec:
        data = self.validated_data
        return services.JobSpec(
            type=data["type"],
            payload=data["payload"],
            idempotency_key=data.get("idempotency_key"),
            priority=data["priority"],
            run_at=data.get("run_at"),
        )


class BulkCreateSerializer(serializers.Serializer):
    jobs = serializers.ListField(
        child=serializers.DictField(), min_length=1, max_length=settings.JOBS_BULK_MAX
    )


class BulkCreatedJobSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.CharField()
    created = serializers.BooleanField()


class BulkCreatedSerializer(serializers.Serializer):
    created = serializers.IntegerField(help_text="How many jobs are new (others existed).")
    jobs = BulkCreatedJobSerializer(many=True)


class JobStatsSerializer(serializers.Serializer):
    by_status = serializers.DictField(child=serializers.IntegerField())
    by_type = serializers.DictField(child=serializers.DictField(child=serializers.IntegerField()))
    throughput = serializers.DictField(child=serializers.IntegerField())


class JobPagination(CursorPagination):
    ordering = "-created_at"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


def _conflict(exc: Exception, code: str, job: Job) -> Response:
    return Response(
        {"detail": str(exc), "code": code, "job_id": str(job.id), "status": job.status},
        status=status.HTTP_409_CONFLICT,
    )


@extend_schema(tags=["jobs"])
class JobViewSet(viewsets.GenericViewSet):
    serializer_class = JobSerializer
    pagination_class = JobPagination
    lookup_value_regex = "[0-9a-fA-F-]{32,36}"

    def get_queryset(self):
        return Job.objects.visible_to(self.request.user).select_related("owner")

    def get_object(self) -> Job:
        return get_object_or_404(self.get_queryset(), id=_job_id_or_404(self.kwargs["pk"]))

    @extend_schema(
        parameters=[
            OpenApiParameter("status", enum=[s.value for s in Status]),
            OpenApiParameter("type", str),
            OpenApiParameter("q", str, description="Job id, type, message or idempotency key"),
        ]
    )
    def list(self, request: Request) -> Response:
        jobs = self._filtered(self.get_queryset(), request.query_params)
        page = self.paginate_queryset(jobs)
        return self.get_paginated_response(JobSerializer(page, many=True).data)

    @staticmethod
    def _filtered(jobs, params):
        errors = {}
        if value := params.get("status"):
            if value not in Status.values:
                errors["status"] = [f"Must be one of: {', '.join(Status.values)}."]
            jobs = jobs.filter(status=value)
        if value := params.get("type"):
            jobs = jobs.filter(type=value)
        if value := params.get("q", "").strip():
            match = Q(type__icontains=value) | Q(message__icontains=value)
            match |= Q(idempotency_key=value)
            try:
                match |= Q(id=uuid.UUID(value))
            except ValueError:
                pass
            jobs = jobs.filter(match)
        if errors:
            raise serializers.ValidationError(errors)
        return jobs

    @extend_schema(request=JobCreateSerializer, responses={202: JobSerializer, 200: JobSerializer})
    def create(self, request: Request) -> Response:
        data = request.data
        if not isinstance(data, dict):
            raise serializers.ValidationError({"non_field_errors": ["Expected a JSON object."]})
        header_key = request.headers.get("Idempotency-Key")
        if header_key and not data.get("idempotency_key"):
            data = {**data, "idempotency_key": header_key}
        serializer = JobCreateSerializer(data=data)
        serializer.is_valid(raise_exception=True)
        spec = serializer.to_spec()
        try:
            outcome = services.enqueue(
                spec.type,
                spec.payload,
                owner=request.user,
                idempotency_key=spec.idempotency_key,
                priority=spec.priority,
                run_at=spec.run_at,
            )
        except IdempotencyConflict as exc:
            return _conflict(exc, "idempotency_conflict", exc.job)
        code = status.HTTP_202_ACCEPTED if outcome.created else status.HTTP_200_OK
        return Response(job_data(outcome.job), status=code)

    @extend_schema(request=BulkCreateSerializer, responses={202: BulkCreatedSerializer})
    @action(detail=False, methods=["post"])
    def bulk(self, request: Request) -> Response:
        outer = BulkCreateSerializer(data=request.data)
        outer.is_valid(raise_exception=True)
        specs, errors = {}, {}
        for index, item in enumerate(outer.validated_data["jobs"]):
            serializer = JobCreateSerializer(data=item)
            if serializer.is_valid():
                specs[str(index)] = serializer.to_spec()
            else:
                errors[str(index)] = serializer.errors
        if errors:
            # Name every bad job at once: the payloads of the others too (enqueue_many
            # checks them when nothing else is wrong).
            errors.update(_payload_errors(specs))
            raise serializers.ValidationError({"jobs": dict(sorted(errors.items(), key=_by_index))})
        specs = list(specs.values())
        try:
            outcomes = services.enqueue_many(specs, owner=request.user)
        except IdempotencyConflict as exc:
            return _conflict(exc, "idempotency_conflict", exc.job)
        return Response(
            {
                "created": sum(o.created for o in outcomes),
                "jobs": [
                    {"id": str(o.job.id), "status": o.job.status, "created": o.created}
                    for o in outcomes
                ],
            },
            status=status.HTTP_202_ACCEPTED,
        )

    def retrieve(self, request: Request, pk: str) -> Response:
        job = self.get_object()
        return Response(JobDetailSerializer(job).data)

    @extend_schema(responses={200: JobStatusSerializer, 304: None})
    @action(detail=True, methods=["get"])
    def status(self, request: Request, pk: str) -> Response:
        row = status_row(request.user, _job_id_or_404(pk))
        if row is None:
            raise Http404
        etag = etag_for(row)
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if etag in if_none_match(request):
            return Response(status=status.HTTP_304_NOT_MODIFIED, headers=headers)
        return Response(_status_representation.to_representation(row), headers=headers)

    @extend_schema(request=None, responses={200: JobSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        job = self.get_object()
        try:
            job = services.cancel(job)
        except InvalidTransition as exc:
            return _conflict(exc, "not_cancellable", exc.job)
        return Response(job_data(job))

    @extend_schema(request=None, responses={200: JobSerializer})
    def destroy(self, request: Request, pk: str) -> Response:
        return self.cancel(request, pk)

    @extend_schema(request=None, responses={202: JobSerializer})
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str) -> Response:
        job = self.get_object()
        try:
            job = services.retry(job)
        except InvalidTransition as exc:
            return _conflict(exc, "not_retryable", exc.job)
        return Response(job_data(job), status=status.HTTP_202_ACCEPTED)

    @extend_schema(responses=JobStatsSerializer)
    @action(detail=False, methods=["get"])
    def stats(self, request: Request) -> Response:
        return Response(services.stats(self.get_queryset()))


def _payload_errors(specs: dict[str, services.JobSpec]) -> dict:
    errors = {}
    for index, spec in specs.items():
        try:
            services.validate_payload(spec.type, spec.payload)
        except serializers.ValidationError as exc:
            errors[index] = exc.detail
    return errors


def _by_index(item: tuple[str, object]) -> int:
    return int(item[0])


def _job_id_or_404(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise Http404 from None


# Clients poll the status of every job they watch, about once a second. Building this
# lookup with the ORM took four times the CPU of running it (more than the rest of the
# request), so on PostgreSQL, whose driver returns the values as Python types, its SQL
# is written out once. It looks the job up by primary key alone and checks the owner
# afterwards: with `owner_id = %s` in the WHERE clause too, PostgreSQL may walk the
# owner's index through all their jobs (it did in benchmark 3, until the table's
# statistics caught up with a burst of new jobs).
STATUS_SQL = (
    f'SELECT owner_id, {", ".join(STATUS_FIELDS)} FROM "{Job._meta.db_table}" WHERE id = %s'
)


def status_row(user, job_id: uuid.UUID) -> dict | None:
    """The polled fields of a job, or None if there is no such job the user may see
    (staff see every job, others their own, as `Job.objects.visible_to`)."""
    connection = connections[Job.objects.db]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(STATUS_SQL, [job_id])
            found = cursor.fetchone()
        row = dict(zip(["owner_id", *STATUS_FIELDS], found, strict=True)) if found else None
    else:
        row = Job.objects.filter(id=job_id).values("owner_id", *STATUS_FIELDS).first()
    if row is None:
        return None
    owner_id = row.pop("owner_id")
    return row if user.is_staff or owner_id == user.pk else None


def etag_for(row: dict) -> str:
    raw = f"{row['status']}|{row['progress']}|{row['message']}|{row['updated_at'].isoformat()}"
    return '"' + hashlib.blake2b(raw.encode(), digest_size=12).hexdigest() + '"'


def if_none_match(request: Request) -> set[str]:
    header = request.headers.get("If-None-Match", "")
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


class JobTypeSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    queue = serializers.CharField()
    max_attempts = serializers.IntegerField()
    backoff_base = serializers.FloatField()
    soft_time_limit = serializers.IntegerField()
    payload_fields = serializers.DictField()


@extend_schema(tags=["jobs"], responses=JobTypeSerializer(many=True))
class JobTypeList(APIView):
    def get(self, request: Request) -> Response:
        return Response(
            [
                {
                    "name": jt.name,
                    "description": jt.description,
                    "queue": jt.queue,
                    "max_attempts": jt.max_attempts,
                    "backoff_base": jt.backoff_base,
                    "soft_time_limit": jt.soft_time_limit,
                    "payload_fields": jt.payload_fields(),
                }
                for jt in registry.all_types()
            ]
        )
