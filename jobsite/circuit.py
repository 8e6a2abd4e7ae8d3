"""A circuit breaker for calls to a server that may hang (the broker, Redis).

After a failed call the breaker opens for `open_for` seconds: callers skip the server and
take their fallback at once instead of each waiting out a timeout. Once that time is
up, one caller is let through to try (half-open); its success closes the breaker, its
failure opens it again.

pybreaker holds one lock around every call it guards, which would let a single web
thread publish at a time; here the closed state, the one that matters for speed, is
read without a lock, and the lock is taken only to change state.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class CircuitOpen(Exception):
    """The breaker is open: the call was not tried."""


class CircuitBreaker:
    def __init__(
        self, name: str, open_for: Callable[[], float], clock: Callable[[], float] = time.monotonic
    ):
        self.name = name
        self._open_for = open_for
        self._clock = clock
        self._lock = threading.Lock()
        self._opened_at: float | None = None
        self._trial_running = False

    def is_open(self) -> bool:
        """True while calls would be refused: open and its time not up, or a trial running."""
        opened_at = self._opened_at
        if opened_at is None:
            return False
        return self._trial_running or self._clock() - opened_at < self._open_for()

    def allow(self) -> bool:
        """May a call go ahead? Always while closed; once the open time is up, True for
        one caller only, whose outcome must be reported with `succeeded` or `failed`."""
        if self._opened_at is None:
            return True
        with self._lock:
            if self._opened_at is None:
                return True
            if self._trial_running or self._clock() - self._opened_at < self._open_for():
                return False
            self._trial_running = True
            return True

    @contextmanager
    def guard(self, failures: tuple[type[BaseException], ...] = (Exception,)) -> Iterator[None]:
        """Run the block if the breaker allows it, else raise `CircuitOpen`. An exception
        of a `failures` type opens the breaker; any other outcome counts as an answer."""
        if not self.allow():
            raise CircuitOpen(f"{self.name} is not answering; not tried again yet")
        try:
            yield
        except failures:
            self.failed()
            raise
        except BaseException:
            self.succeeded()
            raise
        self.succeeded()

    def succeeded(self) -> None:
        if self._opened_at is None:
            return
        with self._lock:
            self._opened_at = None
            self._trial_running = False

    def failed(self) -> None:
        with self._lock:
            self._opened_at = self._clock()
            self._trial_running = False

    def reset(self) -> None:
        with self._lock:
            self._opened_at = None
            self._trial_running = False
