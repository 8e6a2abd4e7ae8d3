from django.urls import path

from . import (
    api_urls,  # noqa: F401 (registers the "scope" path converter)
    batch_dashboard,
    dashboard,
    metrics,
)

urlpatterns = [
    path("metrics", metrics.metrics, name="metrics"),
    path("dashboard/", dashboard.dashboard, name="dashboard"),
    path("dashboard/data/", dashboard.dashboard_data, name="dashboard-data"),
    path("dashboard/history/", dashboard.dashboard_history, name="dashboard-history"),
    path("dashboard/retry-failed/", dashboard.retry_failed, name="dashboard-retry-failed"),
    path("dashboard/jobs/<uuid:job_id>/retry/", dashboard.retry_job, name="dashboard-retry"),
    path(
        "dashboard/controls/<scope:scope>/<str:name>/pause/",
        dashboard.pause_control,
        name="dashboard-pause",
    ),
    path(
        "dashboard/controls/<scope:scope>/<str:name>/resume/",
        dashboard.resume_control,
        name="dashboard-resume",
    ),
    path(
        "dashboard/controls/type/<str:name>/limits/",
        dashboard.change_limits,
        name="dashboard-limits",
    ),
    path(
        "dashboard/schedules/<str:name>/switch/",
        dashboard.switch_schedule,
        name="dashboard-schedule-switch",
    ),
    path(
        "dashboard/schedules/<str:name>/run/", dashboard.run_schedule, name="dashboard-schedule-run"
    ),
    path("dashboard/batches/", batch_dashboard.batch_list, name="dashboard-batches"),
    path("dashboard/batches/<uuid:batch_id>/", batch_dashboard.batch_page, name="dashboard-batch"),
    path(
        "dashboard/batches/<uuid:batch_id>/cancel/",
        batch_dashboard.cancel_batch,
        name="dashboard-batch-cancel",
    ),
]
