from django.urls import path
from django.views.generic import RedirectView

from . import views

urlpatterns = [
    path(
        "",
        RedirectView.as_view(url="/reports/", permanent=False, http_method_names=["get", "head"]),
        name="home",
    ),
    path("reports/", views.index, name="reports"),
    path("reports/rows/", views.rows, name="report-rows"),
    path("reports/<uuid:report_id>/row/", views.row, name="report-row"),
    path("reports/<uuid:report_id>/cancel/", views.cancel, name="report-cancel"),
    path("reports/<uuid:report_id>/retry/", views.retry, name="report-retry"),
    path("reports/<uuid:report_id>/download/", views.download, name="report-download"),
]
