"""The circuit breaker that keeps a hung broker or Redis from holding every request."""

import threading

import pytest

from jobsite.circuit import CircuitBreaker, CircuitOpen


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def breaker(clock):
    return CircuitBreaker("the test server", lambda: 2.0, clock=clock)


def fail(breaker: CircuitBreaker) -> None:
    with pytest.raises(ConnectionError), breaker.guard():
        raise ConnectionError("no answer")


def test_it_lets_calls_through_while_closed(breaker):
    with breaker.guard():
        pass
    assert breaker.allow() and breaker.allow()
    assert not breaker.is_open()


def test_after_a_failure_calls_are_refused_without_being_tried(breaker):
    fail(breaker)

    tried = []
    with pytest.raises(CircuitOpen, match="the test server"), breaker.guard():
        tried.append(1)
    assert tried == []
    assert breaker.is_open()


def test_once_the_open_time_is_up_one_caller_tries_and_its_success_closes_it(breaker, clock):
    fail(breaker)
    clock.now += 2.0

    assert not breaker.is_open()
    assert breaker.allow()  # the trial
    assert not breaker.allow() and breaker.is_open()  # others wait for its outcome
    breaker.succeeded()

    assert breaker.allow() and breaker.allow()
    assert not breaker.is_open()


def test_a_failed_trial_opens_it_for_another_period(breaker, clock):
    fail(breaker)
    clock.now += 2.0
    fail(breaker)

    clock.now += 1.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.allow()


def test_an_error_that_is_not_a_failure_counts_as_an_answer(breaker, clock):
    fail(breaker)
    clock.now += 2.0
    with pytest.raises(KeyError), breaker.guard(failures=(ConnectionError,)):
        raise KeyError("a bug, not the server")

    assert not breaker.is_open()


def test_exactly_one_of_many_threads_gets_the_trial(breaker, clock):
    fail(breaker)
    clock.now += 2.0
    barrier = threading.Barrier(16)
    allowed = []

    def ask() -> None:
        barrier.wait()
        allowed.append(breaker.allow())

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert allowed.count(True) == 1
