"""Built-in job types: e-mail and system jobs."""

from __future__ import annotations

import time
from datetime import timedelta

from django.conf import settings
from django.core.mail import EmailMessage
from django.utils import timezone
from rest_framework import serializers

from . import history, queries, retention
from .context import JobContext
from .registry import Exposure, Retention, job_type


class SendEmailPayload(serializers.Serializer):
    to = serializers.ListField(
        child=serializers.EmailField(), min_length=1, max_length=50, help_text="Recipients"
    )
    subject = serializers.CharField(max_length=200)
    body = serializers.CharField(max_length=100_000)

    def to_internal_value(self, data):
        if isinstance(data, dict) and isinstance(data.get("to"), str):
            data = {**data, "to": [data["to"]]}
        return super().to_internal_value(data)


def send_email_once(ctx: JobContext, *, to: list[str], subject: str, body: str) -> dict:
    """Send through Django's e-mail backend, at most once per job."""
    with ctx.effect("email") as ours:
        if not ours:
            return {"sent": False, "reason": "already sent by an earlier attempt", "to": to}
        EmailMessage(subject, body, settings.DEFAULT_FROM_EMAIL, to).send()
    return {"sent": True, "to": to}


@job_type(
    "email.send",
    serializer=SendEmailPayload,
    queue="emails",
    max_attempts=5,
    backoff_base=5,
    soft_time_limit=60,
    description="Send one e-mail through the configured e-mail backend.",
    # To any address: not for non-staff, who get mail through the apps' own features.
    exposure=Exposure.STAFF,
)
def send_email(ctx: JobContext) -> dict:
    p = ctx.payload
    return send_email_once(ctx, to=p["to"], subject=p["subject"], body=p["body"])


class WelcomePayload(serializers.Serializer):
    email = serializers.EmailField()
    name = serializers.CharField(max_length=200)
    message = serializers.CharField(max_length=10_000, required=False, allow_blank=True)


@job_type(
    "email.welcome",
    serializer=WelcomePayload,
    queue="emails",
    max_attempts=5,
    backoff_base=5,
    soft_time_limit=60,
    description="Send the welcome e-mail to a new user.",
)
def send_welcome(ctx: JobContext) -> dict:
    p = ctx.payload
    body = f"Hello {p['name']},\n\nWelcome to Jobsite."
    if p.get("message"):
        body += f"\n\n{p['message']}"
    return send_email_once(ctx, to=[p["email"]], subject="Welcome to Jobsite", body=body)


@job_type(
    "system.noop",
    soft_time_limit=30,
    description="Does nothing; for checks and benchmarks.",
    exposure=Exposure.USERS,
)
def noop(ctx: JobContext) -> None:
    return None


class SleepPayload(serializers.Serializer):
    seconds = serializers.FloatField(min_value=0, max_value=3600)
    fail_times = serializers.IntegerField(
        min_value=0,
        default=0,
        help_text="Fail this many attempts before succeeding (for retry demos).",
    )
    permanent = serializers.BooleanField(
        default=False, help_text="Fail with a permanent error instead of sleeping."
    )
    checkpoints = serializers.BooleanField(
        required=False,
        help_text="False: sleep in one go, with no progress reports or cancellation checks.",
    )


def sleep_user_limits(payload: dict) -> dict[str, list[str]]:
    """Non-staff callers sleep at most JOBS_USER_SLEEP_MAX_SECONDS."""
    limit = settings.JOBS_USER_SLEEP_MAX_SECONDS
    if payload["seconds"] > limit:
        return {"seconds": [f"Ensure this value is less than or equal to {limit:g}."]}
    return {}


class DemoFailure(Exception):
    pass


@job_type(
    "system.sleep",
    serializer=SleepPayload,
    backoff_base=1,
    soft_time_limit=3700,
    description="Sleep for a while, reporting progress and honouring cancellation.",
    exposure=Exposure.USERS,
    # A sleep without checkpoints holds a worker process with no way to cancel it.
    staff_fields=frozenset({"checkpoints"}),
    user_limits=sleep_user_limits,
)
def sleep(ctx: JobContext) -> dict:
    from .errors import PermanentError

    seconds = ctx.payload["seconds"]
    if ctx.payload.get("permanent"):
        raise PermanentError("Asked to fail permanently")
    if ctx.attempt <= ctx.payload.get("fail_times", 0):
        raise DemoFailure(f"Asked to fail attempt {ctx.attempt}")
    if ctx.payload.get("checkpoints") is False:
        time.sleep(seconds)
        return {"slept": seconds, "attempt": ctx.attempt}
    steps = max(1, min(100, int(seconds * 10)))
    for step in range(1, steps + 1):
        time.sleep(seconds / steps)
        ctx.progress(100 * step / steps, f"Slept {seconds * step / steps:.1f}s of {seconds:g}s")
    return {"slept": seconds, "attempt": ctx.attempt}


@job_type(
    "system.purge",
    queue="maintenance",
    soft_time_limit=600,
    retention=Retention(succeeded_for=timedelta(days=2), succeeded_max=100),
    description="Delete finished jobs past their type's retention policy, then the old "
    "settled batches left without jobs.",
)
def purge(ctx: JobContext) -> dict:
    deleted = retention.purge_finished()
    return {
        "deleted": deleted,
        "total": sum(deleted.values()),
        "batches": retention.purge_settled_batches(),
        # The history charts' rolled-up minutes and quarter hours older than their longest window.
        "history_rollups": history.purge_rollups(),
    }


@job_type(
    "system.flush_expired_tokens",
    queue="maintenance",
    soft_time_limit=600,
    retention=Retention(succeeded_for=timedelta(days=7), succeeded_max=30),
    description="Delete expired refresh tokens and their blacklist entries.",
)
def flush_expired_tokens(ctx: JobContext) -> dict:
    # Every sign-in and every refresh records a refresh token, so that it can be
    # blacklisted; once expired it is refused anyway and its row serves nothing.
    from rest_framework_simplejwt.token_blacklist.models import OutstandingToken

    deleted, by_model = OutstandingToken.objects.filter(expires_at__lte=timezone.now()).delete()
    return {"tokens": by_model.get("token_blacklist.OutstandingToken", 0), "rows": deleted}


class DigestPayload(serializers.Serializer):
    hours = serializers.IntegerField(min_value=1, max_value=24 * 7, default=24)


@job_type(
    "email.digest",
    serializer=DigestPayload,
    queue="emails",
    max_attempts=3,
    backoff_base=30,
    soft_time_limit=600,
    description="E-mail each user a summary of their jobs over the last hours.",
)
def send_digests(ctx: JobContext) -> dict:
    hours = ctx.payload["hours"]
    digests = queries.job_digests(timezone.now() - timedelta(hours=hours))
    sent = 0
    for i, digest in enumerate(digests, start=1):
        with ctx.effect(f"digest:{digest.user_id}") as ours:
            if ours:
                EmailMessage(
                    f"Your jobs in the last {hours} hours",
                    digest.text(hours),
                    settings.DEFAULT_FROM_EMAIL,
                    [digest.email],
                ).send()
                sent += 1
        ctx.progress(100 * i / len(digests), f"{i} of {len(digests)} digests")
    return {"users": len(digests), "sent": sent}
