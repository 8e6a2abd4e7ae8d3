from django import forms
from django.contrib import admin, messages
from django.db.models import Count, Q
from django_celery_beat.admin import PeriodicTaskAdmin
from django_celery_beat.models import PeriodicTask
from rest_framework import serializers

from . import audit, controls, registry, scheduling, services, visibility
from .audit import Via
from .errors import InvalidTransition
from .models import ACTIVE_STATUSES, Batch, Control, Job, JobEvent, OperatorAction, Scope, Status

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
    list_display = [
        "id", "type", "status", "progress", "attempts", "queue", "owner", "batch", "created_at"
    ]  # fmt: skip
    list_filter = ["status", "type", "queue", "priority"]
    search_fields = ["=id", "idempotency_key", "owner__username", "type", "=batch__id"]
    readonly_fields = [f.name for f in Job._meta.fields]
    inlines = [JobEventInline]
    actions = ["retry_jobs", "cancel_jobs"]
    date_hierarchy = "created_at"
    list_select_related = ["owner", "batch"]
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
        count = services.retry_many(queryset, by=request.user, via=Via.ADMIN)
        self.message_user(request, f"{count} job(s) queued again.", messages.SUCCESS)

    @admin.action(permissions=["cancel"], description="Cancel selected jobs")
    def cancel_jobs(self, request, queryset) -> None:
        done = 0
        for job in queryset.active():
            try:
                services.cancel(job, by=request.user, via=Via.ADMIN)
                done += 1
            except InvalidTransition:
                pass
        self.message_user(request, f"{done} job(s) cancelled or asked to stop.", messages.SUCCESS)


@admin.register(Batch)
class BatchAdmin(admin.ModelAdmin):
    """Read-only: batches are created and cancelled through the API and the code."""

    list_display = [
        "id", "description", "owner", "state", "jobs_count", "active_count", "failed_count",
        "created_at", "finished_at",
    ]  # fmt: skip
    list_filter = ["state"]
    search_fields = ["=id", "description", "owner__username"]
    readonly_fields = [f.name for f in Batch._meta.fields]
    list_select_related = ["owner"]
    show_full_result_count = False

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                jobs_total=Count("jobs"),
                jobs_active=Count("jobs", filter=Q(jobs__status__in=ACTIVE_STATUSES)),
                jobs_failed=Count("jobs", filter=Q(jobs__status=Status.FAILED)),
            )
        )

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="jobs", ordering="jobs_total")
    def jobs_count(self, batch: Batch) -> int:
        return batch.jobs_total

    @admin.display(description="queued or running")
    def active_count(self, batch: Batch) -> int:
        return batch.jobs_active

    @admin.display(description="failed")
    def failed_count(self, batch: Batch) -> int:
        return batch.jobs_failed


@admin.register(JobEvent)
class JobEventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "job", "kind", "attempt", "message"]
    list_filter = ["kind"]
    search_fields = ["=job__id"]
    readonly_fields = ["job", "kind", "message", "attempt", "created_at"]
    list_select_related = ["job"]


# --- operators' controls ---------------------------------------------------------------

LIMIT_FIELDS = ["concurrency", "owner_concurrency", "rate", "owner_rate", "period"]


class ControlForm(forms.ModelForm):
    """A queue's or type's pause and, for a type, limits replacing its declared ones.
    Saving goes through jobs.controls, which records the change."""

    class Meta:
        model = Control
        fields = ["scope", "name", "paused", "overrides_limits", *LIMIT_FIELDS]
        labels = {"overrides_limits": "Replace the declared limits with these"}
        help_texts = {
            "concurrency": "Empty: no limit.",
            "period": "Seconds of a rate's window; empty: the type's declared one.",
        }

    def clean(self) -> dict:
        data = super().clean()
        scope = data.get("scope", self.instance.scope)
        name = data.get("name", self.instance.name)
        if scope and name and not self.instance.pk:
            try:
                controls.validate_target(scope, name)
            except serializers.ValidationError as exc:
                raise forms.ValidationError({"name": list(exc.detail.values())[0]}) from None
        if scope == Scope.QUEUE and data.get("overrides_limits"):
            self.add_error("overrides_limits", "Limits are set on job types, not queues.")
        if scope == Scope.TYPE and name and data.get("overrides_limits"):
            try:
                controls.validate_limits(self.limits(registry.get(name).limits.period))
            except serializers.ValidationError as exc:
                for field_name, texts in exc.detail.items():
                    self.add_error(field_name, list(texts))
        return data

    def limits(self, declared_period: float) -> registry.Limits:
        data = self.cleaned_data
        values = {name: data.get(name) for name in LIMIT_FIELDS}
        values["period"] = values["period"] or declared_period
        return registry.Limits(**values)


@admin.register(Control)
class ControlAdmin(admin.ModelAdmin):
    """Pauses and limits. A row appears once someone paused or limited its queue or type;
    add one to act on another. Every change goes through jobs.controls (audited)."""

    form = ControlForm
    list_display = ["scope", "name", "paused", "overrides_limits", "limits_in_force", "updated_by"]
    list_filter = ["scope", "paused", "overrides_limits"]
    search_fields = ["name"]
    actions = ["pause_selected", "resume_selected"]
    list_select_related = ["updated_by"]

    def has_pause_permission(self, request) -> bool:
        return request.user.has_perm(controls.PAUSE_PERMISSION)

    def has_limits_permission(self, request) -> bool:
        return request.user.has_perm(controls.LIMITS_PERMISSION)

    def has_view_permission(self, request, obj=None) -> bool:
        return (
            super().has_view_permission(request, obj)
            or self.has_pause_permission(request)
            or self.has_limits_permission(request)
        )

    def has_add_permission(self, request) -> bool:
        return self.has_pause_permission(request) or self.has_limits_permission(request)

    def has_change_permission(self, request, obj=None) -> bool:
        return self.has_add_permission(request)

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # "reset" is a change of limits, recorded as one

    def get_readonly_fields(self, request, obj=None) -> list[str]:
        readonly = ["scope", "name"] if obj else []
        if not self.has_pause_permission(request):
            readonly.append("paused")
        if not self.has_limits_permission(request):
            readonly += ["overrides_limits", *LIMIT_FIELDS]
        return readonly

    @admin.display(description="Limits in force")
    def limits_in_force(self, control: Control) -> str:
        if control.scope != Scope.TYPE:
            return "-"
        try:
            jt = registry.get(control.name)
        except registry.UnknownJobType:
            return "unknown type"
        in_force = controls.limits_as_dict(controls.effective_limits(jt, control))
        shown = {k: v for k, v in in_force.items() if v is not None and k != "period"}
        if not shown:
            return "none"
        return ", ".join(f"{k} {v}" for k, v in shown.items()) + f" per {in_force['period']:g} s"

    def save_model(self, request, obj: Control, form: ControlForm, change: bool) -> None:
        scope, name = obj.scope, obj.name
        if "paused" in form.changed_data or not change:
            act = controls.pause if form.cleaned_data.get("paused") else controls.resume
            if self.has_pause_permission(request):
                act(scope, name, by=request.user, via=Via.ADMIN)
        limit_fields = {"overrides_limits", *LIMIT_FIELDS}
        if scope == Scope.TYPE and self.has_limits_permission(request):
            if limit_fields & set(form.changed_data):
                new = None
                if form.cleaned_data.get("overrides_limits"):
                    new = form.limits(registry.get(name).limits.period)
                controls.set_limits(name, new, by=request.user, via=Via.ADMIN)
        control = controls.control_for(scope, name)
        if control is None:
            control = Control.objects.create(scope=scope, name=name)
        obj.pk = control.pk

    @admin.action(permissions=["pause"], description="Pause selected queues and job types")
    def pause_selected(self, request, queryset) -> None:
        for control in queryset:
            controls.pause(control.scope, control.name, by=request.user, via=Via.ADMIN)
        self.message_user(request, f"{queryset.count()} paused.", messages.SUCCESS)

    @admin.action(permissions=["pause"], description="Resume selected queues and job types")
    def resume_selected(self, request, queryset) -> None:
        for control in queryset:
            controls.resume(control.scope, control.name, by=request.user, via=Via.ADMIN)
        self.message_user(request, f"{queryset.count()} resumed.", messages.SUCCESS)


@admin.register(OperatorAction)
class OperatorActionAdmin(admin.ModelAdmin):
    """The audit log, read only."""

    list_display = ["created_at", "actor_name", "action", "target_kind", "target", "via"]
    list_filter = ["action", "target_kind", "via"]
    search_fields = ["target", "actor_name"]
    readonly_fields = [f.name for f in OperatorAction._meta.fields]
    date_hierarchy = "created_at"

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


# --- schedules: django-celery-beat's admin, with every change recorded ------------------


class AuditedPeriodicTaskAdmin(PeriodicTaskAdmin):
    def save_model(self, request, obj: PeriodicTask, form, change: bool) -> None:
        if change and "enabled" in form.changed_data:
            obj.headers = scheduling.switched_headers(obj.headers, obj.enabled)
        super().save_model(request, obj, form, change)
        changed = sorted(form.changed_data) if change else []
        audit.record(
            request.user,
            "change" if change else "add",
            "schedule",
            obj.name,
            via=Via.ADMIN,
            fields=changed,
            enabled=obj.enabled,
        )

    def delete_model(self, request, obj: PeriodicTask) -> None:
        name = obj.name
        super().delete_model(request, obj)
        audit.record(request.user, "delete", "schedule", name, via=Via.ADMIN)

    def delete_queryset(self, request, queryset) -> None:
        names = list(queryset.values_list("name", flat=True))
        super().delete_queryset(request, queryset)
        audit.record_each(request.user, "delete", "schedule", names, via=Via.ADMIN)

    @admin.action(description="Enable selected tasks")
    def enable_tasks(self, request, queryset) -> None:
        self._switch(request, queryset, True)

    @admin.action(description="Disable selected tasks")
    def disable_tasks(self, request, queryset) -> None:
        self._switch(request, queryset, False)

    @admin.action(description="Toggle activity of selected tasks")
    def toggle_tasks(self, request, queryset) -> None:
        for row in queryset:
            scheduling.set_enabled(row.name, not row.enabled, by=request.user, via=Via.ADMIN)
        self.message_user(request, f"{queryset.count()} schedule(s) toggled.")

    def _switch(self, request, queryset, enabled: bool) -> None:
        for row in queryset:
            scheduling.set_enabled(row.name, enabled, by=request.user, via=Via.ADMIN)
        done = "enabled" if enabled else "disabled"
        self.message_user(request, f"{queryset.count()} schedule(s) {done}.")

    @admin.action(description="Run selected tasks")
    def run_tasks(self, request, queryset) -> None:
        """Sent as django-celery-beat sends them: a message without Beat's stamp, so a
        job's schedule starts a run of its own and the next window still gets its job."""
        names = list(queryset.values_list("name", flat=True))
        super().run_tasks(request, queryset)
        audit.record_each(request.user, "run_now", "schedule", names, via=Via.ADMIN)


admin.site.unregister(PeriodicTask)
admin.site.register(PeriodicTask, AuditedPeriodicTaskAdmin)
