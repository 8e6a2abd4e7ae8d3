"""Live updates: job (and batch) changes pushed to the clients waiting for them.

Publishing. Once a change is committed the store hands it to `publish` (through
`changed` / `changed_ids`), which sends one small JSON message per transaction to a
Redis pub/sub channel. Redis is asked with PUSH_PUBLISH_TIMEOUT and not at all for
PUSH_BREAKER_SECONDS after a failure, so a Redis that hangs or is down never holds a
worker or a request: a lost message only delays an update until the waiting client's
next re-check.

Only while someone listens. A web process with a waiting client keeps the key
`<channel>:listeners` alive (PUSH_LISTENERS_TTL, renewed by its hub); publishers look for
it at most once per PUSH_LISTENERS_CHECK_SECONDS and skip the PUBLISH (and the read-back
of `changed_ids`) while it is absent. A publisher may thus skip changes for up to that
long after the key appears: each process notes when it set the key afresh, and its
clients that may have missed such a change read their jobs again once that time is over
(`Hub.settled_at`), so none is missed.

Waiting. Each web process keeps one `Hub`: a background thread subscribed to the
channel that numbers the changes it hears and wakes the threads waiting for them
(`threading.Condition`). A waiting request holds a gunicorn thread and nothing else: no
database connection (closed before waiting) and no Redis connection of its own. At most
PUSH_MAX_WAITING requests of a process wait at once; the next ones are refused with a
503 (`push_busy`), as they are while the hub cannot hear Redis (`push_unavailable`), and
clients poll instead. A process that exits stops its hub first (atexit), quietly.

Resuming. Each event of a stream carries an id naming where the stream stood: when the
change was heard (wall-clock milliseconds), the hub that heard it (a token drawn each time
the hub subscribes) and its number (`event_id`). A stream reopened with such an id replays
the changes it missed from the hub's ring when the id is this hub's, still in the ring and
from after the hub last started hearing everything (`Hub.replay`); otherwise the stream
reads its jobs and batches changed since the id's time again (jobs/live_api.py).
"""

from __future__ import annotations

import atexit
import json
import logging
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from itertools import islice
from typing import Any
from urllib.parse import urlsplit

import redis
from django.conf import settings
from django.db import connections, transaction

from jobsite.circuit import CircuitBreaker, CircuitOpen

log = logging.getLogger(__name__)

KINDS = ("job", "batch")
# The fields of a change message, besides `kind`: a job's polled status with its owner
# and batch.
FIELDS = ("id", "owner_id", "batch_id", "status", "progress", "message", "updated_at")

breaker = CircuitBreaker("Redis (live updates)", lambda: settings.PUSH_BREAKER_SECONDS)


def channel_name() -> str:
    """The pub/sub channel: pub/sub ignores Redis database numbers, so the channel
    carries the one PUSH_REDIS_URL names (deployments sharing a Redis stay apart)."""
    if settings.PUSH_CHANNEL:
        return settings.PUSH_CHANNEL
    database = urlsplit(settings.PUSH_REDIS_URL).path.strip("/") or "0"
    return f"jobsite:live:{database}"


# --- publishing ----------------------------------------------------------------------------


@cache
def _publisher() -> redis.Redis:
    timeout = settings.PUSH_PUBLISH_TIMEOUT
    return redis.Redis.from_url(
        settings.PUSH_REDIS_URL,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=None,
    )


def listeners_key() -> str:
    """The key web processes keep alive while they have waiting clients."""
    return f"{channel_name()}:listeners"


class _Listened:
    """This process's last look at the listeners key: (when asked, found)."""

    asked_at = float("-inf")
    found = False


def listened() -> bool:
    """Is any client waiting for changes? This process's own waiting clients answer at
    once; otherwise the listeners key, asked at most once per
    PUSH_LISTENERS_CHECK_SECONDS (as of before asking: the answer is trusted for no
    longer than that from before Redis read it). False, without waiting, when Redis
    fails or the breaker skips it."""
    if hub.waiting:
        return True
    now = time.monotonic()
    if now - _Listened.asked_at < settings.PUSH_LISTENERS_CHECK_SECONDS:
        return _Listened.found
    try:
        with breaker.guard(failures=(redis.RedisError, OSError)):
            found = bool(_publisher().exists(listeners_key()))
    except CircuitOpen:
        return False
    except Exception as exc:
        log.warning("Live updates: cannot tell whether anyone listens: %s", exc)
        return False
    _Listened.asked_at, _Listened.found = now, found
    return found


def forget_listeners() -> None:
    """Ask Redis again at the next publish (tests, settings changes)."""
    _Listened.asked_at, _Listened.found = float("-inf"), False


def publish(changes: list[dict[str, Any]], kind: str = "job") -> bool:
    """Send `changes` (dicts of FIELDS; a batch's may carry other fields) of `kind`
    ("job" or "batch") now, in one message, if anyone listens. Never raises: False when
    nobody listens, or Redis failed, did not answer in time or is being skipped by the
    breaker."""
    if kind not in KINDS:
        raise ValueError(f"Unknown kind {kind!r}; one of {', '.join(KINDS)}")
    if not changes or not settings.PUSH_ENABLED or not listened():
        return False
    message = json.dumps({"kind": kind, "changes": changes}, default=_json_value)
    try:
        with breaker.guard(failures=(redis.RedisError, OSError)):
            _publisher().publish(channel_name(), message)
        return True
    except CircuitOpen:
        return False
    except Exception as exc:
        log.warning("Live update not published (clients see it at their next check): %s", exc)
        return False


def publish_on_commit(changes: list[dict[str, Any]], kind: str = "job") -> None:
    """`publish` once the surrounding transaction commits (at once outside one)."""
    if changes and settings.PUSH_ENABLED:
        transaction.on_commit(lambda: publish(changes, kind))


def job_change(job: Any, **fields: Any) -> dict[str, Any]:
    """A job's change message from the job object, `fields` overriding its values."""
    change = {
        "id": job.id,
        "owner_id": job.owner_id,
        "batch_id": job.batch_id,
        "status": job.status,
        "progress": job.progress,
        "message": job.message,
        "updated_at": job.updated_at,
    }
    change.update(fields)
    return change


def changed(jobs: Iterable[Any], **fields: Any) -> None:
    """Publish, after commit, the jobs' changes as the objects (and `fields`) show them."""
    publish_on_commit([job_change(job, **fields) for job in jobs])


def changed_ids(job_ids: Iterable[Any]) -> None:
    """Publish, after commit, the changes of jobs whose new state the caller does not
    hold: read back in one query once committed."""
    ids = list(job_ids)
    if ids and settings.PUSH_ENABLED:
        transaction.on_commit(lambda: listened() and publish(_read_back(ids)))


def _read_back(ids: list[Any]) -> list[dict[str, Any]]:
    from .models import Job

    try:
        rows = list(Job.objects.filter(id__in=ids).values(*FIELDS))
    except Exception as exc:  # the change is committed; its message is not worth a failure
        log.warning("Live update not published, the jobs could not be read back: %s", exc)
        return []
    return rows


def _json_value(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def as_heard(data: dict[str, Any]) -> dict[str, Any]:
    """A change's fields as a client hears them from the channel (ids and times as
    strings)."""
    return json.loads(json.dumps(data, default=_json_value))


# --- the hub: one subscriber thread per web process ----------------------------------------


class PushUnavailable(Exception):
    """Clients cannot wait for changes now; `code` says why (push_busy, push_unavailable)."""

    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class Change:
    seq: int
    kind: str
    data: dict[str, Any]
    # When the hub heard it (time.time()): every later number was heard no earlier.
    heard_at: float = 0.0


# Ids of positions a hub's token cannot vouch for (resumed by reading again).
UNVOUCHED = "x"
_EVENT_ID = re.compile(r"(\d{1,15})-([0-9a-z]{1,16})-(\d{1,18})")


@dataclass(frozen=True)
class Position:
    """Where a stream stood: it had every change up to number `seq` of the hub with
    `token`, and every change made before `at` (epoch seconds) less clock slack."""

    at: float
    token: str
    seq: int


def event_id(position: Position) -> str:
    """A stream event's id: opaque to clients, given back as Last-Event-ID."""
    return f"{int(position.at * 1000)}-{position.token}-{position.seq}"


def parse_event_id(value: str) -> Position | None:
    """The position an event id names; None when it is not one."""
    found = _EVENT_ID.fullmatch(value.strip())
    if found is None:
        return None
    ms, token, seq = found.groups()
    return Position(int(ms) / 1000, token, int(seq))


class Hub:
    """The changes this process heard, numbered, and the threads waiting for them."""

    def __init__(self, keep: int = 10_000):
        self._condition = threading.Condition()
        self._changes: deque[Change] = deque(maxlen=keep)
        self._seq = 0
        self._waiting = 0
        self._thread: threading.Thread | None = None
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._stops_at_exit = False
        # The listeners key: surely alive until _announced_until, renewed from
        # _renew_at; every publisher publishes from _settled_at on (monotonic times).
        self._announcing = threading.Lock()
        self._announced_until = float("-inf")
        self._renew_at = float("-inf")
        self._settled_at = float("-inf")
        # The ring holds every change published from _complete_since (epoch seconds) on,
        # numbered under _token (drawn afresh at each subscription).
        self._token = UNVOUCHED
        self._complete_since = float("inf")
        self._published_since = float("-inf")

    # --- waiting -----------------------------------------------------------------------

    def enter(self) -> int:
        """Take a waiting place and return the number of the last change heard; raises
        `PushUnavailable` over PUSH_MAX_WAITING or when Redis cannot be heard."""
        self.start()
        if not self._connected.wait(settings.PUSH_CONNECT_TIMEOUT):
            raise PushUnavailable("push_unavailable", "Live updates are unavailable; poll.")
        with self._condition:
            if self._waiting >= settings.PUSH_MAX_WAITING:
                raise PushUnavailable(
                    "push_busy", "Too many clients are waiting for live updates; poll."
                )
            self._waiting += 1
            seq = self._seq
        if time.monotonic() >= self._announced_until:
            try:
                with self._announcing:
                    if time.monotonic() >= self._announced_until:
                        self._announce(renew=False)
            except Exception as exc:
                self.leave()
                log.warning("Live updates: the listeners key cannot be set: %s", exc)
                raise PushUnavailable(
                    "push_unavailable", "Live updates are unavailable; poll."
                ) from None
        return seq

    def leave(self) -> None:
        with self._condition:
            self._waiting -= 1

    @property
    def settled_at(self) -> float:
        """From this (monotonic) time on every publisher publishes: a client that read
        its state before it reads it again then (see the module's docstring)."""
        return self._settled_at

    def recheck_due(self, checked_at: float) -> float | None:
        """When a client that last read its state at `checked_at` must read it again
        (a monotonic time, maybe past), or None when it need not."""
        settled_at = self._settled_at
        return settled_at if settled_at > checked_at else None

    def _announce(self, renew: bool) -> None:
        """Set the listeners key, or with `renew` extend it; a key set afresh (new, or
        found gone) starts a settling period. Raises when Redis fails."""
        ttl = settings.PUSH_LISTENERS_TTL
        key = listeners_key()
        client = _publisher()
        with breaker.guard(failures=(redis.RedisError, OSError)):
            started = time.monotonic()
            if renew and client.expire(key, ttl):
                fresh = False
            else:
                client.set(key, "1", ex=ttl)
                fresh = True
        answered = time.monotonic()
        with self._condition:
            self._announced_until = started + ttl * 2 / 3
            self._renew_at = started + ttl / 3
            if fresh:
                check = settings.PUSH_LISTENERS_CHECK_SECONDS
                self._settled_at = answered + check + 0.05
                # Every publisher's look from before the key was set is out of date then.
                self._published_since = time.time() + (answered + check - time.monotonic())
                self._complete_since = max(self._complete_since, self._published_since)
                self._condition.notify_all()

    def _renew_if_due(self) -> None:
        if not self._waiting or time.monotonic() < self._renew_at:
            return
        try:
            with self._announcing:
                self._announce(renew=True)
        except Exception as exc:
            log.warning("Live updates: the listeners key cannot be renewed: %s", exc)

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def token(self) -> str:
        """The token of this hub's current subscription, which its event ids carry."""
        return self._token

    @property
    def seq(self) -> int:
        """The number of the last change heard."""
        return self._seq

    def replay(self, position: Position) -> tuple[int, list[Change]] | None:
        """The changes heard after `position` with the last number, when this hub can
        vouch they are all it missed: the position is of its current subscription, from
        after every publisher published (not before a settling period that is not over)
        and still in the ring. None otherwise."""
        with self._condition:
            if position.token != self._token or position.token == UNVOUCHED:
                return None
            if position.at < self._complete_since or position.seq > self._seq:
                return None
            oldest = self._changes[0].seq if self._changes else self._seq + 1
            if position.seq < oldest - 1:
                return None
            new = self._seq - position.seq
            return self._seq, list(islice(reversed(self._changes), new))[::-1]

    def wait(self, after: int, timeout: float) -> tuple[int, list[Change]]:
        """The changes heard after number `after`, waiting up to `timeout` seconds for
        one; returns the last number with them. Returns early, maybe with none, when the
        hub loses Redis (check `connected`) or a settling period starts (check
        `recheck_due`)."""
        deadline = time.monotonic() + timeout
        with self._condition:
            settled_at = self._settled_at
            while self._seq <= after and self.connected and self._settled_at == settled_at:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            if self._seq <= after:
                return after, []
            # The numbers run without gaps: the newest seq - after changes are the ones.
            new = min(self._seq - after, len(self._changes))
            return self._seq, list(islice(reversed(self._changes), new))[::-1]

    # --- hearing -----------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._condition:
            if self._thread is None or not self._thread.is_alive():
                self._stopping.clear()
                self._thread = threading.Thread(target=self._listen, name="push-hub", daemon=True)
                self._thread.start()
                if not self._stops_at_exit:
                    # Registered after whatever started the Redis it hears, so run before
                    # it at exit: a Redis stopped at exit (an embedded one) would otherwise
                    # be heard going away, and logged to streams already closed.
                    atexit.register(self.stop)
                    self._stops_at_exit = True

    def stop(self) -> None:
        """Stop hearing (the next waiter starts again, with the settings of then)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._thread = None
        self._set_connected(False)
        self._announced_until = self._renew_at = self._settled_at = float("-inf")
        self._complete_since, self._published_since = float("inf"), float("-inf")

    def _listen(self) -> None:
        while not self._stopping.is_set():
            try:
                self._listen_once()
            except Exception as exc:
                if not self._stopping.is_set():
                    log.warning("Live updates lost Redis, clients poll meanwhile: %s", exc)
            self._set_connected(False)
            self._stopping.wait(settings.PUSH_RECONNECT_SECONDS)

    def _listen_once(self) -> None:
        timeout = settings.PUSH_CONNECT_TIMEOUT
        client = redis.Redis.from_url(
            settings.PUSH_REDIS_URL,
            socket_connect_timeout=timeout,
            socket_timeout=timeout + settings.PUSH_KEEPALIVE_SECONDS,
            retry=None,
        )
        pubsub = client.pubsub(ignore_subscribe_messages=False)
        try:
            pubsub.subscribe(channel_name())
            pinged_at: float | None = None
            quiet_since = time.monotonic()
            while not self._stopping.is_set():
                message = pubsub.get_message(timeout=0.5)
                self._renew_if_due()
                now = time.monotonic()
                if message is not None:
                    quiet_since, pinged_at = now, None
                    self._heard(message)
                    continue
                # A Redis that hangs is silent, as one with nothing to say: ask it.
                if pinged_at is None and now - quiet_since > settings.PUSH_KEEPALIVE_SECONDS:
                    pubsub.ping()
                    pinged_at = now
                elif pinged_at is not None and now - pinged_at > timeout:
                    raise redis.TimeoutError("no answer to a ping")
        finally:
            pubsub.close()
            client.close()

    def _heard(self, message: dict) -> None:
        if message["type"] == "subscribe":
            with self._condition:
                # Changes published while unsubscribed were missed: ids from before are
                # not this subscription's, and its ring vouches only from now on.
                self._token = secrets.token_hex(4)
                self._complete_since = max(time.time(), self._published_since)
            self._set_connected(True)
            return
        if message["type"] != "message":
            return
        try:
            body = json.loads(message["data"])
            kind, changes = body["kind"], body["changes"]
        except (ValueError, KeyError, TypeError):
            log.warning("Live update ignored: not a change message")
            return
        heard_at = time.time()
        with self._condition:
            for data in changes:
                self._seq += 1
                self._changes.append(Change(self._seq, kind, data, heard_at))
            self._condition.notify_all()

    def _set_connected(self, connected: bool) -> None:
        with self._condition:
            if connected:
                self._connected.set()
            else:
                self._connected.clear()
            self._condition.notify_all()


hub = Hub()


def close_database_connections() -> None:
    """Give this thread's database connections back before it waits: a waiting client
    must not hold one."""
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close()


def visible_to(user: Any, change: Change) -> bool:
    """Staff see every change, other users their own jobs' (and batches')."""
    return bool(user.is_staff) or str(change.data.get("owner_id")) == str(user.pk)


def wait_for_etag_change(
    job_id: Any,
    etag: str,
    read: Callable[[], tuple[str, Any] | None],
    seconds: float,
) -> tuple[str, Any] | None:
    """Long-poll: wait up to `seconds` for `read()` (→ (etag, state), None when gone) to
    give an ETag other than `etag`, re-reading when a change of job `job_id` is heard
    and once at the end. Holds no database connection while waiting; raises
    `PushUnavailable` (with nothing held) when it cannot wait."""
    seq = hub.enter()
    try:
        checked_at = time.monotonic()
        current = read()
        deadline = checked_at + seconds
        while current is not None and current[0] == etag:
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0 or not hub.connected:
                break
            recheck = hub.recheck_due(checked_at)
            if recheck is not None and recheck <= now:
                checked_at = now  # a change may have gone unpublished: read again
                current = read()
                continue
            close_database_connections()
            until = deadline if recheck is None else min(deadline, recheck)
            seq, changes = hub.wait(seq, until - now)
            # None heard: the wait ran out (or Redis was lost), so read again anyway in
            # case a message was lost.
            if not changes or any(str(c.data.get("id")) == str(job_id) for c in changes):
                checked_at = time.monotonic()
                current = read()
        return current
    finally:
        hub.leave()
