"""The webhooks HTTP API: register endpoints, see their deliveries, replay one.

Each user sees and changes their own endpoints; staff see everyone's but change only
their own (an endpoint's secret is its owner's). Replaying another user's delivery takes
the permission the admin's replay action takes; every replay is in the audit log."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response

from jobs.engine import Via
from jobsite.api import conflict, uuid_or_404

from . import addresses, services
from .models import DeliveryAttempt, Event, WebhookDelivery, WebhookEndpoint

EVENTS = [e.value for e in Event]


class EndpointSerializer(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.username", read_only=True)
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=EVENTS),
        min_length=1,
        required=False,
        help_text="The events sent to this endpoint; all of them by default.",
    )

    class Meta:
        model = WebhookEndpoint
        fields = [
            "id",
            "url",
            "description",
            "events",
            "active",
            "owner",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "owner", "created_at", "updated_at"]

    def validate_url(self, value: str) -> str:
        try:
            return services.check_url(value)
        except addresses.AddressRefused as exc:
            raise serializers.ValidationError(str(exc)) from None

    def validate_events(self, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))


class EndpointWithSecretSerializer(EndpointSerializer):
    secret = serializers.CharField(
        read_only=True,
        help_text="Signs every delivery. Shown only now: when created and when rotated.",
    )

    class Meta(EndpointSerializer.Meta):
        fields = [*EndpointSerializer.Meta.fields, "secret"]
        read_only_fields = [*EndpointSerializer.Meta.read_only_fields, "secret"]


class DeliverySerializer(serializers.ModelSerializer):
    endpoint = serializers.UUIDField(source="endpoint_id", read_only=True)
    replay_of = serializers.UUIDField(source="replay_of_id", allow_null=True, read_only=True)

    class Meta:
        model = WebhookDelivery
        fields = [
            "id",
            "endpoint",
            "event",
            "subject_id",
            "status",
            "attempts",
            "response_status",
            "last_error",
            "job_id",
            "replay_of",
            "created_at",
            "updated_at",
            "delivered_at",
        ]
        read_only_fields = fields


class AttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = DeliveryAttempt
        fields = ["number", "started_at", "duration_ms", "response_status", "error"]
        read_only_fields = fields


class DeliveryDetailSerializer(DeliverySerializer):
    payload = serializers.JSONField(read_only=True, help_text="The JSON body sent.")
    log = AttemptSerializer(many=True, read_only=True, help_text="Each attempt, in order.")

    class Meta(DeliverySerializer.Meta):
        fields = [*DeliverySerializer.Meta.fields, "payload", "log"]
        read_only_fields = fields


class NewestFirst(CursorPagination):
    ordering = "-created_at"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


def _owner_only(request: Request, owner_id: int) -> None:
    if owner_id != request.user.pk:
        raise exceptions.PermissionDenied("Only the endpoint's owner may change it.")


@extend_schema(tags=["webhooks"])
class EndpointViewSet(viewsets.GenericViewSet):
    serializer_class = EndpointSerializer
    pagination_class = NewestFirst
    lookup_value_regex = "[0-9a-fA-F-]{32,36}"

    def get_queryset(self):
        return WebhookEndpoint.objects.visible_to(self.request.user).select_related("owner")

    def get_object(self) -> WebhookEndpoint:
        return get_object_or_404(self.get_queryset(), id=uuid_or_404(self.kwargs["pk"]))

    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(EndpointSerializer(page, many=True).data)

    @extend_schema(request=EndpointSerializer, responses={201: EndpointWithSecretSerializer})
    def create(self, request: Request) -> Response:
        incoming = EndpointSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        data = incoming.validated_data
        try:
            endpoint = services.register_endpoint(
                request.user,
                data["url"],
                data.get("events") or EVENTS,
                data.get("description", ""),
                data.get("active", True),
            )
        except services.TooManyEndpoints as exc:
            return conflict(str(exc), "too_many_endpoints", limit=exc.limit)
        return Response(EndpointWithSecretSerializer(endpoint).data, status=status.HTTP_201_CREATED)

    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(EndpointSerializer(self.get_object()).data)

    @extend_schema(request=EndpointSerializer, responses={200: EndpointSerializer})
    def partial_update(self, request: Request, pk: str) -> Response:
        endpoint = self.get_object()
        _owner_only(request, endpoint.owner_id)
        incoming = EndpointSerializer(endpoint, data=request.data, partial=True)
        incoming.is_valid(raise_exception=True)
        incoming.save()
        return Response(EndpointSerializer(endpoint).data)

    @extend_schema(responses={204: None})
    def destroy(self, request: Request, pk: str) -> Response:
        endpoint = self.get_object()
        _owner_only(request, endpoint.owner_id)
        endpoint.delete()
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=None, responses={200: EndpointWithSecretSerializer})
    @action(detail=True, methods=["post"], url_path="rotate-secret")
    def rotate_secret(self, request: Request, pk: str) -> Response:
        endpoint = self.get_object()
        _owner_only(request, endpoint.owner_id)
        services.rotate_secret(endpoint)
        return Response(EndpointWithSecretSerializer(endpoint).data)

    @extend_schema(responses={200: DeliverySerializer(many=True)})
    @action(detail=True, methods=["get"])
    def deliveries(self, request: Request, pk: str) -> Response:
        endpoint = self.get_object()
        page = self.paginate_queryset(WebhookDelivery.objects.filter(endpoint=endpoint))
        return self.get_paginated_response(DeliverySerializer(page, many=True).data)

    @extend_schema(request=None, responses={202: DeliverySerializer})
    @action(detail=True, methods=["post"])
    def test(self, request: Request, pk: str) -> Response:
        endpoint = self.get_object()
        _owner_only(request, endpoint.owner_id)
        delivery = services.ping(endpoint)
        return Response(DeliverySerializer(delivery).data, status=status.HTTP_202_ACCEPTED)


@extend_schema(tags=["webhooks"])
class DeliveryViewSet(viewsets.GenericViewSet):
    serializer_class = DeliveryDetailSerializer
    lookup_value_regex = "[0-9a-fA-F-]{32,36}"

    def get_queryset(self):
        return WebhookDelivery.objects.visible_to(self.request.user).select_related("endpoint")

    def get_object(self) -> WebhookDelivery:
        return get_object_or_404(self.get_queryset(), id=uuid_or_404(self.kwargs["pk"]))

    def retrieve(self, request: Request, pk: str) -> Response:
        delivery = self.get_object()
        return Response(DeliveryDetailSerializer(delivery).data)

    @extend_schema(request=None, responses={202: DeliverySerializer})
    @action(detail=True, methods=["post"])
    def replay(self, request: Request, pk: str) -> Response:
        delivery = self.get_object()
        if not services.may_replay(request.user, delivery):
            raise exceptions.PermissionDenied(
                "Replaying another user's delivery needs the "
                f"{services.REPLAY_PERMISSION} permission."
            )
        again = services.replay(delivery, by=request.user, via=Via.API)
        return Response(DeliverySerializer(again).data, status=status.HTTP_202_ACCEPTED)
