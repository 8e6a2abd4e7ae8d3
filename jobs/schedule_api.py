"""The staff API of schedules (django-celery-beat's periodic tasks): list and read them,
pause and resume them, run one now. The work is jobs.scheduling's, as in the dashboard."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, permissions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from . import scheduling
from .api import StaffWithPermission
from .audit import Via


class TimingSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(
        choices=["cron", "interval", "solar", "clocked", "none"],
        help_text="Which of the fields below hold the timing; the others are null",
    )
    cron = serializers.CharField(
        allow_null=True, help_text='cron: "minute hour day-of-month month day-of-week"'
    )
    timezone = serializers.CharField(allow_null=True, help_text="cron: the zone it runs in")
    every_seconds = serializers.FloatField(allow_null=True, help_text="interval: its period")
    solar_event = serializers.CharField(allow_null=True, help_text="solar: sunrise, sunset, …")
    latitude = serializers.FloatField(allow_null=True)
    longitude = serializers.FloatField(allow_null=True)
    clocked_at = serializers.DateTimeField(allow_null=True, help_text="clocked: its one run")


class ScheduleJobSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.CharField()
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)


class ScheduleSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField(allow_blank=True)
    task = serializers.CharField(help_text="The Celery task Beat sends")
    job_type = serializers.CharField(
        allow_null=True, help_text="The job type it enqueues; null for a plain Celery task"
    )
    timing = serializers.CharField(help_text='In words: "Every 5 minutes UTC (cron */5 * * * *)"')
    timing_spec = TimingSerializer(help_text="In machine form")
    enabled = serializers.BooleanField(help_text="false: paused, Beat does not fire it")
    next_run_at = serializers.DateTimeField(allow_null=True, help_text="null while paused")
    last_run_at = serializers.DateTimeField(allow_null=True, help_text="When Beat last fired it")
    last_job = ScheduleJobSerializer(
        allow_null=True, help_text="The job of the latest window Beat fired, with its outcome"
    )
    last_manual_job = ScheduleJobSerializer(
        allow_null=True, help_text="The latest job started by hand (run now)"
    )


class ScheduleRunSerializer(serializers.Serializer):
    schedule = serializers.CharField()
    job = ScheduleJobSerializer(help_text="The job it created; GET /api/jobs/{id}/ follows it")


_schedule_representation = ScheduleSerializer()
_job_representation = ScheduleJobSerializer()


def schedule_data(state: scheduling.ScheduleState) -> dict:
    return _schedule_representation.to_representation(state)


@contextmanager
def unknown_is_404() -> Iterator[None]:
    """An unknown schedule is a 404 naming it (the services' ValidationError, a 400 on
    the dashboard)."""
    try:
        yield
    except scheduling.UnknownSchedule as exc:
        raise exceptions.NotFound(exc.message) from None


@extend_schema(tags=["schedules"])
class ScheduleList(APIView):
    """Staff: every schedule (django-celery-beat's periodic tasks), by name, with its
    timing, next run and last run."""

    permission_classes = [permissions.IsAdminUser]

    @extend_schema(responses=ScheduleSerializer(many=True))
    def get(self, request: Request) -> Response:
        return Response([schedule_data(s) for s in scheduling.overview()])


@extend_schema(tags=["schedules"])
class ScheduleDetail(APIView):
    """Staff: one schedule."""

    permission_classes = [permissions.IsAdminUser]

    @extend_schema(responses=ScheduleSerializer)
    def get(self, request: Request, name: str) -> Response:
        with unknown_is_404():
            return Response(schedule_data(scheduling.state(name)))


class _Switch(APIView):
    permission_classes = [StaffWithPermission]
    required_permission = scheduling.CHANGE_PERMISSION
    enabled: bool

    @extend_schema(request=None, responses={200: ScheduleSerializer})
    def post(self, request: Request, name: str) -> Response:
        with unknown_is_404():
            scheduling.set_enabled(name, self.enabled, by=request.user, via=Via.API)
            return Response(schedule_data(scheduling.state(name)))


@extend_schema(tags=["schedules"])
class SchedulePause(_Switch):
    """Staff with django_celery_beat.change_periodictask: pause a schedule; Beat stops
    firing it, and it stays paused through sync_schedules until resumed."""

    enabled = False


@extend_schema(tags=["schedules"])
class ScheduleResume(_Switch):
    """Staff with django_celery_beat.change_periodictask: resume a paused schedule."""

    enabled = True


@extend_schema(tags=["schedules"])
class ScheduleRunNow(APIView):
    """Staff with django_celery_beat.change_periodictask: enqueue the schedule's job now.
    It is a run of its own: the next scheduled run still creates its job. A schedule
    that sends a plain Celery task cannot be run here (400)."""

    permission_classes = [StaffWithPermission]
    required_permission = scheduling.CHANGE_PERMISSION

    @extend_schema(request=None, responses={202: ScheduleRunSerializer})
    def post(self, request: Request, name: str) -> Response:
        with unknown_is_404():
            job = scheduling.run_now(name, by=request.user, via=Via.API)
        return Response(
            {"schedule": name, "job": _job_representation.to_representation(job)},
            status=status.HTTP_202_ACCEPTED,
        )
