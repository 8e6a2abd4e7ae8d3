from django.urls import path, register_converter
from rest_framework.routers import SimpleRouter

from .api import (
    AuditList,
    ControlList,
    ControlPause,
    ControlResume,
    JobTypeList,
    JobViewSet,
    TypeLimits,
)
from .batch_api import BatchViewSet
from .live_api import EventStream
from .schedule_api import (
    ScheduleDetail,
    ScheduleList,
    SchedulePause,
    ScheduleResume,
    ScheduleRunNow,
)


class ScopeConverter:
    regex = "queue|type"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(ScopeConverter, "scope")

router = SimpleRouter()
router.register("jobs", JobViewSet, basename="job")
router.register("batches", BatchViewSet, basename="batch")

urlpatterns = [
    path("job-types/", JobTypeList.as_view(), name="job-types"),
    path("controls/", ControlList.as_view(), name="controls"),
    path("controls/<scope:scope>/<str:name>/pause/", ControlPause.as_view(), name="control-pause"),
    path(
        "controls/<scope:scope>/<str:name>/resume/", ControlResume.as_view(), name="control-resume"
    ),
    path("controls/type/<str:name>/limits/", TypeLimits.as_view(), name="control-limits"),
    path("schedules/", ScheduleList.as_view(), name="schedules"),
    path("schedules/<str:name>/", ScheduleDetail.as_view(), name="schedule"),
    path("schedules/<str:name>/pause/", SchedulePause.as_view(), name="schedule-pause"),
    path("schedules/<str:name>/resume/", ScheduleResume.as_view(), name="schedule-resume"),
    path("schedules/<str:name>/run-now/", ScheduleRunNow.as_view(), name="schedule-run-now"),
    path("audit/", AuditList.as_view(), name="audit"),
    path("events/", EventStream.as_view(), name="events"),
    *router.urls,
]
