"""Signing in: the token endpoints (single-use refresh tokens, revocation) and the
answers to locked-out sign-ins on every login (django-axes counts the failures)."""

from __future__ import annotations

import math
from typing import Any

from axes.handlers.database import AxesDatabaseHandler
from axes.handlers.proxy import AxesProxyHandler
from axes.helpers import get_client_username, get_cool_off
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from drf_spectacular.contrib.rest_framework_simplejwt import SimpleJWTScheme
from rest_framework import exceptions
from rest_framework import serializers as drf_serializers
from rest_framework_simplejwt import exceptions as jwt_exceptions
from rest_framework_simplejwt import serializers, views
from rest_framework_simplejwt.settings import api_settings

from .auth import RefreshToken, check_password_claim, plain_error
from .throttles import TokenRateThrottle

LOCKOUT_MESSAGE = "Too many failed sign-in attempts. Try again later."


class JWTScheme(SimpleJWTScheme):
    """The OpenAPI security scheme of jobsite.auth.JWTAuthentication."""

    target_class = "jobsite.auth.JWTAuthentication"


# --- token endpoints -----------------------------------------------------------------


class TokenObtainPairSerializer(serializers.TokenObtainPairSerializer):
    token_class = RefreshToken
    access = drf_serializers.CharField(read_only=True)
    refresh = drf_serializers.CharField(read_only=True)

    def validate(self, attrs: dict[str, Any]) -> dict[str, str]:
        data = super().validate(attrs)
        if settings.AXES_ENABLED and settings.AXES_RESET_ON_SUCCESS:
            # A token is no session login, so axes' user_logged_in handler never runs.
            credentials = {"username": self.user.get_username()}
            handler = AxesProxyHandler.get_implementation()
            handler.reset_user_attempts(self.context["request"], credentials)
        return data


class TokenRefreshSerializer(serializers.TokenRefreshSerializer):
    """A refresh token works once, for an active user whose password is unchanged; the
    answer carries a new access token and a new refresh token."""

    token_class = RefreshToken

    def validate(self, attrs: dict[str, Any]) -> dict[str, str]:
        refresh = self.token_class(attrs["refresh"])  # signature, expiry, blacklist
        check_password_claim(refresh, self._active_owner(refresh))
        _, first_use = refresh.blacklist()
        if not first_use:  # another request used it a moment ago
            raise exceptions.AuthenticationFailed("Token is blacklisted", code="token_not_valid")
        access = refresh.access_token
        refresh.set_jti()
        refresh.set_exp()
        refresh.set_iat()
        refresh.outstand()
        return {"access": str(access), "refresh": str(refresh)}

    def _active_owner(self, refresh: RefreshToken) -> AbstractBaseUser:
        user_id = refresh.payload.get(api_settings.USER_ID_CLAIM)
        user = get_user_model().objects.filter(**{api_settings.USER_ID_FIELD: user_id}).first()
        if not api_settings.USER_AUTHENTICATION_RULE(user):
            raise exceptions.AuthenticationFailed(
                self.error_messages["no_active_account"], "no_active_account"
            )
        return user


class TokenRevokeSerializer(serializers.TokenBlacklistSerializer):
    token_class = RefreshToken


class PlainErrorsMixin:
    """Errors in the project's shape: simplejwt's carry a dict as their detail."""

    def handle_exception(self, exc: Exception):
        if isinstance(exc, jwt_exceptions.AuthenticationFailed):
            exc = plain_error(exc)
        return super().handle_exception(exc)


class TokenObtainView(PlainErrorsMixin, views.TokenObtainPairView):
    """Takes a username and password; answers with an access and a refresh token."""

    serializer_class = TokenObtainPairSerializer
    throttle_classes = [TokenRateThrottle]

    def get_serializer_context(self) -> dict[str, Any]:
        # authenticate() gets Django's request rather than DRF's wrapper: axes marks a
        # lockout on it, where axes' middleware turns it into the 429 answer.
        return {**super().get_serializer_context(), "request": self.request._request}


class TokenRefreshView(PlainErrorsMixin, views.TokenRefreshView):
    """Takes a refresh token, which is then used up; answers with a new pair."""

    serializer_class = TokenRefreshSerializer
    throttle_classes = [TokenRateThrottle]


class TokenRevokeView(PlainErrorsMixin, views.TokenBlacklistView):
    """Takes a refresh token and revokes it (signing out). Holding the token is the
    proof: no other sign-in is needed."""

    serializer_class = TokenRevokeSerializer
    throttle_classes = [TokenRateThrottle]


# --- login lockouts (django-axes) ------------------------------------------------------


class LoginAttemptHandler(AxesDatabaseHandler):
    """axes' database handler, except that a successful sign-in clears only the failures
    of that username from that address. (axes clears every failure of the address too,
    so an attacker signing in to their own account would wipe their guesses at others.)"""

    def reset_user_attempts(self, request: HttpRequest, credentials: dict | None = None) -> int:
        attempts = AccessAttempt.objects.filter(
            username=get_client_username(request, credentials),
            ip_address=request.axes_ip_address,
        )
        count, _ = attempts.delete()
        return count


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None = None, credentials=None
) -> HttpResponse:
    """The 429 answer to a locked-out sign-in: JSON for the API, a page for the forms."""
    cool_off = get_cool_off(request)
    seconds = math.ceil(cool_off.total_seconds())
    if wants_json(request):
        response = JsonResponse({"detail": LOCKOUT_MESSAGE, "code": "locked_out"}, status=429)
    else:
        context = {"cool_off_minutes": math.ceil(seconds / 60)}
        response = render(request, "registration/locked_out.html", context, status=429)
    response["Retry-After"] = str(seconds)
    return response


def wants_json(request: HttpRequest) -> bool:
    accept = request.headers.get("Accept", "")
    return request.path.startswith("/api/") or ("json" in accept and "html" not in accept)
