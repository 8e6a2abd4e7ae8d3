from django.contrib import admin

from .models import Image, Page, Task


@admin.register(Page)
class PageAdmin(admin.ModelAdmin):
    list_display = ["title", "owner", "applied_version", "updated_at"]
    search_fields = ["title", "owner__username"]
    raw_id_fields = ["owner"]
    filter_horizontal = ["images"]


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    list_display = ["id", "original_name", "owner", "status", "backend", "size", "orphaned_at"]
    list_filter = ["status", "backend"]
    search_fields = ["original_name", "public_id", "owner__username"]
    raw_id_fields = ["owner", "job"]


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = ["title", "owner", "due_at", "done", "due_soon_sent_at", "overdue_sent_at"]
    list_filter = ["done"]
    search_fields = ["title", "owner__username"]
    raw_id_fields = ["owner"]
