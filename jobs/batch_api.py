"""The batches HTTP API: create a batch of jobs with its callbacks, list and watch
batches, cancel one, list its jobs. Each user sees their own batches; staff see all."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from django.conf import settings
from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response

from jobsite.api import conflict, if_none_match, uuid_or_404

from . import batches, services, visibility
from .api import (
    TOO_MANY_ACTIVE,
    JobCreateSerializer,
    JobPagination,
    JobSerializer,
    job_data,
    too_many_active,
)
from .audit import Via
from .errors import TooManyActiveJobs
from .models import Batch, BatchState, Job, Status


def _refuse_fields(serializer: serializers.Serializer, names: tuple[str, ...], why: str) -> None:
    data = serializer.initial_data
    if isinstance(data, dict):
        refused = {name: [why] for name in names if data.get(name) is not None}
        if refused:
            raise serializers.ValidationError(refused)


class BatchJobSerializer(JobCreateSerializer):
    """One job of a batch: a job as POST /api/jobs/ takes it, without an idempotency key
    (the batch has one)."""

    idempotency_key = None

    def validate(self, attrs: dict) -> dict:
        _refuse_fields(
            self,
            ("idempotency_key",),
            "Not for a job in a batch: give the batch an idempotency key instead.",
        )
        return super().validate(attrs)


class BatchCallbackSerializer(JobCreateSerializer):
    """A job created when the batch ends: a type the caller may create, its payload and
    priority, attempts and time limit; no time or key of its own."""

    idempotency_key = None
    run_at = None
    expires_at = None
    expires_in = None

    def validate(self, attrs: dict) -> dict:
        _refuse_fields(
            self,
            (*batches.NOT_FOR_CALLBACKS, "expires_in"),
            "Not for a callback: it is created when the batch ends.",
        )
        return super().validate(attrs)


class BatchCreateSerializer(serializers.Serializer):
    """The request body, as documented."""

    jobs = BatchJobSerializer(many=True, help_text="At most JOBS_BATCH_MAX_JOBS jobs.")
    on_success = BatchCallbackSerializer(
        required=False, allow_null=True, help_text="Created when every job succeeded."
    )
    on_complete = BatchCallbackSerializer(
        required=False, allow_null=True, help_text="Created when the batch ends, however."
    )
    description = serializers.CharField(max_length=200, required=False, allow_blank=True)
    idempotency_key = serializers.CharField(
        max_length=255,
        required=False,
        allow_null=True,
        help_text="A repeat of the request returns the same batch; also the "
        "Idempotency-Key header.",
    )


class BatchBodySerializer(serializers.Serializer):
    """The request body's outer shape, each part checked on its own afterwards."""

    jobs = serializers.ListField(child=serializers.DictField(), min_length=1)
    on_success = serializers.DictField(required=False, allow_null=True)
    on_complete = serializers.DictField(required=False, allow_null=True)
    description = serializers.CharField(
        max_length=200, required=False, allow_blank=True, default=""
    )
    idempotency_key = serializers.CharField(max_length=255, required=False, allow_null=True)

    def validate_jobs(self, value: list) -> list:
        limit = settings.JOBS_BATCH_MAX_JOBS
        if len(value) > limit:
            raise serializers.ValidationError(
                f"At most {limit} jobs in a batch (JOBS_BATCH_MAX_JOBS); this one has {len(value)}."
            )
        return value


class CallbackSpecSerializer(serializers.Serializer):
    type = serializers.CharField()
    payload = serializers.JSONField(
        allow_null=True, help_text="null on other users' batches without view_job_payload."
    )
    priority = serializers.CharField()
    max_attempts = serializers.IntegerField(allow_null=True)
    time_limit = serializers.IntegerField(allow_null=True)


class CallbackJobsSerializer(serializers.Serializer):
    on_success = serializers.UUIDField(allow_null=True)
    on_complete = serializers.UUIDField(allow_null=True)


class BatchSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    description = serializers.CharField()
    owner = serializers.CharField(allow_null=True)
    state = serializers.ChoiceField(choices=BatchState.values)
    cancel_requested = serializers.BooleanField()
    total = serializers.IntegerField(help_text="How many jobs the batch holds.")
    counts = serializers.DictField(
        child=serializers.IntegerField(), help_text="The batch's jobs by status."
    )
    progress = serializers.IntegerField(
        help_text="The mean of the jobs' progress, a finished job counting as 100."
    )
    on_success = CallbackSpecSerializer(allow_null=True)
    on_complete = CallbackSpecSerializer(allow_null=True)
    callback_jobs = CallbackJobsSerializer(help_text="The callback jobs, once created.")
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)


class FailedJobSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    type = serializers.CharField()
    status = serializers.ChoiceField(choices=[Status.FAILED, Status.EXPIRED])
    error = serializers.CharField(help_text="One line: the exception's type and message.")


class BatchSummarySerializer(BatchSerializer):
    failed_jobs = FailedJobSerializer(
        many=True, help_text=f"The first {batches.FAILED_JOBS_SHOWN} failed or expired jobs."
    )


class BatchPagination(CursorPagination):
    ordering = "-created_at"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


class BatchJobPagination(JobPagination):
    # A batch's jobs share their creation time: the id orders them within it.
    ordering = ("created_at", "id")


def shown_to(viewer, batch: Batch, data: dict[str, Any]) -> dict[str, Any]:
    """The callbacks' payloads are the owner's, as a job's payload is."""
    if not visibility.sees_payload(viewer, batch.owner_id):
        for name in ("on_success", "on_complete"):
            if data[name] is not None:
                data[name] = {**data[name], "payload": None}
    return data


def summary_etag(data: dict[str, Any]) -> str:
    raw = json.dumps(data, sort_keys=True, default=str)
    return '"' + hashlib.blake2b(raw.encode(), digest_size=12).hexdigest() + '"'


STATE_PARAMETER = OpenApiParameter("state", enum=BatchState.values)


@extend_schema(tags=["batches"])
class BatchViewSet(viewsets.GenericViewSet):
    serializer_class = BatchSerializer
    pagination_class = BatchPagination
    lookup_value_regex = "[0-9a-fA-F-]{32,36}"

    def get_queryset(self):
        return Batch.objects.visible_to(self.request.user).select_related("owner")

    def get_object(self) -> Batch:
        batch = self.get_queryset().filter(id=uuid_or_404(self.kwargs["pk"])).first()
        if batch is None:
            raise Http404
        return batch

    @extend_schema(parameters=[STATE_PARAMETER], responses=BatchSerializer(many=True))
    def list(self, request: Request) -> Response:
        found = self.get_queryset()
        if value := request.query_params.get("state"):
            if value not in BatchState.values:
                raise serializers.ValidationError(
                    {"state": [f"Must be one of: {', '.join(BatchState.values)}."]}
                )
            found = found.filter(state=value)
        page = self.paginate_queryset(found)
        tallies = batches.tallies([batch.id for batch in page])
        data = [
            shown_to(request.user, batch, batches.batch_data(batch, tallies[batch.id]))
            for batch in page
        ]
        return self.get_paginated_response(data)

    @extend_schema(
        request=BatchCreateSerializer,
        responses={
            201: BatchSummarySerializer,
            200: OpenApiResponse(BatchSummarySerializer, description="A repeat: the batch"),
            429: TOO_MANY_ACTIVE,
        },
    )
    def create(self, request: Request) -> Response:
        body = BatchBodySerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        context = {"user": request.user}
        jobs, errors = [], {}
        for index, item in enumerate(data["jobs"]):
            serializer = BatchJobSerializer(data=item, context=context)
            if serializer.is_valid():
                jobs.append(serializer.to_spec())
            else:
                errors.setdefault("jobs", {})[str(index)] = serializer.errors
        callbacks = {}
        for name in ("on_success", "on_complete"):
            if data.get(name) is not None:
                serializer = BatchCallbackSerializer(data=data[name], context=context)
                if serializer.is_valid():
                    callbacks[name] = serializer.to_spec()
                else:
                    errors[name] = serializer.errors
        if errors:
            raise serializers.ValidationError(errors)
        try:
            services.check_room_for(request.user, jobs)
        except TooManyActiveJobs as exc:
            return too_many_active(exc)
        key = data.get("idempotency_key") or request.headers.get("Idempotency-Key")
        try:
            outcome = batches.add_batch(
                jobs,
                owner=request.user,
                description=data["description"],
                idempotency_key=key,
                **callbacks,
            )
        except batches.BatchIdempotencyConflict as exc:
            return conflict(str(exc), "idempotency_conflict", batch_id=str(exc.batch.id))
        code = status.HTTP_201_CREATED if outcome.created else status.HTTP_200_OK
        summary = batches.batch_summary(outcome.batch)
        return Response(shown_to(request.user, outcome.batch, summary), status=code)

    @extend_schema(responses={200: BatchSummarySerializer, 304: None})
    def retrieve(self, request: Request, pk: str) -> Response:
        batch = self.get_object()
        data = shown_to(request.user, batch, batches.batch_summary(batch))
        etag = summary_etag(data)
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if etag in if_none_match(request):
            return Response(status=status.HTTP_304_NOT_MODIFIED, headers=headers)
        return Response(data, headers=headers)

    @extend_schema(request=None, responses={200: BatchSummarySerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        batch = self.get_object()
        if not visibility.may_act_on(request.user, batch.owner_id, visibility.CANCEL_PERMISSION):
            raise exceptions.PermissionDenied("Cancelling another user's batch needs a permission.")
        try:
            batch = batches.cancel_batch(batch, by=request.user, via=Via.API)
        except batches.BatchNotRunning as exc:
            state = exc.batch.state
            return conflict(str(exc), "not_cancellable", batch_id=str(batch.id), state=state)
        return Response(shown_to(request.user, batch, batches.batch_summary(batch)))

    @extend_schema(
        parameters=[OpenApiParameter("status", enum=Status.values)],
        responses=JobSerializer(many=True),
    )
    @action(detail=True, methods=["get"], pagination_class=BatchJobPagination)
    def jobs(self, request: Request, pk: str) -> Response:
        batch = self.get_object()
        found = Job.objects.filter(batch=batch).select_related("owner")
        if value := request.query_params.get("status"):
            if value not in Status.values:
                raise serializers.ValidationError(
                    {"status": [f"Must be one of: {', '.join(Status.values)}."]}
                )
            found = found.filter(status=value)
        page = self.paginate_queryset(found)
        return self.get_paginated_response([job_data(job, request.user) for job in page])
