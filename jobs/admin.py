from django.contrib import admin, messages

from . import services, visibility
from .errors import InvalidTransition
from .models import Job, JobEvent

OWNERS_FIELDS = ["payload", "result"]


class JobEventInline(admin.TabularInline):
    model = JobEvent
    extra = 0
    can_delete = False
    fields = ["created_at", "kind", "attempt", "message"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ["id", "type", "status", "progress", "attempts", "queue", "owner", "created_at"]
    list_filter = ["status", "type", "queue", "priority"]
    search_fields = ["=id", "idempotency_key", "owner__username", "type"]
    readonly_fields = [f.name for f in Job._meta.fields]
    inlines = [JobEventInline]
    actions = ["retry_jobs", "cancel_jobs"]
    date_hierarchy = "created_at"
    list_select_related = ["owner"]
    show_full_result_count = False

    def has_add_permission(self, request) -> bool:
        return False

    def has_retry_permission(self, request) -> bool:
        return request.user.has_perm("jobs.retry_job")

    def has_cancel_permission(self, request) -> bool:
        return request.user.has_perm("jobs.cancel_job")

    def get_fields(self, request, obj: Job | None = None) -> list[str]:
        """Payload and result only for their owner or with the view_job_payload permission."""
        fields = super().get_fields(request, obj)
        owner_id = obj.owner_id if obj else None
        if visibility.sees_payload(request.user, owner_id):
            return fields
        return [name for name in fields if name not in OWNERS_FIELDS]

    @admin.action(permissions=["retry"], description="Retry selected failed or cancelled jobs")
    def retry_jobs(self, request, queryset) -> None:
        count = services.retry_many(queryset)
        self.message_user(request, f"{count} job(s) queued again.", messages.SUCCESS)

    @admin.action(permissions=["cancel"], description="Cancel selected jobs")
    def cancel_jobs(self, request, queryset) -> None:
        done = 0
        for job in queryset.active():
            try:
                services.cancel(job)
                done += 1
            except InvalidTransition:
                pass
        self.message_user(request, f"{done} job(s) cancelled or asked to stop.", messages.SUCCESS)


@admin.register(JobEvent)
class JobEventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "job", "kind", "attempt", "message"]
    list_filter = ["kind"]
    search_fields = ["=job__id"]
    readonly_fields = ["job", "kind", "message", "attempt", "created_at"]
    list_select_related = ["job"]
