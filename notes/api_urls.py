from rest_framework.routers import SimpleRouter

from .api import ImageViewSet, PageViewSet, TaskViewSet

router = SimpleRouter()
router.register("notes/pages", PageViewSet, basename="page")
router.register("notes/images", ImageViewSet, basename="image")
router.register("notes/tasks", TaskViewSet, basename="task")

urlpatterns = router.urls
