from django.urls import path

from . import views

urlpatterns = [
    path("reports/<uuid:report_id>/download/", views.download, name="report-download"),
]
