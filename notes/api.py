"""The notes HTTP API: pages, images and todo tasks, each scoped to its owner."""

from __future__ import annotations

from django.http import FileResponse, Http404, HttpRequest, HttpResponseRedirect
from django.http.response import HttpResponseBase
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, permissions, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.pagination import PageNumberPagination
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from jobs.engine import JobSerializer, enqueue, job_data

from . import services, uploads
from .models import Image, Page, Task


class PageSerializer(serializers.ModelSerializer):
    image_ids = serializers.PrimaryKeyRelatedField(source="images", many=True, read_only=True)

    class Meta:
        model = Page
        fields = [
            "id",
            "title",
            "content",
            "image_ids",
            "accepted_version",
            "applied_version",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["image_ids", "accepted_version", "applied_version"]


class PageUpdateSerializer(serializers.Serializer):
    title = serializers.CharField(max_length=200, required=False)
    content = serializers.CharField(allow_blank=True, max_length=1_000_000, required=False)

    def validate(self, data: dict) -> dict:
        if not data:
            raise serializers.ValidationError("Send content, title, or both.")
        return data


class PageSavedSerializer(serializers.Serializer):
    page_id = serializers.IntegerField()
    job = JobSerializer(help_text="The save job that applies the update.")


class NotesPagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


class OwnedMixin:
    pagination_class = NotesPagination

    def get_queryset(self):
        return self.queryset.filter(owner=self.request.user)


@extend_schema(tags=["notes"])
class PageViewSet(OwnedMixin, viewsets.ModelViewSet):
    """Create is immediate; an update returns 202 with the save job that applies it."""

    queryset = Page.objects.prefetch_related("images")
    serializer_class = PageSerializer

    def create(self, request: Request) -> Response:
        incoming = PageSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        page = services.create_page(
            request.user,
            incoming.validated_data["title"],
            incoming.validated_data.get("content", ""),
        )
        return Response(PageSerializer(page).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=PageUpdateSerializer, responses={202: PageSavedSerializer})
    def update(self, request: Request, *args, **kwargs) -> Response:
        page = self.get_object()
        incoming = PageUpdateSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        data = incoming.validated_data
        job = services.accept_save(page, data.get("content", page.content), data.get("title"))
        return Response(
            {"page_id": page.id, "job": job_data(job, request.user)},
            status=status.HTTP_202_ACCEPTED,
        )

    partial_update = update


class ImageSerializer(serializers.ModelSerializer):
    job_id = serializers.UUIDField(allow_null=True, read_only=True)
    url = serializers.CharField(read_only=True)  # empty until the image is stored

    class Meta:
        model = Image
        fields = [
            "id",
            "status",
            "original_name",
            "content_type",
            "size",
            "width",
            "height",
            "backend",
            "public_id",
            "url",
            "error",
            "orphaned_at",
            "job_id",
            "created_at",
        ]
        read_only_fields = fields


class CleanupSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=services.CLEANUP_KINDS, default="comprehensive")


IMAGE_CONTENT = {
    (200, content_type): OpenApiResponse(OpenApiTypes.BINARY, description="The image")
    for content_type in services.ALLOWED_FORMATS.values()
}


@extend_schema(tags=["notes"])
class ImageViewSet(
    OwnedMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    queryset = Image.objects.all()
    serializer_class = ImageSerializer
    parser_classes = [MultiPartParser, FormParser, JSONParser]

    def initialize_request(self, request: HttpRequest, *args, **kwargs) -> Request:
        drf_request = super().initialize_request(request, *args, **kwargs)
        if self.action == "create":
            uploads.limit_image_upload(request)
        return drf_request

    @extend_schema(
        request={
            "multipart/form-data": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary"}},
            }
        },
        responses={
            202: ImageSerializer,
            400: OpenApiResponse(description="Not an image we accept, or too many pixels"),
            411: OpenApiResponse(description="A body of unknown length (chunked)"),
            413: OpenApiResponse(description="Larger than NOTES_IMAGE_MAX_BYTES"),
        },
    )
    def create(self, request: Request) -> Response:
        uploads.refuse_body_of_unknown_length(request)
        upload = request.FILES.get("file")
        if upload is None:
            return _bad("file", "Send the image as the multipart field 'file'.")
        try:
            image = services.accept_upload(request.user, upload.name, upload.read())
        except services.InvalidUpload as exc:
            return _bad("file", str(exc))
        return Response(ImageSerializer(image).data, status=status.HTTP_202_ACCEPTED)

    def perform_destroy(self, image: Image) -> None:
        services.delete_from_store(image)
        image.delete()

    @extend_schema(
        responses={
            **IMAGE_CONTENT,
            302: OpenApiResponse(description="To a signed Cloudinary URL that expires"),
        }
    )
    @action(detail=True, methods=["get"])
    def content(self, request: Request, pk: str | None = None) -> HttpResponseBase:
        """The owner's image itself, or a redirect to a short-lived signed URL for it."""
        image = self.get_object()
        if services.on_cloudinary(image):
            response = HttpResponseRedirect(services.signed_url(image))
            response["Cache-Control"] = "private, no-store"
            return response
        try:
            response = FileResponse(image.file.open("rb"), content_type=image.content_type)
        except (ValueError, FileNotFoundError) as exc:  # no file, or it is gone
            raise Http404 from exc
        response["Content-Disposition"] = "inline"
        response["X-Content-Type-Options"] = "nosniff"
        response["Content-Security-Policy"] = "default-src 'none'; sandbox"
        response["Cache-Control"] = "private"
        return response

    @extend_schema(request=CleanupSerializer, responses={202: JobSerializer})
    @action(detail=False, methods=["post"], permission_classes=[permissions.IsAdminUser])
    def cleanup(self, request: Request) -> Response:
        """Staff: run the image clean-up now."""
        incoming = CleanupSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        job = enqueue(
            "notes.image_cleanup", {"type": incoming.validated_data["type"]}, owner=request.user
        ).job
        return Response(job_data(job, request.user), status=status.HTTP_202_ACCEPTED)


def _bad(field: str, message: str) -> Response:
    return Response(
        {"detail": f"Invalid input: {field}.", "code": "invalid", "errors": {field: [message]}},
        status=status.HTTP_400_BAD_REQUEST,
    )


class TaskSerializer(serializers.ModelSerializer):
    class Meta:
        model = Task
        fields = [
            "id",
            "title",
            "due_at",
            "done",
            "due_soon_sent_at",
            "overdue_sent_at",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["due_soon_sent_at", "overdue_sent_at"]


@extend_schema(tags=["notes"])
class TaskViewSet(OwnedMixin, viewsets.ModelViewSet):
    queryset = Task.objects.all()
    serializer_class = TaskSerializer

    def perform_create(self, serializer) -> None:
        serializer.save(owner=self.request.user)

    def perform_update(self, serializer) -> None:
        services.update_task(serializer.instance, **serializer.validated_data)
