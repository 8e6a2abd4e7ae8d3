from django.urls import path

from . import views

urlpatterns = [
    path("count/", views.start_count, name="start-count"),
    path("count/<str:result_id>/", views.count_result, name="count-result"),
]
