"""Project-wide API pieces: the JSON error format and rate limits."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import Http404
from rest_framework import exceptions, status, throttling
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

log = logging.getLogger(__name__)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Every API error is JSON: {"detail": message, "code": code, "errors": {field: [...]}}."""
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


def _validation_summary(detail: Any) -> str:
    if isinstance(detail, dict):
        return "Invalid input: " + ", ".join(str(k) for k in detail) + "."
    return "Invalid input."


class FailOpenMixin:
    """Rate limits live in Redis; if Redis cannot be reached the request is let through
    rather than failing, so an outage of the cache never takes the API down with it."""

    def allow_request(self, request, view) -> bool:
        try:
            return super().allow_request(request, view)
        except Exception as exc:
            log.warning("Rate limit check skipped: %s", exc)
            return True


class UserRateThrottle(FailOpenMixin, throttling.UserRateThrottle):
    pass


class TokenRateThrottle(FailOpenMixin, throttling.AnonRateThrottle):
    """Per client address, on the token endpoints."""

    scope = "token"
