from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from . import health, signin
from .account import Me

api_patterns = [
    path("auth/token/", signin.TokenObtainView.as_view(), name="token"),
    path("auth/token/refresh/", signin.TokenRefreshView.as_view(), name="token-refresh"),
    path("auth/token/revoke/", signin.TokenRevokeView.as_view(), name="token-revoke"),
    path("me/", Me.as_view(), name="me"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("", include("jobs.api_urls")),
    path("", include("reports.api_urls")),
    path("", include("notes.api_urls")),
    path("", include("webhooks.api_urls")),
]

# A URL no pattern matches gets a JSON 404 under /api/, as every other API error.
handler404 = "jobsite.api.not_found"
# While the database is down: a 503 (JSON under /api/), not a 500 page.
handler500 = "jobsite.unavailable.server_error"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/", include(api_patterns)),
    path("health/", health.health, name="health"),
    path("", include("jobs.urls")),
    path("", include("reports.urls")),
]
