from django.urls import path

from . import dashboard, metrics

urlpatterns = [
    path("metrics", metrics.metrics, name="metrics"),
    path("dashboard/", dashboard.dashboard, name="dashboard"),
    path("dashboard/data/", dashboard.dashboard_data, name="dashboard-data"),
    path("dashboard/history/", dashboard.dashboard_history, name="dashboard-history"),
    path("dashboard/retry-failed/", dashboard.retry_failed, name="dashboard-retry-failed"),
    path("dashboard/jobs/<uuid:job_id>/retry/", dashboard.retry_job, name="dashboard-retry"),
]
