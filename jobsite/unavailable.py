"""While the database is down (restarting, failing over, unreachable), every request
gets a quick 503 that says so: JSON under /api/, a plain page elsewhere, both with a
Retry-After. Not a 500 page and not a traceback in the log for each request.

A database error can surface anywhere in a request: in a view, in DRF's authentication
(the JWT's user lookup), in a middleware (the session saved on the way out). DRF's
exception handler answers for the API views (`jobsite.api.exception_handler`);
everything else ends in Django's 500 handler, `server_error` here, which Django calls
while the exception is still being handled. (With DJANGO_DEBUG on, Django shows its
debug page there instead; the API views still answer 503 JSON.)
"""

from __future__ import annotations

import logging
import sys

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
DETAIL = "The database is unavailable; try again in a few seconds."
PAGE = (
    "<!doctype html><title>Service unavailable</title>"
    "<h1>Service unavailable</h1><p>The database is unavailable; "
    "try again in a few seconds.</p>"
)


def is_database_unavailable(exc: BaseException | None) -> bool:
    """A lost or refused connection, or a server shutting down or starting up."""
    return isinstance(exc, OperationalError | InterfaceError)


def unavailable_response(request: HttpRequest, exc: BaseException) -> HttpResponse:
    log.warning("Database unavailable for %s %s: %s", request.method, request.path, exc)
    if request.path.startswith("/api/"):
        response: HttpResponse = JsonResponse(
            {"detail": DETAIL, "code": "database_unavailable"}, status=503
        )
    else:
        response = HttpResponse(PAGE, status=503, content_type="text/html; charset=utf-8")
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    # Logged once above, as a warning: Django would log each one again as an error.
    response._has_been_logged = True
    return response


def server_error(request: HttpRequest) -> HttpResponse:
    """Django's 500 handler: a 503 when the exception being handled is the database's."""
    exc = sys.exc_info()[1]
    if is_database_unavailable(exc):
        return unavailable_response(request, exc)
    return defaults.server_error(request)
