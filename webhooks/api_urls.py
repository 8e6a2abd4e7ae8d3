from rest_framework.routers import SimpleRouter

from .api import DeliveryViewSet, EndpointViewSet

router = SimpleRouter()
# Before the endpoints: "deliveries" is no endpoint id, but say so by order too.
router.register("webhooks/deliveries", DeliveryViewSet, basename="webhook-delivery")
router.register("webhooks", EndpointViewSet, basename="webhook")

urlpatterns = router.urls
