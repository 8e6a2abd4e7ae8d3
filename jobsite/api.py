"""Project-wide API pieces: the JSON error format."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.defaults import page_not_found
from rest_framework import exceptions, status
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
