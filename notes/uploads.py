"""The image size limit, enforced while an upload streams in rather than after it arrived."""

from __future__ import annotations

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.http import HttpRequest
from rest_framework import status
from rest_framework.exceptions import APIException

# Room for the multipart boundaries, part headers and small form fields around the image.
MULTIPART_ALLOWANCE = 64 * 1024


class UploadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "request_too_large"

    def __init__(self) -> None:
        limit = settings.NOTES_IMAGE_MAX_BYTES
        super().__init__(f"The image is larger than the limit of {limit:,} bytes.")


class LengthRequired(APIException):
    status_code = status.HTTP_411_LENGTH_REQUIRED
    default_code = "length_required"

    def __init__(self) -> None:
        limit = settings.NOTES_IMAGE_MAX_BYTES
        super().__init__(
            "Send the upload with a Content-Length header; bodies of unknown length are"
            f" not accepted. The image limit is {limit:,} bytes."
        )


class ImageSizeLimit(FileUploadHandler):
    """Refuses a body whose Content-Length is over the limit before reading any of it, and
    stops reading once the file bytes received pass the limit (a body may declare less
    than the file parts it carries)."""

    def __init__(self, request: HttpRequest | None = None):
        super().__init__(request)
        self.limit = settings.NOTES_IMAGE_MAX_BYTES
        self.received = 0
        self.exceeded = False

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        if content_length > self.limit + MULTIPART_ALLOWANCE:
            raise UploadTooLarge()
        return None

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        self.received += len(raw_data)
        if self.received > self.limit:
            self.exceeded = True
            # Django closes the files begun so far and reads no more of the body.
            raise StopUpload(connection_reset=True)
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None  # the handlers after this one build the file

    def upload_complete(self) -> None:
        if self.exceeded:
            raise UploadTooLarge()


def limit_image_upload(request: HttpRequest) -> None:
    """Put the size limit in front of the request's upload handlers; call before parsing."""
    request.upload_handlers.insert(0, ImageSizeLimit(request))


def refuse_body_of_unknown_length(request: HttpRequest) -> None:
    """Django reads no more than Content-Length bytes of a body, so a chunked upload would
    arrive empty: say so instead."""
    if not request.META.get("CONTENT_LENGTH") and request.META.get("HTTP_TRANSFER_ENCODING"):
        raise LengthRequired()
