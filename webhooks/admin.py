from django import forms
from django.contrib import admin, messages

from jobs.engine import Via

from . import addresses, services
from .models import DeliveryAttempt, WebhookDelivery, WebhookEndpoint


class EndpointForm(forms.ModelForm):
    url = forms.URLField(max_length=2000, assume_scheme="https")

    class Meta:
        model = WebhookEndpoint
        fields = ["owner", "url", "description", "events", "active"]

    def clean_url(self) -> str:
        try:
            return services.check_url(self.cleaned_data["url"])
        except addresses.AddressRefused as exc:
            raise forms.ValidationError(str(exc)) from None


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    form = EndpointForm
    list_display = ["url", "owner", "active", "created_at"]
    list_filter = ["active"]
    search_fields = ["url", "owner__username", "=id"]
    raw_id_fields = ["owner"]
    # The secret is its owner's: never shown here.
    exclude = ["secret"]
    readonly_fields = ["id", "created_at", "updated_at"]


class DeliveryAttemptInline(admin.TabularInline):
    model = DeliveryAttempt
    fields = ["number", "started_at", "duration_ms", "response_status", "error"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    """Read only; replaying sends a new delivery and is recorded in the audit log."""

    list_display = [
        "id",
        "event",
        "endpoint",
        "status",
        "attempts",
        "response_status",
        "created_at",
    ]
    list_filter = ["status", "event"]
    search_fields = ["=id", "=subject_id", "endpoint__url", "endpoint__owner__username"]
    readonly_fields = [f.name for f in WebhookDelivery._meta.fields]
    inlines = [DeliveryAttemptInline]
    actions = ["replay_deliveries"]
    list_select_related = ["endpoint"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def has_replay_permission(self, request) -> bool:
        return request.user.has_perm(services.REPLAY_PERMISSION)

    @admin.action(permissions=["replay"], description="Replay selected deliveries")
    def replay_deliveries(self, request, queryset) -> None:
        for delivery in queryset.select_related("endpoint"):
            services.replay(delivery, by=request.user, via=Via.ADMIN)
        self.message_user(
            request, f"{queryset.count()} delivery(ies) sent again.", messages.SUCCESS
        )
