"""API tokens: bound to the password their user had when they were issued, checked on
every request by the authentication class. (Imported by DRF's settings: nothing here may
import DRF's views.)"""

from __future__ import annotations

from django.contrib.auth.base_user import AbstractBaseUser
from django.utils.crypto import constant_time_compare, salted_hmac
from rest_framework import exceptions
from rest_framework_simplejwt import authentication, tokens
from rest_framework_simplejwt import exceptions as jwt_exceptions
from rest_framework_simplejwt.settings import api_settings
from rest_framework_simplejwt.token_blacklist.models import OutstandingToken
from rest_framework_simplejwt.utils import datetime_from_epoch

# Every token carries a fingerprint of the password its user had when it was issued.
PASSWORD_CLAIM = "pwd"


def password_fingerprint(user: AbstractBaseUser) -> str:
    """Changes whenever the user's password does; reveals nothing about it (a keyed hash
    of the stored password hash, shortened)."""
    return salted_hmac("jobsite.auth.password-fingerprint", user.password).hexdigest()[:20]


# --- tokens --------------------------------------------------------------------------


class AccessToken(tokens.AccessToken):
    @classmethod
    def for_user(cls, user: AbstractBaseUser) -> AccessToken:
        token = super().for_user(user)
        token[PASSWORD_CLAIM] = password_fingerprint(user)
        return token


class RefreshToken(tokens.RefreshToken):
    access_token_class = AccessToken  # which copies the password claim

    @classmethod
    def for_user(cls, user: AbstractBaseUser) -> RefreshToken:
        # simplejwt's BlacklistMixin would record the token before the claim is in it:
        # make the token, add the claim, then record it as outstanding.
        token = super(tokens.BlacklistMixin, cls).for_user(user)
        token[PASSWORD_CLAIM] = password_fingerprint(user)
        OutstandingToken.objects.create(
            user=user,
            jti=token[api_settings.JTI_CLAIM],
            token=str(token),
            created_at=token.current_time,
            expires_at=datetime_from_epoch(token["exp"]),
        )
        return token


def check_password_claim(token: tokens.Token, user: AbstractBaseUser) -> None:
    """Refuse a token issued before the user's password last changed."""
    if not constant_time_compare(token.get(PASSWORD_CLAIM, ""), password_fingerprint(user)):
        raise exceptions.AuthenticationFailed(
            "The token was issued before the password changed.", code="token_revoked"
        )


def plain_error(exc: jwt_exceptions.AuthenticationFailed) -> exceptions.AuthenticationFailed:
    """simplejwt's error, whose detail is a dict, as one with a message and a code."""
    return exceptions.AuthenticationFailed(exc.detail["detail"], code=exc.detail["code"])


class JWTAuthentication(authentication.JWTAuthentication):
    """simplejwt's bearer tokens, refused once the user's password has changed. Compares
    with the user simplejwt loads anyway: no query of its own."""

    def authenticate(self, request):
        try:
            return super().authenticate(request)
        except jwt_exceptions.AuthenticationFailed as exc:
            raise plain_error(exc) from exc

    def get_user(self, validated_token: tokens.Token) -> AbstractBaseUser:
        user = super().get_user(validated_token)
        check_password_claim(validated_token, user)
        return user
