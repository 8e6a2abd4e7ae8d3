"""API rate limits, counted in Redis: per signed-in user on every endpoint, per client
address on the token endpoints. The client address is also what login lockouts count."""

from __future__ import annotations

import functools
import ipaddress
import logging

import redis
from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest
from rest_framework import exceptions, throttling

from .circuit import CircuitBreaker, CircuitOpen

log = logging.getLogger(__name__)


def client_address(request: HttpRequest) -> str:
    """The client's address: the peer's, or behind proxies (NUM_PROXIES, only with
    DJANGO_BEHIND_PROXY) the one the outermost proxy saw, read from X-Forwarded-For as
    DRF does. Anything that is not an address counts as the peer's."""
    address = throttling.BaseThrottle().get_ident(request)
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return request.META.get("REMOTE_ADDR", "")


class RateLimitUnavailable(exceptions.APIException):
    status_code = 503
    default_detail = "The rate limit cannot be checked right now; try again shortly."
    default_code = "rate_limit_unavailable"


# Opened by a failed check of a fail-open limit: Redis is then not asked again for
# CACHE_BREAKER_SECONDS, so a Redis that hangs costs one short timeout per period.
breaker = CircuitBreaker("Redis (rate limits)", lambda: settings.CACHE_BREAKER_SECONDS)


class FailOpenMixin:
    """Rate limits live in Redis; if Redis cannot be reached the request is let through
    rather than failing, so an outage of the cache never takes the API down with it.
    Redis is asked with CACHE_TIMEOUT, and not at all while the breaker is open."""

    redis_timeout_setting = "CACHE_TIMEOUT"

    def allow_request(self, request, view) -> bool:
        try:
            with breaker.guard(failures=(redis.RedisError,)):
                return super().allow_request(request, view)
        except CircuitOpen:
            return True
        except Exception as exc:
            log.warning("Rate limit check skipped: %s", exc)
            return True


class FailClosedMixin:
    """Where the limit guards password checks, an unreachable Redis refuses the request
    (503) instead: an outage must not lift the limit on guessing."""

    def allow_request(self, request, view) -> bool:
        try:
            return super().allow_request(request, view)
        except redis.RedisError as exc:
            log.warning("Token request refused, its rate limit cannot be checked: %s", exc)
            raise RateLimitUnavailable() from exc


@functools.cache
def throttle_redis(timeout: float = 1.0) -> redis.Redis:
    """The Redis the cache uses (its first server), for the rate-limit counters, giving
    up after `timeout` seconds to connect or to answer, without retrying."""
    location = settings.CACHES["default"]["LOCATION"]
    url = location.split(",")[0] if isinstance(location, str) else location[0]
    return redis.Redis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=timeout, retry=None
    )


class WindowCounterMixin:
    """Counts a client's requests with one Redis round trip, whatever the rate.

    DRF's throttles keep the time of every request of the last period in one cache
    entry, read and written whole on every request, so the cost grows with the rate (a
    6,000-item list each way at 6,000/min) and concurrent requests overwrite each
    other's counts. Here each period has an atomic counter, and the requests of the
    period ending now are the current counter plus the previous period's counter
    weighted by how much of that period still lies inside. As with DRF, a refused
    request does not count.
    """

    redis_timeout_setting: str | None = None

    def counter_store(self) -> redis.Redis:
        if self.redis_timeout_setting is None:
            return throttle_redis()
        return throttle_redis(getattr(settings, self.redis_timeout_setting))

    def allow_request(self, request, view) -> bool:
        if self.rate is None:
            return True
        self.key = self.get_cache_key(request, view)
        if self.key is None:
            return True
        self.now = self.timer()
        period, self.elapsed = divmod(self.now, self.duration)
        current_key = cache.make_key(f"{self.key}:{int(period)}")
        previous_key = cache.make_key(f"{self.key}:{int(period) - 1}")
        with self.counter_store().pipeline(transaction=False) as pipe:
            pipe.incr(current_key)
            pipe.expire(current_key, 2 * self.duration)
            pipe.get(previous_key)
            self.current, _, previous = pipe.execute()
        self.previous = int(previous or 0)
        overlap = 1 - self.elapsed / self.duration
        if self.previous * overlap + self.current <= self.num_requests:
            return True
        self.counter_store().decr(current_key)
        self.current -= 1
        return False

    def wait(self) -> float:
        """Seconds until the next request would be allowed."""
        room = self.num_requests - 1 - self.current
        if room >= 0:
            # This period has room once the previous one's weight has fallen enough.
            needed = 1 - room / self.previous if self.previous else 0
            return max(0.0, needed * self.duration - self.elapsed)
        # This period is full: wait into the next, where it weighs as the previous one.
        needed = 1 - (self.num_requests - 1) / max(self.current, 1)
        return self.duration - self.elapsed + needed * self.duration


class UserRateThrottle(FailOpenMixin, WindowCounterMixin, throttling.UserRateThrottle):
    pass


class TokenRateThrottle(FailClosedMixin, WindowCounterMixin, throttling.AnonRateThrottle):
    """Per client address, on the token endpoints."""

    scope = "token"

    def get_ident(self, request) -> str:
        return client_address(request)
