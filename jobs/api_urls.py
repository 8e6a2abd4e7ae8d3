from django.urls import path
from rest_framework.routers import SimpleRouter

from .api import JobTypeList, JobViewSet

router = SimpleRouter()
router.register("jobs", JobViewSet, basename="job")

urlpatterns = [
    path("job-types/", JobTypeList.as_view(), name="job-types"),
    *router.urls,
]
