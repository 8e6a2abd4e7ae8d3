from django.contrib import admin

from .models import Report


@admin.register(Report)
class ReportAdmin(admin.ModelAdmin):
    list_display = ["title", "kind", "owner", "report_status", "page_count", "size", "created_at"]
    list_filter = ["kind", "job__status"]
    search_fields = ["id", "title", "owner__username"]
    list_select_related = ["owner", "job"]
    readonly_fields = ["id", "job", "file", "size", "page_count", "created_at"]
    raw_id_fields = ["owner"]

    @admin.display(description="Status")
    def report_status(self, report: Report) -> str:
        return report.status
