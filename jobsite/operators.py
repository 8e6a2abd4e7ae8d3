"""Who may read the operators' endpoints (/metrics, /health/'s details): a staff
session, or a request carrying the endpoint's bearer token."""

from __future__ import annotations

import hmac

from django.http import HttpRequest


def bearer_token(request: HttpRequest) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def has_token(request: HttpRequest, expected: str) -> bool:
    """True when `expected` is configured and the request's bearer token is it."""
    given = bearer_token(request)
    return bool(expected and given) and hmac.compare_digest(given.encode(), expected.encode())


def is_staff_session(request: HttpRequest) -> bool:
    user = getattr(request, "user", None)
    return bool(user and user.is_authenticated and user.is_active and user.is_staff)


def is_operator(request: HttpRequest, token: str) -> bool:
    return is_staff_session(request) or has_token(request, token)
