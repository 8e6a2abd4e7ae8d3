"""The live-update endpoints: the event stream (GET /api/events/) and the `?wait=`
long-poll of the status endpoints. See jobs/live.py for how changes reach them."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
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
        "for several), `batch`."
    ),
    parameters=[
        OpenApiParameter("job", OpenApiTypes.UUID, many=True, description="Only these jobs"),
        OpenApiParameter("batch", str, many=True, description="Only the jobs of these batches"),
        OpenApiParameter(
            "mine", OpenApiTypes.BOOL, description="Only the caller's own jobs (for staff)"
        ),
    ],
    responses={
        (200, "text/event-stream"): OpenApiResponse(OpenApiTypes.STR, description="The events"),
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
        try:
            seq = live.hub.enter()
        except live.PushUnavailable as exc:
            return refused(exc)
        live.close_database_connections()
        stream = _Stream(request.user, seq, {str(i) for i in job_ids}, batch_ids, mine)
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
        self, user: Any, seq: int, job_ids: set[str], batch_ids: set[str], mine: bool = False
    ):
        self.user = user
        self.mine = mine
        self.seq = seq
        self.job_ids = job_ids
        self.batch_ids = batch_ids
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
        deadline = time.monotonic() + settings.PUSH_STREAM_SECONDS
        while live.hub.connected:
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                return
            recheck = live.hub.recheck_due(self.checked_at)
            if recheck is not None and recheck <= now:
                shown = self._recheck()
                if shown:
                    yield "".join(_event(c) for c in shown).encode()
                continue
            wait = min(remaining, settings.PUSH_KEEPALIVE_SECONDS)
            if recheck is not None:
                wait = min(wait, recheck - now)
            self.seq, changes = live.hub.wait(self.seq, wait)
            shown = [c for c in changes if self._wanted(c)]
            if shown:
                yield "".join(_event(c) for c in shown).encode()
            elif not changes:
                yield b": keep-alive\n\n"

    def _recheck(self) -> list[live.Change]:
        """The stream's jobs and batches changed since it last read them, as they are
        now: the changes a publisher may have skipped while it thought nobody listened.
        A client may get a change twice."""
        from .batches import batch_change, tallies
        from .models import Batch

        since = self.checked_wall - RECHECK_SKEW
        self.checked_at, self.checked_wall = time.monotonic(), timezone.now()
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
        try:
            found = [("job", row) for row in jobs.values(*live.FIELDS)]
            if not self.job_ids:
                listed = list(batches)
                progress = tallies([b.id for b in listed]) if listed else {}
                found += [("batch", batch_change(b, progress[b.id].progress)) for b in listed]
        finally:
            live.close_database_connections()
        changes = [live.Change(self.seq, kind, live.as_heard(data)) for kind, data in found]
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


def _event(change: live.Change) -> str:
    data = {k: v for k, v in change.data.items() if k != "owner_id"}
    return f"event: {change.kind}\nid: {change.seq}\ndata: {json.dumps(data)}\n\n"
