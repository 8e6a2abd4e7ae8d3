from django.conf import settings
from django.conf.urls.static import static
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework_simplejwt.views import TokenObtainPairView, TokenRefreshView

from jobs import dashboard, metrics

from . import health
from .account import Me
from .throttles import TokenRateThrottle

api_patterns = [
    path(
        "auth/token/",
        TokenObtainPairView.as_view(throttle_classes=[TokenRateThrottle]),
        name="token",
    ),
    path(
        "auth/token/refresh/",
        TokenRefreshView.as_view(throttle_classes=[TokenRateThrottle]),
        name="token-refresh",
    ),
    path("me/", Me.as_view(), name="me"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("", include("jobs.urls")),
    path("", include("reports.api_urls")),
    path("", include("notes.urls")),
]

# A URL no pattern matches gets a JSON 404 under /api/, as every other API error.
handler404 = "jobsite.api.not_found"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/", include(api_patterns)),
    path("health/", health.health, name="health"),
    path("metrics", metrics.metrics, name="metrics"),
    path("dashboard/", dashboard.dashboard, name="dashboard"),
    path("dashboard/data/", dashboard.dashboard_data, name="dashboard-data"),
    path("dashboard/retry-failed/", dashboard.retry_failed, name="dashboard-retry-failed"),
    path("dashboard/jobs/<uuid:job_id>/retry/", dashboard.retry_job, name="dashboard-retry"),
    path("", include("reports.urls")),
]

if settings.DEBUG and not settings.CLOUDINARY_URL:
    # Development only: notes images kept in local storage are shown from here. Report
    # PDFs are never served this way; they go through their owner-checked download.
    urlpatterns += static(
        f"{settings.MEDIA_URL}notes/images/", document_root=settings.MEDIA_ROOT / "notes" / "images"
    )
