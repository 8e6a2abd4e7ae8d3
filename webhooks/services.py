"""The webhook rules: registering endpoints, turning job and batch ends into deliveries
(each exactly once per endpoint), sending a delivery, replaying one."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from django.db.models import Exists, F
from django.utils import timezone

from jobs.engine import (
    FINISHED_STATUSES,
    Batch,
    BatchState,
    CaughtUp,
    Job,
    JobContext,
    JobSpec,
    PermanentError,
    Status,
    audit_record,
    batch_summary,
    ended_since,
    enqueue_many,
    job_data,
    one_line_error,
)

from . import addresses, sending, signing
from .models import (
    PING,
    DeliveryAttempt,
    DeliveryStatus,
    Event,
    WebhookDelivery,
    WebhookEndpoint,
    new_secret,
)

log = logging.getLogger(__name__)

DELIVER = "webhooks.deliver"
JOB_EVENTS = {f"job.{status}" for status in FINISHED_STATUSES}
# 4xx answers worth trying again: the receiver timed out, was not ready, or asks to wait.
RETRIED_CLIENT_ERRORS = {408, 425, 429}
REPLAY_PERMISSION = "webhooks.replay_webhookdelivery"


class TooManyEndpoints(Exception):
    def __init__(self, limit: int):
        super().__init__(f"At most {limit} webhook endpoints per user; delete one first.")
        self.limit = limit


class DeliveryFailed(Exception):
    """The receiver did not take the delivery; the engine tries again later."""


# --- endpoints ---------------------------------------------------------------------------


def check_url(url: str) -> str:
    """`url` if webhooks may be sent there; raises addresses.AddressRefused."""
    addresses.check_url(url)
    return url


def register_endpoint(
    owner, url: str, events: list[str], description: str = "", active: bool = True
) -> WebhookEndpoint:
    """A new endpoint of `owner`'s, within their cap (TooManyEndpoints)."""
    User = get_user_model()
    with transaction.atomic():
        # Held until commit, so two creates at once cannot both pass the cap.
        User.objects.select_for_update().filter(pk=owner.pk).first()
        limit = settings.WEBHOOKS_MAX_ENDPOINTS_PER_USER
        if WebhookEndpoint.objects.filter(owner=owner).count() >= limit:
            raise TooManyEndpoints(limit)
        return WebhookEndpoint.objects.create(
            owner=owner, url=url, events=events, description=description, active=active
        )


def rotate_secret(endpoint: WebhookEndpoint) -> WebhookEndpoint:
    endpoint.secret = new_secret()
    endpoint.save(update_fields=["secret", "updated_at"])
    return endpoint


# --- turning ends into deliveries ---------------------------------------------------------


@dataclass(frozen=True)
class Offer:
    """An event about a subject, for the endpoints of its owner that subscribe to it."""

    event: str
    subject_id: str
    payload: dict[str, Any]


def event_payload(event: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"event": event, "created_at": timezone.now().isoformat(), "data": data}


def job_offer(job: Job) -> Offer | None:
    event = f"job.{job.status}"
    if job.type == DELIVER or job.owner_id is None or event not in JOB_EVENTS:
        return None  # no webhook about webhooks, nor about the application's own jobs
    return Offer(event, str(job.id), event_payload(event, {"job": job_data(job, job.owner)}))


def jobs_ended(jobs: list[Job]) -> None:
    """The follow-up of job ends: deliveries for the owners' subscribed endpoints (one
    indexed query when none of the owners has an active endpoint), and the deliveries
    whose own job ended without settling them."""
    settle_unsent([job.id for job in jobs if job.type == DELIVER and job.status in UNSENT_ENDS])
    candidates = [job for job in jobs if job.owner_id is not None and job.type != DELIVER]
    if not candidates:
        return
    endpoints = _active_endpoints({job.owner_id for job in candidates})
    if not endpoints:
        return
    owners = {e.owner_id for e in endpoints}
    # As stored: the instances the engine offers may lack the end's result and times.
    ended = Job.objects.filter(
        id__in=[job.id for job in candidates if job.owner_id in owners]
    ).select_related("owner")
    offers = {}
    for job in ended:
        if job.status in FINISHED_STATUSES:
            offer = job_offer(job)
            if offer is not None:
                offers[job.owner_id] = [*offers.get(job.owner_id, []), offer]
    create_deliveries(
        (endpoint, offer) for endpoint in endpoints for offer in offers.get(endpoint.owner_id, [])
    )


CATCH_UP_KEY = "webhooks:catch-up"


def catch_up_now_and_then(now: datetime, since: datetime | None = None) -> CaughtUp:
    """`catch_up`, at most once per WEBHOOKS_CATCH_UP_EVERY seconds across all sweepers:
    the sweeper runs every few seconds. Without the cache, every sweep catches up. A
    pass skipped leaves the follow-up's mark where it was (jobs/followups.py)."""
    try:
        due = cache.add(CATCH_UP_KEY, now.isoformat(), timeout=settings.WEBHOOKS_CATCH_UP_EVERY)
    except Exception:
        due = True
    return CaughtUp(catch_up(now, since)) if due else CaughtUp(0, complete=False)


def catch_up(now: datetime, since: datetime | None = None) -> int:
    """What a crash between an end and its follow-up skipped, for the jobs and batches
    that ended since `since` (the follow-up's mark), and never before
    WEBHOOKS_CATCH_UP_MINUTES ago: the deliveries not created, and those whose job ended
    without settling them. Returns how many it created or settled."""
    window = now - timedelta(minutes=settings.WEBHOOKS_CATCH_UP_MINUTES)
    since = window if since is None else max(since, window)
    unsent = (
        Job.objects.filter(type=DELIVER, status__in=UNSENT_ENDS, finished_at__gte=since)
        .order_by()
        .values_list("id", flat=True)
    )
    settled = settle_unsent(list(unsent))
    return settled + _create_missed(since)


def _create_missed(since: datetime) -> int:
    owner_ids = set(
        WebhookEndpoint.objects.filter(active=True)
        .order_by()
        .values_list("owner_id", flat=True)
        .distinct()
    )
    if not owner_ids:
        return 0
    endpoints = _active_endpoints(owner_ids)
    missing = _missed_job_ends(owner_ids, since, endpoints)
    missing += _missed_batch_ends(owner_ids, since, endpoints)
    return len(create_deliveries(missing))


TOLD_SLICE = 500


def _told(subject_ids: list[str]) -> set[tuple[Any, str]]:
    """(endpoint id, subject id) of the original deliveries made for `subject_ids`."""
    told: set[tuple[Any, str]] = set()
    # In slices the planner reads through webhookdelivery_subject, however many ended.
    for start in range(0, len(subject_ids), TOLD_SLICE):
        told.update(
            WebhookDelivery.objects.filter(
                subject_id__in=subject_ids[start : start + TOLD_SLICE], replay_of__isnull=True
            )
            .order_by()
            .values_list("endpoint_id", "subject_id")
        )
    return told


def _missed_job_ends(
    owner_ids: set[int], since: datetime, endpoints: list[WebhookEndpoint]
) -> list[tuple[WebhookEndpoint, Offer]]:
    # Through the retention indexes: the ends since `since`; the rows of those missed
    # only are read.
    ended = [
        row
        for ends in ended_since(since, exclude_types=(DELIVER,))
        for row in Job.objects.filter(ends, owner_id__in=owner_ids)
        .order_by()
        .values_list("id", "owner_id", "finished_at")
    ]
    done = _told([str(job_id) for job_id, _owner, _at in ended])
    missed: dict[Any, list[WebhookEndpoint]] = {}
    for job_id, owner_id, finished_at in ended:
        for endpoint in endpoints:
            if (
                endpoint.owner_id == owner_id
                # An endpoint registered after the end was not there to be told.
                and endpoint.created_at <= finished_at
                and (endpoint.id, str(job_id)) not in done
            ):
                missed.setdefault(job_id, []).append(endpoint)
    if not missed:
        return []
    missing = []
    jobs = Job.objects.filter(id__in=list(missed)).select_related("owner")
    for job in jobs.prefetch_related("dependencies").order_by():
        offer = job_offer(job)
        if offer is not None:
            missing += [(endpoint, offer) for endpoint in missed[job.id]]
    return missing


def _missed_batch_ends(
    owner_ids: set[int], since: datetime, endpoints: list[WebhookEndpoint]
) -> list[tuple[WebhookEndpoint, Offer]]:
    # Through batch_finished: the batches settled since `since`.
    finished = list(
        Batch.objects.filter(owner_id__in=owner_ids, finished_at__gte=since)
        .exclude(state=BatchState.RUNNING)
        .order_by()
    )
    done = _told([str(batch.id) for batch in finished])
    return [
        (endpoint, batch_offer(batch))
        for batch in finished
        for endpoint in endpoints
        if endpoint.owner_id == batch.owner_id
        and endpoint.created_at <= batch.finished_at
        and (endpoint.id, str(batch.id)) not in done
    ]


def batch_offer(batch: Batch) -> Offer:
    data = json.loads(json.dumps(batch_summary(batch), cls=DjangoJSONEncoder))
    event = Event.BATCH_FINISHED.value
    return Offer(event, str(batch.id), event_payload(event, {"batch": data}))


def batch_settled(sender, batch: Batch, **kwargs) -> None:
    """The receiver of the engine's `batch_finished`: `batch.finished` for the owner's
    subscribed endpoints (the sweeper's catch-up, should this be lost to a crash)."""
    if batch.owner_id is None:
        return
    endpoints = _active_endpoints({batch.owner_id})
    if endpoints:
        create_deliveries((endpoint, batch_offer(batch)) for endpoint in endpoints)


def _active_endpoints(owner_ids: set[int]) -> list[WebhookEndpoint]:
    return list(WebhookEndpoint.objects.filter(owner_id__in=owner_ids, active=True))


def create_deliveries(
    offers: Iterable[tuple[WebhookEndpoint, Offer]],
) -> list[WebhookDelivery]:
    """A delivery and its job for each (endpoint, offer) the endpoint subscribes to and
    has not had yet, in one transaction; returns the new deliveries."""
    created = []
    with transaction.atomic():
        for endpoint, offer in offers:
            if not endpoint.subscribes_to(offer.event):
                continue
            delivery = WebhookDelivery(
                endpoint=endpoint,
                event=offer.event,
                subject_id=offer.subject_id,
                payload=offer.payload,
            )
            try:
                with transaction.atomic():
                    delivery.save(force_insert=True)
            except IntegrityError:
                continue  # offered before: the first offer made it
            created.append(delivery)
        _enqueue_deliveries(created)
    return created


def _enqueue_deliveries(deliveries: list[WebhookDelivery]) -> None:
    if not deliveries:
        return
    outcomes = enqueue_many([JobSpec(DELIVER, {"delivery_id": str(d.id)}) for d in deliveries])
    for delivery, outcome in zip(deliveries, outcomes, strict=True):
        delivery.job_id = outcome.job.id
    WebhookDelivery.objects.bulk_update(deliveries, ["job_id"])


def may_replay(user, delivery: WebhookDelivery) -> bool:
    """Owners replay their own deliveries; anyone else (staff, who see every delivery)
    needs the permission the admin's replay action takes."""
    if user is None or user.pk is None:
        return False
    return delivery.endpoint.owner_id == user.pk or user.has_perm(REPLAY_PERMISSION)


def replay(delivery: WebhookDelivery, *, by=None, via: str | None = None) -> WebhookDelivery:
    """A new delivery of `delivery`'s body, signed afresh when it is sent. With `via`
    (the door the user came through), recorded with `by` in the audit log."""
    with transaction.atomic():
        again = WebhookDelivery.objects.create(
            endpoint=delivery.endpoint,
            event=delivery.event,
            subject_id=delivery.subject_id,
            payload=delivery.payload,
            replay_of=delivery,
        )
        _enqueue_deliveries([again])
        if via is not None:
            audit_record(
                by, "replay", "webhook_delivery", delivery.id, via=via, replay=str(again.id)
            )
    return again


def ping(endpoint: WebhookEndpoint) -> WebhookDelivery:
    """A `ping` delivery to `endpoint`, whatever events it subscribes to."""
    subject = str(uuid.uuid4())
    payload = event_payload(PING, {"endpoint": str(endpoint.id)})
    with transaction.atomic():
        delivery = WebhookDelivery.objects.create(
            endpoint=endpoint, event=PING, subject_id=subject, payload=payload
        )
        _enqueue_deliveries([delivery])
    return delivery


# --- sending -------------------------------------------------------------------------------


def deliver(ctx: JobContext) -> dict[str, Any]:
    """Send the delivery once: delivered, or raise to be tried again (DeliveryFailed), to
    wait as the receiver asked (a snooze), or to fail at once (PermanentError)."""
    delivery = (
        WebhookDelivery.objects.select_related("endpoint")
        .filter(id=ctx.payload["delivery_id"])
        .first()
    )
    if delivery is None:
        return {"delivered": False, "reason": "the delivery was deleted"}
    if delivery.status == DeliveryStatus.DELIVERED:
        return {"delivered": True, "status": delivery.response_status}
    endpoint = delivery.endpoint
    if not endpoint.active:
        _give_up(delivery, "The endpoint is inactive.")
        return {"delivered": False, "reason": "the endpoint is inactive"}
    started_at, started = timezone.now(), time.monotonic()
    try:
        target = addresses.check_url(endpoint.url)
    except addresses.AddressRefused as exc:
        _record(delivery, started_at, started, None, str(exc), final=True)
        raise PermanentError(str(exc)) from None
    body = signing.body_of(delivery.payload)
    headers = {
        "Content-Type": "application/json",
        "Jobsite-Event": delivery.event,
        "Jobsite-Delivery": str(delivery.id),
        signing.SIGNATURE_HEADER: signing.signature(endpoint.secret, body),
    }
    last_attempt = ctx.attempt >= ctx.job.max_attempts
    try:
        answer = sending.post(target, body, headers)
    except Exception as exc:
        # No answer (TLS errors included) is tried again: a receiver's certificate is
        # fixed or renewed like a server is restarted, and nothing was sent.
        error = sending.no_answer(exc, target)
        _record(delivery, started_at, started, None, error, final=last_attempt)
        raise DeliveryFailed(error) from None
    return _judge(ctx, delivery, answer, started_at, started, last_attempt)


def _judge(ctx, delivery, answer: sending.Answer, started_at, started, last_attempt) -> dict:
    status = answer.status
    if answer.ok:
        _record(delivery, started_at, started, status, "", delivered=True)
        return {"delivered": True, "status": status}
    error = f"The receiver answered {status}: {answer.body[:200]}".strip()
    if status in (429, 503) and answer.retry_after is not None:
        _record(delivery, started_at, started, status, error)
        wait = min(max(answer.retry_after, 1.0), settings.WEBHOOKS_RETRY_AFTER_MAX)
        ctx.snooze(wait, f"The receiver answered {status} with Retry-After")
    if 400 <= status < 500 and status not in RETRIED_CLIENT_ERRORS:
        _record(delivery, started_at, started, status, error, final=True)
        raise PermanentError(error)
    _record(delivery, started_at, started, status, error, final=last_attempt)
    raise DeliveryFailed(error)


def _record(
    delivery: WebhookDelivery,
    started_at: datetime,
    started: float,
    response_status: int | None,
    error: str,
    *,
    delivered: bool = False,
    final: bool = False,
) -> None:
    """Log the attempt on the delivery, and its new status (pending while it may still
    be tried again)."""
    status = DeliveryStatus.PENDING
    if delivered:
        status = DeliveryStatus.DELIVERED
    elif final:
        status = DeliveryStatus.FAILED
    with transaction.atomic():
        WebhookDelivery.objects.filter(id=delivery.id).update(
            attempts=F("attempts") + 1,
            response_status=response_status,
            last_error=error[:500],
            status=status,
            delivered_at=timezone.now() if delivered else None,
            updated_at=timezone.now(),
        )
        number = WebhookDelivery.objects.values_list("attempts", flat=True).get(id=delivery.id)
        DeliveryAttempt.objects.create(
            delivery=delivery,
            number=number,
            started_at=started_at,
            duration_ms=sending.elapsed_ms(started),
            response_status=response_status,
            error=error[:500],
        )


# The ends of a webhooks.deliver job that may leave its delivery pending: cancelled by an
# operator, expired, failed by the sweeper after too many stalls or by too many snoozes.
UNSENT_ENDS = (Status.FAILED, Status.CANCELLED, Status.EXPIRED)
_ENDED_SO = {Status.FAILED: "failed", Status.CANCELLED: "was cancelled", Status.EXPIRED: "expired"}


def settle_unsent(job_ids: list) -> int:
    """End the deliveries still pending whose webhooks.deliver job (among `job_ids`)
    ended failed, cancelled or expired: `cancelled` after a cancel, `failed` otherwise,
    with the job's reason as `last_error`. Idempotent; returns how many it ended."""
    if not job_ids:
        return 0
    ended = {
        str(row["payload"].get("delivery_id")): row
        for row in Job.objects.filter(id__in=job_ids, type=DELIVER, status__in=UNSENT_ENDS)
        .order_by()
        .values("id", "status", "payload", "error", "message")
    }
    pending = WebhookDelivery.objects.filter(
        id__in=[delivery_id for delivery_id in ended if delivery_id != "None"],
        status=DeliveryStatus.PENDING,
    ).values_list("id", flat=True)
    settled = 0
    for delivery_id in list(pending):
        job = ended[str(delivery_id)]
        # Only while the job still ends so: a retry of it sends the delivery again.
        still_ended = Job.objects.filter(id=job["id"], status=job["status"])
        settled += (
            WebhookDelivery.objects.filter(
                id=delivery_id, job_id=job["id"], status=DeliveryStatus.PENDING
            )
            .filter(Exists(still_ended))
            .update(
                status=DeliveryStatus.CANCELLED
                if job["status"] == Status.CANCELLED
                else DeliveryStatus.FAILED,
                last_error=_unsent_reason(job)[:500],
                updated_at=timezone.now(),
            )
        )
    return settled


def _unsent_reason(job: dict[str, Any]) -> str:
    reason = f"Its job {_ENDED_SO[job['status']]}"
    detail = one_line_error(job["error"]) or job["message"]
    if detail and detail != "Cancelled":
        reason += f": {detail}"
    return reason + ("" if reason.endswith(".") else ".")


def _give_up(delivery: WebhookDelivery, reason: str) -> None:
    WebhookDelivery.objects.filter(id=delivery.id).update(
        status=DeliveryStatus.FAILED, last_error=reason, updated_at=timezone.now()
    )
