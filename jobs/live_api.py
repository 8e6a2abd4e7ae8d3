"""The live-update endpoints: the event stream (GET /api/events/) and the `?wait=`
long-poll of the status endpoints. See jobs/live.py for how changes reach them."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Q
from django.http import StreamingHttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from jobsite.api import if_none_match

from . import live
from .models import BatchState, Job

# A stream re-reads the jobs changed since it connected less this (clocks of other hosts
# that stamp updated_at may be behind this one's).
RECHECK_SKEW = timedelta(seconds=5)


class PushErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()
    code = serializers.ChoiceField(choices=["push_busy", "push_unavailable"])


STREAM_EVENTS = (*live.KINDS, "reset")


class StreamEventSerializer(serializers.Serializer):
    """One event of the stream, as EventSource hands it over."""

    event = serializers.ChoiceField(choices=STREAM_EVENTS)
    id = serializers.CharField(
        help_text="Where the stream stood (opaque): reopen with it as Last-Event-ID"
    )
    data = serializers.CharField(
        help_text="JSON: a job's or batch's status fields; for `reset`, a `detail`"
    )


PUSH_REFUSED = OpenApiResponse(
    PushErrorSerializer,
    description="The server cannot hold the request open now (too many clients waiting: "
    "`push_busy`; Redis unreachable: `push_unavailable`). Poll instead; try again after "
    "Retry-After seconds.",
)

WAIT_PARAMETER = OpenApiParameter(
    "wait",
    OpenApiTypes.FLOAT,
    description="Long-poll: with If-None-Match, hold the request up to this many seconds "
    "(at most PUSH_MAX_WAIT_SECONDS) and answer as soon as the ETag changes; 304 if it "
    "did not.",
)


def refused(exc: live.PushUnavailable) -> Response:
    return Response(
        {"detail": exc.detail, "code": exc.code},
        status=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(max(1, round(settings.PUSH_RECONNECT_SECONDS * 5)))},
    )


def wait_seconds(request: Request) -> float | None:
    """The `wait` query parameter in seconds, cut to PUSH_MAX_WAIT_SECONDS; None when
    absent. A 400 naming `wait` when it is not a number of seconds."""
    raw = request.query_params.get("wait")
    if raw is None or raw == "":
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise exceptions.ValidationError({"wait": ["A number of seconds, 0 or more."]})
    return min(seconds, settings.PUSH_MAX_WAIT_SECONDS)


def long_poll(
    request: Request,
    job_id: Any,
    current: tuple[str, Any],
    read: Callable[[], tuple[str, Any] | None],
) -> tuple[str, Any] | None | Response:
    """The (etag, state) to answer with: `current`, or with `?wait=` and an
    If-None-Match naming `current`'s ETag, what `read()` gives once its ETag changes
    or the wait is over (see `live.wait_for_etag_change`); None when the object is gone.
    A 503 `Response` when waiting is refused; a 400 for a bad `wait`."""
    seconds = wait_seconds(request)
    if not seconds or current[0] not in if_none_match(request):
        return current
    try:
        return live.wait_for_etag_change(job_id, current[0], read, seconds)
    except live.PushUnavailable as exc:
        return refused(exc)


@extend_schema(
    tags=["jobs"],
    summary="Live updates of jobs as Server-Sent Events",
    description=(
        "A `text/event-stream` of `job` events (data: the job's id, status, progress, "
        "message, updated_at, batch_id) for the caller's jobs (staff: all jobs), sent "
        "within a second of each change, with keep-alive comments. The stream ends after "
        "PUSH_STREAM_SECONDS; EventSource reconnects by itself. Filters: `job` (repeat "
        "for several), `batch`. Reopened with the last event id it got (the Last-Event-ID "
        "header EventSource sends, or `last_event_id`), the stream first sends the "
        "changes missed since (up to PUSH_RESUME_SECONDS back), or a `reset` event when "
        "it cannot: read the current state again."
    ),
    parameters=[
        OpenApiParameter("job", OpenApiTypes.UUID, many=True, description="Only these jobs"),
        OpenApiParameter("batch", str, many=True, description="Only the jobs of these batches"),
        OpenApiParameter(
            "mine", OpenApiTypes.BOOL, description="Only the caller's own jobs (for staff)"
        ),
        OpenApiParameter(
            "Last-Event-ID",
            str,
            location=OpenApiParameter.HEADER,
            description="Resume: the id of the last event (or keep-alive) received",
        ),
        OpenApiParameter(
            "last_event_id",
            str,
            description="Resume, for clients that cannot set headers (the header wins)",
        ),
    ],
    responses={
        (200, "text/event-stream"): OpenApiResponse(
            StreamEventSerializer, description="The events, each as described"
        ),
        404: OpenApiResponse(description="A `job` filter names no job of the caller's"),
        503: PUSH_REFUSED,
    },
)
class EventStream(APIView):
    renderer_classes = [JSONRenderer]

    def perform_content_negotiation(self, request: Request, force: bool = False):
        # EventSource asks for text/event-stream, which the stream is; errors are JSON.
        return super().perform_content_negotiation(request, force=True)

    def get(self, request: Request) -> Response | StreamingHttpResponse:
        job_ids = _job_filter(request)
        batch_ids = set(request.query_params.getlist("batch"))
        mine = request.query_params.get("mine", "") in ("1", "true", "yes")
        if job_ids:
            visible = Job.objects.visible_to(request.user).filter(id__in=job_ids)
            if visible.count() != len(job_ids):
                raise exceptions.NotFound("No such job.")
        entered_at = time.time()
        try:
            seq = live.hub.enter()
        except live.PushUnavailable as exc:
            return refused(exc)
        live.close_database_connections()
        resume = request.headers.get("Last-Event-ID") or request.query_params.get("last_event_id")
        stream = _Stream(
            request.user,
            seq,
            {str(i) for i in job_ids},
            batch_ids,
            mine,
            resume_from=resume or None,
            entered_at=entered_at,
        )
        response = StreamingHttpResponse(stream, content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
        return response


def _job_filter(request: Request) -> set[uuid.UUID]:
    try:
        return {uuid.UUID(value) for value in request.query_params.getlist("job")}
    except ValueError:
        raise exceptions.ValidationError({"job": ["Job ids (UUIDs)."]}) from None


class _Stream:
    """The events of one client; gives its waiting place back when the server closes
    the response (the client left, or the stream ran its time)."""

    def __init__(
        self,
        user: Any,
        seq: int,
        job_ids: set[str],
        batch_ids: set[str],
        mine: bool = False,
        resume_from: str | None = None,
        entered_at: float = 0.0,
    ):
        self.user = user
        self.mine = mine
        self.seq = seq
        self.job_ids = job_ids
        self.batch_ids = batch_ids
        # The Last-Event-ID the client reopened the stream with, if any, and when the
        # stream took its place (every change after `seq` was heard no earlier).
        self.resume_from = resume_from
        self.entered_at = entered_at
        self._left = False
        # When the stream's subject was last read (the connection itself, first).
        self.checked_at, self.checked_wall = time.monotonic(), timezone.now()

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._events()
        finally:
            self.close()

    def close(self) -> None:
        if not self._left:
            self._left = True
            live.hub.leave()

    def _events(self) -> Iterator[bytes]:
        yield f"retry: {int(settings.PUSH_RECONNECT_SECONDS * 1000)}\n: connected\n\n".encode()
        if self.resume_from is not None:
            yield self._resume(self.resume_from).encode()
        else:
            yield _keep_alive(self._position(self.seq, self.entered_at)).encode()
        deadline = time.monotonic() + settings.PUSH_STREAM_SECONDS
        sent_at = time.monotonic()
        while live.hub.connected:
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                yield _keep_alive(self._position(self.seq, time.time())).encode()
                return
            recheck = live.hub.recheck_due(self.checked_at)
            if recheck is not None and recheck <= now:
                shown = self._recheck(limit=settings.PUSH_RESUME_MAX_CHANGES)
                if shown is None:  # too much to send: the client reads everything again
                    yield _reset(self._position(self.seq, time.time())).encode()
                elif shown:
                    yield self._shown(shown).encode()
                continue
            wait = min(remaining, settings.PUSH_KEEPALIVE_SECONDS)
            if recheck is not None:
                wait = min(wait, recheck - now)
            before = time.time()
            self.seq, changes = live.hub.wait(self.seq, wait)
            shown = [c for c in changes if self._wanted(c)]
            if shown:
                yield self._shown(shown).encode()
            elif not changes or time.monotonic() - sent_at >= settings.PUSH_KEEPALIVE_SECONDS:
                at = changes[-1].heard_at if changes else before
                yield _keep_alive(self._position(self.seq, at)).encode()
            else:
                continue
            sent_at = time.monotonic()

    def _position(self, seq: int, at: float) -> live.Position:
        """The stream's position after change `seq`, heard at `at`: vouched for by the
        hub's token unless a re-read is due (then only as of the last read)."""
        if live.hub.recheck_due(self.checked_at) is not None:
            return live.Position(min(at, self.checked_wall.timestamp()), live.UNVOUCHED, seq)
        return live.Position(at, live.hub.token, seq)

    def _shown(self, changes: list[live.Change]) -> str:
        return "".join(_event(c, self._position(c.seq, c.heard_at)) for c in changes)

    def _resume(self, last_event_id: str) -> str:
        """The events a stream reopened after `last_event_id` missed: from the hub's ring
        when it can vouch for them, else the jobs and batches changed since the id's time
        read again; a `reset` event when the id is malformed, from too long ago (or the
        future), or too much changed."""
        position = live.parse_event_id(last_event_id)
        now = time.time()
        oldest, newest = now - settings.PUSH_RESUME_SECONDS, now + RECHECK_SKEW.total_seconds()
        if position is None or not oldest <= position.at <= newest:
            return _reset(self._position(self.seq, self.entered_at))
        replayed = live.hub.replay(position)
        if replayed is not None:
            self.seq, changes = replayed
            shown = [c for c in changes if self._wanted(c)]
            return self._shown(shown) + _keep_alive(self._position(self.seq, now))
        entered_at, self.checked_wall = self.entered_at, datetime.fromtimestamp(position.at, UTC)
        shown = self._recheck(limit=settings.PUSH_RESUME_MAX_CHANGES)
        if shown is None:
            return _reset(self._position(self.seq, entered_at))
        return self._shown(shown) + _keep_alive(self._position(self.seq, entered_at))

    def _recheck(self, limit: int | None = None) -> list[live.Change] | None:
        """The stream's jobs and batches changed since it last read them, as they are
        now: the changes a publisher may have skipped while it thought nobody listened.
        A client may get a change twice. None when more than `limit` changed."""
        from .batches import batch_change, tallies
        from .models import Batch

        since = self.checked_wall - RECHECK_SKEW
        self.checked_at, self.checked_wall = time.monotonic(), timezone.now()
        read_at = self.checked_wall.timestamp()
        jobs = Job.objects.visible_to(self.user).filter(updated_at__gte=since)
        batches = Batch.objects.visible_to(self.user).filter(
            Q(created_at__gte=since)
            | Q(finished_at__gte=since)
            | Q(state=BatchState.RUNNING, cancel_requested=True)
        )
        if self.mine:
            jobs, batches = jobs.filter(owner=self.user), batches.filter(owner=self.user)
        if self.job_ids:
            jobs = jobs.filter(id__in=self.job_ids)
        if self.batch_ids:
            valid = _uuids(self.batch_ids)
            jobs, batches = jobs.filter(batch_id__in=valid), batches.filter(id__in=valid)
        rows = jobs.values(*live.FIELDS)
        if limit is not None:
            rows, batches = rows[: limit + 1], batches[: limit + 1]
        try:
            found = [("job", row) for row in rows]
            if not self.job_ids:
                listed = list(batches)
                if limit is not None and len(found) + len(listed) > limit:
                    return None
                progress = tallies([b.id for b in listed]) if listed else {}
                found += [("batch", batch_change(b, progress[b.id].progress)) for b in listed]
        finally:
            live.close_database_connections()
        if limit is not None and len(found) > limit:
            return None
        changes = [
            live.Change(self.seq, kind, live.as_heard(data), read_at) for kind, data in found
        ]
        return [c for c in changes if self._wanted(c)]

    def _wanted(self, change: live.Change) -> bool:
        if not live.visible_to(self.user, change):
            return False
        if self.mine and str(change.data.get("owner_id")) != str(self.user.pk):
            return False
        if change.kind == "batch":
            batch_id = str(change.data.get("id"))
            return not self.job_ids and (not self.batch_ids or batch_id in self.batch_ids)
        if self.job_ids and str(change.data.get("id")) not in self.job_ids:
            return False
        if self.batch_ids and str(change.data.get("batch_id")) not in self.batch_ids:
            return False
        return True


def _uuids(values: set[str]) -> list[uuid.UUID]:
    found = []
    for value in values:
        try:
            found.append(uuid.UUID(value))
        except ValueError:
            pass  # names no batch
    return found


def _event(change: live.Change, position: live.Position) -> str:
    data = {k: v for k, v in change.data.items() if k != "owner_id"}
    return f"event: {change.kind}\nid: {live.event_id(position)}\ndata: {json.dumps(data)}\n\n"


def _keep_alive(position: live.Position) -> str:
    """A comment that moves the client's last event id on (EventSource keeps the id of
    a message without data, and dispatches nothing)."""
    return f"id: {live.event_id(position)}\n: keep-alive\n\n"


RESET = json.dumps(
    {"detail": "The changes since the last event cannot be sent; read the current state again."}
)


def _reset(position: live.Position) -> str:
    return f"event: reset\nid: {live.event_id(position)}\ndata: {RESET}\n\n"
