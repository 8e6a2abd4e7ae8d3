"""Project-wide API pieces: the JSON error format, and what every app's API shares (ids
in URLs, conflicts, ETags for polled statuses)."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.defaults import page_not_found
from rest_framework import exceptions, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from .unavailable import is_database_unavailable, unavailable_response


def exception_handler(exc: Exception, context: dict[str, Any]) -> HttpResponse | None:
    """Every API error is JSON: {"detail": message, "code": code, "errors": {field: [...]}}."""
    if is_database_unavailable(exc):
        return unavailable_response(context["request"], exc)
    if isinstance(exc, RequestDataTooBig):
        return Response(
            {"detail": "Request body is too large.", "code": "request_too_large"},
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        response.data = {
            "detail": _validation_summary(exc.detail),
            "code": "invalid",
            "errors": exc.detail
            if isinstance(exc.detail, dict)
            else {"non_field_errors": exc.detail},
        }
    elif isinstance(exc, exceptions.APIException):
        detail = (
            response.data.get("detail", str(exc)) if isinstance(response.data, dict) else exc.detail
        )
        response.data = {
            "detail": str(detail),
            "code": exc.get_codes() if isinstance(exc.get_codes(), str) else "error",
        }
    return response


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """The 404 for URLs no pattern matches: JSON under /api/, the HTML page elsewhere."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Not found.", "code": "not_found"}, status=404)
    return page_not_found(request, exception)


def _validation_summary(detail: Any) -> str:
    if isinstance(detail, dict):
        return "Invalid input: " + ", ".join(str(k) for k in detail) + "."
    return "Invalid input."


def uuid_or_404(value: str) -> uuid.UUID:
    """The UUID in a URL, or a 404 (not a 500) when it is not one."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise Http404 from None


def conflict(detail: str, code: str, **fields: Any) -> Response:
    """A 409: the object's state does not allow the action; `fields` say which object
    and in what state."""
    return Response({"detail": detail, "code": code, **fields}, status=status.HTTP_409_CONFLICT)


# How finely a change of a queued job's estimated start changes its ETag (seconds).
ESTIMATE_STEP = 10


def etag_for(row: dict) -> str:
    """The ETag of a polled status (status, progress, message, updated_at, and a queued
    job's place in line: its count and estimate change while the row does not).

    The estimate counts in with its start time to ESTIMATE_STEP seconds: the wait it
    shows shrinks every second while the start it points at holds still, and a client
    waiting for a change (`?wait=`) must not be answered every second for nothing."""
    raw = f"{row['status']}|{row['progress']}|{row['message']}|{row['updated_at'].isoformat()}"
    if place := row.get("line"):
        start = place["estimated_start_at"]
        step = int(start.timestamp() // ESTIMATE_STEP) if start else None
        raw += f"|{place['ahead']}|{place['ahead_capped']}|{step}"
    return '"' + hashlib.blake2b(raw.encode(), digest_size=12).hexdigest() + '"'


def if_none_match(request: Request) -> set[str]:
    header = request.headers.get("If-None-Match", "")
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}
