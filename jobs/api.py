"""The jobs HTTP API: create, list, watch, cancel and retry jobs; list job types."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q
from django.http import Http404
from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
)
from rest_framework import exceptions, generics, permissions, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from jobsite.api import conflict, etag_for, if_none_match, uuid_or_404

from . import controls, dependencies, line, live_api, queries, registry, services, visibility
from .audit import Via
from .errors import IdempotencyConflict, InvalidTransition, TooManyActiveJobs
from .models import (
    RETRYABLE_STATUSES,
    Job,
    JobEvent,
    OnDependencyFailure,
    OperatorAction,
    Priority,
    Scope,
    Status,
)
from .store import job_store

PRIORITY_NAMES = [p.label for p in Priority]
# Priorities above normal are for staff.
USER_PRIORITY_NAMES = [p.label for p in Priority if p <= Priority.NORMAL]


class JobEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = JobEvent
        fields = ["kind", "message", "attempt", "created_at"]


class JobFieldsSerializer(serializers.ModelSerializer):
    """Every field of a job as stored; `JobSerializer` shows each viewer their part of it."""

    priority = serializers.CharField(source="priority_name", read_only=True)
    owner = serializers.CharField(
        source="owner.username", default=None, allow_null=True, read_only=True
    )
    payload = serializers.JSONField(
        read_only=True,
        allow_null=True,
        help_text="null on other users' jobs without the view_job_payload permission.",
    )
    result = serializers.JSONField(
        read_only=True,
        allow_null=True,
        help_text="null on other users' jobs without the view_job_payload permission.",
    )
    error = serializers.CharField(
        read_only=True,
        help_text="Staff see the traceback; everyone else the exception's type and message.",
    )
    duration_seconds = serializers.FloatField(allow_null=True, read_only=True)
    depends_on = serializers.SerializerMethodField(
        help_text="Ids of the jobs this one waits for; while it waits, `message` says so."
    )

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
            "snoozes",
            "time_limit",
            "priority",
            "queue",
            "idempotency_key",
            "owner",
            "cancel_requested",
            "run_at",
            "expires_at",
            "dispatched_at",
            "started_at",
            "finished_at",
            "created_at",
            "updated_at",
            "duration_seconds",
            "depends_on",
            "on_dependency_failure",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.ListField(child=serializers.UUIDField()))
    def get_depends_on(self, job: Job) -> list[str]:
        return dependencies.ids_of(job)


def viewer_of(context: dict) -> visibility.Viewer:
    """The user a serializer shows a job to: its request's; None (a stranger) without one."""
    request = context.get("request")
    return getattr(request, "user", None)


class JobSerializer(JobFieldsSerializer):
    """A job as the context's `request` user may see it (jobs.visibility)."""

    def to_representation(self, job: Job) -> dict:
        data = super().to_representation(job)
        return visibility.shown_to(viewer_of(self.context), job.owner_id, data)


class LineSerializer(serializers.Serializer):
    """A queued job's place in its queue's line (jobs.line): a count, never which jobs."""

    ahead = serializers.IntegerField(
        help_text="Queued jobs of the same queue a worker takes first (higher priority, or "
        "the same and older), not held and due; counted up to JOBS_LINE_CAP"
    )
    ahead_capped = serializers.BooleanField(
        help_text="true: at least `ahead` jobs are ahead, maybe more"
    )
    estimated_start_at = serializers.DateTimeField(
        allow_null=True,
        help_text="When a worker is expected to take it; null when no worker consumes the "
        "queue or its type has no finished run to go by",
    )
    estimated_wait_seconds = serializers.IntegerField(
        allow_null=True, help_text="Seconds from now to estimated_start_at"
    )


LINE_HELP = (
    "Queued jobs that could start now: their place in line. null for any other job, and "
    "for a held (paused, limited) or delayed one, whose message says why it waits."
)


class JobDetailSerializer(JobSerializer):
    events = JobEventSerializer(many=True, read_only=True)
    line = serializers.SerializerMethodField(help_text=LINE_HELP)

    class Meta(JobSerializer.Meta):
        fields = [*JobSerializer.Meta.fields, "events", "line"]
        read_only_fields = fields

    @extend_schema_field(LineSerializer(allow_null=True))
    def get_line(self, job: Job) -> dict | None:
        return line_representation(line.place_data(job))

    def to_representation(self, job: Job) -> dict:
        data = super().to_representation(job)
        if not visibility.sees_tracebacks(viewer_of(self.context)):
            for event in data["events"]:
                event["message"] = visibility.one_line_error(event["message"])
        return data


_line_representation = LineSerializer()


def line_representation(place: dict | None) -> dict | None:
    """A place in line (jobs.line.place_data) as the API shows it, or None."""
    return _line_representation.to_representation(place) if place is not None else None


class JobStatusSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.CharField()
    progress = serializers.IntegerField()
    message = serializers.CharField()
    updated_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)
    line = LineSerializer(allow_null=True, help_text=LINE_HELP)


# One instance of each response serializer, its fields built once: building them for
# every response cost more than the rest of the view (a ModelSerializer reads the model
# to make each field). Representing an object keeps no state on the serializer.
_job_representation = JobFieldsSerializer()
_status_representation = JobStatusSerializer()


def job_data(job: Job, viewer: visibility.Viewer) -> dict:
    """A job as `JobSerializer` shows it to `viewer`."""
    return visibility.shown_to(viewer, job.owner_id, _job_representation.to_representation(job))


class JobCreateSerializer(serializers.Serializer):
    """One job asked for through the API, checked against what the caller may ask for:
    the `user` in the serializer's context."""

    type = serializers.CharField(max_length=100)
    payload = serializers.JSONField(required=False, default=dict)
    idempotency_key = serializers.CharField(max_length=255, required=False, allow_null=True)
    priority = serializers.ChoiceField(choices=PRIORITY_NAMES, default="normal")
    run_at = serializers.DateTimeField(required=False, allow_null=True)
    expires_at = serializers.DateTimeField(
        required=False,
        allow_null=True,
        help_text="Not started by then, the job ends as expired. Not with expires_in.",
    )
    expires_in = serializers.IntegerField(
        required=False,
        allow_null=True,
        max_value=settings.JOBS_MAX_SCHEDULE_AHEAD,
        help_text="Seconds from now: expires_at given relatively. Not with expires_at.",
        write_only=True,
    )
    max_attempts = serializers.IntegerField(
        required=False, allow_null=True, help_text="From 1 to the type's max_attempts."
    )
    time_limit = serializers.IntegerField(
        required=False,
        allow_null=True,
        help_text="Seconds a run may take, from 1 to the type's soft_time_limit.",
    )
    depends_on = serializers.ListField(
        child=serializers.CharField(max_length=40),
        required=False,
        max_length=settings.JOBS_MAX_DEPENDENCIES,
        help_text=(
            "Ids of your jobs this one waits for: it starts once they all succeeded. "
            'In a bulk create, "$<index>" names the job of an earlier item of the request.'
        ),
    )
    on_dependency_failure = serializers.ChoiceField(
        choices=OnDependencyFailure.choices,
        default=OnDependencyFailure.CANCEL,
        help_text="If a job it waits for fails, is cancelled or expires: cancel this one, "
        "or run it anyway once they all ended.",
    )

    @property
    def user(self):
        return self.context["user"]

    def validate_type(self, value: str) -> str:
        try:
            jt = registry.get(value)
        except registry.UnknownJobType:
            jt = None
        if jt is not None and jt.can_be_created_by(self.user):
            return value
        if jt is not None and self.user.is_staff:
            raise serializers.ValidationError(
                f"Jobs of type {value!r} are created by the application, not through the API."
            )
        # To others a type they may not create is as unknown as a misspelt one.
        creatable = ", ".join(t.name for t in registry.creatable_by(self.user))
        raise serializers.ValidationError(
            f"Unknown job type {value!r}. Types you may create: {creatable}."
        )

    def validate_priority(self, value: str) -> str:
        if value not in USER_PRIORITY_NAMES and not self.user.is_staff:
            raise serializers.ValidationError(
                f"Must be one of: {', '.join(USER_PRIORITY_NAMES)} (higher is for staff)."
            )
        return value

    def validate_run_at(self, value: datetime | None) -> datetime | None:
        ahead = timedelta(seconds=settings.JOBS_MAX_SCHEDULE_AHEAD)
        latest = (timezone.now() + ahead).replace(microsecond=0)
        if value is not None and value > latest:
            raise serializers.ValidationError(
                f"Must be at most {_duration(ahead)} ahead, no later than {latest.isoformat()}."
            )
        return value

    def validate_expires_in(self, value: int | None) -> int | None:
        if value is not None and value <= 0:
            raise serializers.ValidationError("Must be more than 0 seconds.")
        return value

    def validate(self, attrs: dict) -> dict:
        jt = registry.get(attrs["type"])
        payload = attrs["payload"]
        if isinstance(payload, dict):  # else enqueueing names it
            refused = jt.payload_refusals(self.user, payload)
            if refused:
                raise serializers.ValidationError({"payload": refused})
        now = timezone.now()
        expires_in = attrs.pop("expires_in", None)
        if expires_in is not None:
            if attrs.get("expires_at") is not None:
                raise serializers.ValidationError(
                    {"expires_in": ["Give expires_at or expires_in, not both."]}
                )
            attrs["expires_at"] = now + timedelta(seconds=expires_in)
        if errors := services.override_errors(jt, self._spec(attrs), now):
            raise serializers.ValidationError(errors)
        return attrs

    def to_spec(self) -> services.JobSpec:
        return self._spec(self.validated_data)

    @staticmethod
    def _spec(data: dict) -> services.JobSpec:
        return services.JobSpec(
            type=data["type"],
            payload=data["payload"],
            idempotency_key=data.get("idempotency_key"),
            priority=data["priority"],
            run_at=data.get("run_at"),
            expires_at=data.get("expires_at"),
            max_attempts=data.get("max_attempts"),
            time_limit=data.get("time_limit"),
            depends_on=data.get("depends_on") or [],
            on_dependency_failure=data["on_dependency_failure"],
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


def _duration(delta: timedelta) -> str:
    if delta.days and delta == timedelta(days=delta.days):
        return f"{delta.days} days"
    return f"{int(delta.total_seconds())} seconds"


def _job_conflict(exc: IdempotencyConflict | InvalidTransition, code: str) -> Response:
    return conflict(str(exc), code, job_id=str(exc.job.id), status=exc.job.status)


class TooManyActiveJobsSerializer(serializers.Serializer):
    detail = serializers.CharField()
    code = serializers.CharField()
    limit = serializers.IntegerField(help_text="Queued and running jobs allowed per user")
    active = serializers.IntegerField(help_text="Queued and running jobs the user has")
    requested = serializers.IntegerField(help_text="New jobs the request would add")


def too_many_active(exc: TooManyActiveJobs) -> Response:
    return Response(
        {
            "detail": str(exc),
            "code": "too_many_active_jobs",
            "limit": exc.limit,
            "active": exc.active,
            "requested": exc.requested,
        },
        status=status.HTTP_429_TOO_MANY_REQUESTS,
    )


TOO_MANY_ACTIVE = OpenApiResponse(
    TooManyActiveJobsSerializer, description="The caller's cap of active jobs is reached"
)


@extend_schema(tags=["jobs"])
class JobViewSet(viewsets.GenericViewSet):
    serializer_class = JobSerializer
    pagination_class = JobPagination
    lookup_value_regex = "[0-9a-fA-F-]{32,36}"

    def get_queryset(self):
        return (
            Job.objects.visible_to(self.request.user)
            .select_related("owner")
            .prefetch_related("dependencies")
        )

    def get_object(self) -> Job:
        return get_object_or_404(self.get_queryset(), id=uuid_or_404(self.kwargs["pk"]))

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
        data = JobSerializer(page, many=True, context={"request": request}).data
        return self.get_paginated_response(data)

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

    @extend_schema(
        request=JobCreateSerializer,
        responses={202: JobSerializer, 200: JobSerializer, 429: TOO_MANY_ACTIVE},
    )
    def create(self, request: Request) -> Response:
        data = request.data
        if not isinstance(data, dict):
            raise serializers.ValidationError({"non_field_errors": ["Expected a JSON object."]})
        header_key = request.headers.get("Idempotency-Key")
        if header_key and not data.get("idempotency_key"):
            data = {**data, "idempotency_key": header_key}
        serializer = JobCreateSerializer(data=data, context={"user": request.user})
        serializer.is_valid(raise_exception=True)
        spec = serializer.to_spec()
        try:
            services.check_room_for(request.user, [spec])
        except TooManyActiveJobs as exc:
            return too_many_active(exc)
        try:
            outcome = services.enqueue(
                spec.type,
                spec.payload,
                owner=request.user,
                idempotency_key=spec.idempotency_key,
                priority=spec.priority,
                run_at=spec.run_at,
                expires_at=spec.expires_at,
                max_attempts=spec.max_attempts,
                time_limit=spec.time_limit,
                depends_on=spec.depends_on,
                on_dependency_failure=spec.on_dependency_failure,
            )
        except IdempotencyConflict as exc:
            return _job_conflict(exc, "idempotency_conflict")
        code = status.HTTP_202_ACCEPTED if outcome.created else status.HTTP_200_OK
        return Response(job_data(outcome.job, request.user), status=code)

    @extend_schema(
        request=BulkCreateSerializer,
        responses={202: BulkCreatedSerializer, 429: TOO_MANY_ACTIVE},
    )
    @action(detail=False, methods=["post"])
    def bulk(self, request: Request) -> Response:
        outer = BulkCreateSerializer(data=request.data)
        outer.is_valid(raise_exception=True)
        specs, errors = {}, {}
        context = {"user": request.user}
        for index, item in enumerate(outer.validated_data["jobs"]):
            serializer = JobCreateSerializer(data=item, context=context)
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
            services.check_room_for(request.user, specs)
        except TooManyActiveJobs as exc:
            return too_many_active(exc)
        try:
            outcomes = services.enqueue_many(specs, owner=request.user)
        except IdempotencyConflict as exc:
            return _job_conflict(exc, "idempotency_conflict")
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

    @extend_schema(responses=JobDetailSerializer)
    def retrieve(self, request: Request, pk: str) -> Response:
        job = self.get_object()
        return Response(JobDetailSerializer(job, context={"request": request}).data)

    @extend_schema(
        parameters=[live_api.WAIT_PARAMETER],
        responses={200: JobStatusSerializer, 304: None, 503: live_api.PUSH_REFUSED},
    )
    @action(detail=True, methods=["get"])
    def status(self, request: Request, pk: str) -> Response:
        job_id = uuid_or_404(pk)
        row = status_row(request.user, job_id)
        if row is None:
            raise Http404
        answer = live_api.long_poll(
            request, job_id, (etag_for(row), row), lambda: _status_of(request.user, job_id)
        )
        if isinstance(answer, Response):
            return answer
        if answer is None:
            raise Http404
        etag, row = answer
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if etag in if_none_match(request):
            return Response(status=status.HTTP_304_NOT_MODIFIED, headers=headers)
        return Response(_status_representation.to_representation(row), headers=headers)

    @extend_schema(request=None, responses={200: JobSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        job = self.get_object()
        if not visibility.may_act_on(request.user, job.owner_id, visibility.CANCEL_PERMISSION):
            raise exceptions.PermissionDenied("Cancelling another user's job needs a permission.")
        try:
            job = services.cancel(job, by=request.user, via=Via.API)
        except InvalidTransition as exc:
            return _job_conflict(exc, "not_cancellable")
        return Response(job_data(job, request.user))

    @extend_schema(request=None, responses={200: JobSerializer})
    def destroy(self, request: Request, pk: str) -> Response:
        return self.cancel(request, pk)

    @extend_schema(request=None, responses={202: JobSerializer, 429: TOO_MANY_ACTIVE})
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str) -> Response:
        job = self.get_object()
        if not visibility.may_act_on(request.user, job.owner_id, visibility.RETRY_PERMISSION):
            raise exceptions.PermissionDenied("Retrying another user's job needs a permission.")
        if job.status in RETRYABLE_STATUSES:  # a retried job is active again
            try:
                services.check_room_for(request.user, [services.JobSpec(job.type)])
            except TooManyActiveJobs as exc:
                return too_many_active(exc)
        try:
            job = services.retry(job, by=request.user, via=Via.API)
        except InvalidTransition as exc:
            return _job_conflict(exc, "not_retryable")
        return Response(job_data(job, request.user), status=status.HTTP_202_ACCEPTED)

    @extend_schema(responses=JobStatsSerializer)
    @action(detail=False, methods=["get"])
    def stats(self, request: Request) -> Response:
        return Response(queries.stats(self.get_queryset()))


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


def _status_of(user, job_id: uuid.UUID) -> tuple[str, dict] | None:
    row = status_row(user, job_id)
    return None if row is None else (etag_for(row), row)


def status_row(user, job_id: uuid.UUID) -> dict | None:
    """The polled fields of a job, or None if there is no such job the user may see
    (staff see every job, others their own, as `Job.objects.visible_to`)."""
    now = timezone.now()
    # The jobs ahead counted in the same read: a queued job's status costs one statement.
    row = job_store().status_row(job_id, now=now, ahead_up_to=line.count_to())
    if row is None:
        return None
    owner_id = row.pop("owner_id")
    if not (user.is_staff or owner_id == user.pk):
        return None
    row["line"] = line_of(row, now, row.pop("ahead"))
    return row


def line_of(row: dict, now: datetime | None = None, ahead: int | None = None) -> dict | None:
    """The place in line of the job a status row is of (only a queued job has one)."""
    if row["status"] != Status.QUEUED:
        return None
    waiting = line.Waiting(**{f: row[f] for f in line.Waiting._fields})
    return line.place_data(waiting, now, ahead)


class JobTypeSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    exposure = serializers.ChoiceField(
        choices=[e.value for e in registry.Exposure],
        help_text="Who may create it through the API: any user, or staff",
    )
    queue = serializers.CharField()
    max_attempts = serializers.IntegerField()
    backoff_base = serializers.FloatField()
    soft_time_limit = serializers.IntegerField()
    payload_fields = serializers.DictField()


@extend_schema(tags=["jobs"], responses=JobTypeSerializer(many=True))
class JobTypeList(APIView):
    """The job types the caller may create, with the payload fields they may set."""

    def get(self, request: Request) -> Response:
        staff = request.user.is_staff
        return Response(
            [
                {
                    "name": jt.name,
                    "description": jt.description,
                    "exposure": jt.exposure.value,
                    "queue": jt.queue,
                    "max_attempts": jt.max_attempts,
                    "backoff_base": jt.backoff_base,
                    "soft_time_limit": jt.soft_time_limit,
                    "payload_fields": jt.payload_fields(staff_fields=staff),
                }
                for jt in registry.creatable_by(request.user)
            ]
        )


# --- operators' controls: pauses and limits ------------------------------------------


class StaffWithPermission(permissions.BasePermission):
    """Staff holding the view's `required_permission` (superusers hold every one)."""

    def has_permission(self, request: Request, view) -> bool:
        user = request.user
        if not (user and user.is_authenticated and user.is_staff):
            return False
        if not user.has_perm(view.required_permission):
            self.message = f"Needs the {view.required_permission} permission."
            return False
        return True


class LimitsSerializer(serializers.Serializer):
    concurrency = serializers.IntegerField(allow_null=True, required=False, default=None)
    owner_concurrency = serializers.IntegerField(allow_null=True, required=False, default=None)
    rate = serializers.IntegerField(allow_null=True, required=False, default=None)
    owner_rate = serializers.IntegerField(allow_null=True, required=False, default=None)
    period = serializers.FloatField(
        required=False, help_text="Seconds of a rate's window; default: the type's declared one."
    )


class HeldSerializer(serializers.Serializer):
    paused = serializers.IntegerField(required=False)
    concurrency = serializers.IntegerField(required=False)
    rate = serializers.IntegerField(required=False)
    dependencies = serializers.IntegerField(required=False)


class QueueControlSerializer(serializers.Serializer):
    name = serializers.CharField()
    paused = serializers.BooleanField()
    held = HeldSerializer(help_text="Queued jobs held back, by reason")


class TypeControlSerializer(serializers.Serializer):
    name = serializers.CharField()
    queue = serializers.CharField()
    paused = serializers.BooleanField()
    overrides_limits = serializers.BooleanField(
        help_text="Whether staff replaced the declared limits"
    )
    limits = LimitsSerializer(help_text="The limits in force")
    declared_limits = LimitsSerializer(help_text="The limits the type declares")
    held = HeldSerializer(help_text="Queued jobs held back, by reason")


class ControlsSerializer(serializers.Serializer):
    queues = QueueControlSerializer(many=True)
    types = TypeControlSerializer(many=True)


def controls_data() -> dict:
    """Every queue and type with its pause, limits and held jobs, as JSON-ready data."""
    seen = controls.overview()
    return {
        "queues": [_queue_control_data(q) for q in seen.queues],
        "types": [_type_control_data(t) for t in seen.types],
    }


def _queue_control_data(entry: controls.QueueControl) -> dict:
    return {"name": entry.name, "paused": entry.paused, "held": entry.held}


def _type_control_data(entry: controls.TypeControl) -> dict:
    return {
        "name": entry.name,
        "queue": entry.queue,
        "paused": entry.paused,
        "overrides_limits": entry.overrides_limits,
        "limits": controls.limits_as_dict(entry.limits),
        "declared_limits": controls.limits_as_dict(entry.declared_limits),
        "held": entry.held,
    }


def _control_of(scope: str, name: str) -> dict:
    seen = controls.overview()
    entries = seen.queues if scope == Scope.QUEUE else seen.types
    entry = next(e for e in entries if e.name == name)
    if scope == Scope.QUEUE:
        return _queue_control_data(entry)
    return _type_control_data(entry)


@extend_schema(tags=["controls"])
class ControlList(APIView):
    """Staff: every queue and job type, paused or not, with limits and held jobs."""

    permission_classes = [permissions.IsAdminUser]

    @extend_schema(responses=ControlsSerializer)
    def get(self, request: Request) -> Response:
        return Response(controls_data())


class ControlStateSerializer(serializers.Serializer):
    scope = serializers.ChoiceField(choices=[s.value for s in Scope])
    name = serializers.CharField()
    paused = serializers.BooleanField()
    held = HeldSerializer(help_text="Queued jobs held back, by reason")


def _state_of(scope: str, name: str) -> dict:
    entry = _control_of(scope, name)
    return {"scope": scope, "name": name, "paused": entry["paused"], "held": entry["held"]}


SCOPE_PARAMETER = OpenApiParameter(
    "scope", str, OpenApiParameter.PATH, enum=[s.value for s in Scope]
)


@extend_schema(tags=["controls"], parameters=[SCOPE_PARAMETER])
class ControlPause(APIView):
    """Staff with jobs.pause_jobs: pause a queue or a job type. Its jobs stay queued
    (held) until it is resumed."""

    permission_classes = [StaffWithPermission]
    required_permission = controls.PAUSE_PERMISSION

    @extend_schema(request=None, responses={200: ControlStateSerializer})
    def post(self, request: Request, scope: str, name: str) -> Response:
        controls.pause(scope, name, by=request.user, via=Via.API)
        return Response(_state_of(scope, name))


@extend_schema(tags=["controls"], parameters=[SCOPE_PARAMETER])
class ControlResume(APIView):
    """Staff with jobs.pause_jobs: resume a paused queue or job type; its held jobs
    are sent to start."""

    permission_classes = [StaffWithPermission]
    required_permission = controls.PAUSE_PERMISSION

    @extend_schema(request=None, responses={200: ControlStateSerializer})
    def post(self, request: Request, scope: str, name: str) -> Response:
        controls.resume(scope, name, by=request.user, via=Via.API)
        return Response(_state_of(scope, name))


@extend_schema(tags=["controls"])
class TypeLimits(APIView):
    """Staff with jobs.change_limits: replace a job type's limits (PUT; a field left
    out or null is no such limit) or go back to what the type declares (DELETE)."""

    permission_classes = [StaffWithPermission]
    required_permission = controls.LIMITS_PERMISSION

    @extend_schema(request=LimitsSerializer, responses={200: TypeControlSerializer})
    def put(self, request: Request, name: str) -> Response:
        controls.validate_target(Scope.TYPE, name)
        new = limits_from(request.data, registry.get(name).limits.period)
        controls.set_limits(name, new, by=request.user, via=Via.API)
        return Response(_control_of(Scope.TYPE, name))

    @extend_schema(request=None, responses={200: TypeControlSerializer})
    def delete(self, request: Request, name: str) -> Response:
        controls.set_limits(name, None, by=request.user, via=Via.API)
        return Response(_control_of(Scope.TYPE, name))


def limits_from(data, declared_period: float) -> registry.Limits:
    """The limits a request body asks for, or a ValidationError naming each bad field."""
    if not isinstance(data, dict):
        raise serializers.ValidationError({"non_field_errors": ["Expected a JSON object."]})
    incoming = LimitsSerializer(data=data)
    unknown = sorted(set(data) - set(incoming.fields))
    if unknown:
        known = ", ".join(incoming.fields)
        raise serializers.ValidationError(
            {name: [f"Unknown field; the limits are: {known}."] for name in unknown}
        )
    incoming.is_valid(raise_exception=True)
    values = {"period": declared_period, **incoming.validated_data}
    new = registry.Limits(**values)
    controls.validate_limits(new)
    return new


# --- the audit log --------------------------------------------------------------------


class OperatorActionSerializer(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor_name")

    class Meta:
        model = OperatorAction
        fields = ["id", "created_at", "actor", "action", "target_kind", "target", "via", "detail"]
        read_only_fields = fields


class AuditPagination(CursorPagination):
    ordering = ("-created_at", "-id")
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


AUDIT_FILTERS = {
    "target_kind": "target_kind",
    "target": "target",
    "actor": "actor_name",
    "action": "action",
    "via": "via",
}


@extend_schema(
    tags=["audit"],
    parameters=[
        OpenApiParameter("target_kind", str, description="job, batch, queue, type or schedule"),
        OpenApiParameter("target", str, description="A job id, queue, type or schedule name"),
        OpenApiParameter("actor", str, description="The acting user's username"),
        OpenApiParameter("action", str, description="retry, cancel, pause, resume, ..."),
        OpenApiParameter("via", str, description="api, admin, dashboard, web or command"),
    ],
)
class AuditList(generics.ListAPIView):
    """Staff: who did what to jobs, queues, job types and schedules, newest first."""

    permission_classes = [permissions.IsAdminUser]
    serializer_class = OperatorActionSerializer
    pagination_class = AuditPagination

    def get_queryset(self):
        actions = OperatorAction.objects.all()
        for param, field_name in AUDIT_FILTERS.items():
            if value := self.request.query_params.get(param, "").strip():
                actions = actions.filter(**{field_name: value})
        return actions
