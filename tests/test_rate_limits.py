"""Rate limits: per user on the API, per client address on the token endpoint, counted
in Redis over a sliding period."""

import uuid
from types import SimpleNamespace

import pytest
import redis
import requests

from jobsite import throttles
from jobsite.throttles import TokenRateThrottle, UserRateThrottle
from tests.conftest import PASSWORD
from tests.support import run_in_threads

# The start of a minute, so the tests know where the counting periods begin.
MINUTE = 60 * 29_000_000


@pytest.fixture
def limit(monkeypatch):
    """Set a throttle's rate, counted under keys of this test's own."""

    def set_limit(throttle, rate: str) -> None:
        monkeypatch.setattr(throttle, "rate", rate, raising=False)
        monkeypatch.setattr(throttle, "scope", f"test-{uuid.uuid4().hex}")

    return set_limit


def ask(at: float, user_id: int = 1) -> tuple[bool, UserRateThrottle]:
    """One request from the user at the time `at`: allowed or not, and the throttle."""
    throttle = UserRateThrottle()
    throttle.timer = lambda: at
    request = SimpleNamespace(user=SimpleNamespace(is_authenticated=True, pk=user_id))
    return throttle.allow_request(request, view=None), throttle


def test_a_user_over_the_limit_gets_a_429_and_others_do_not(api, other_api, limit):
    limit(UserRateThrottle, "3/min")

    assert [api.get("/api/me/").status_code for _ in range(3)] == [200, 200, 200]
    refused = api.get("/api/me/")

    assert refused.status_code == 429
    assert refused.json()["code"] == "throttled"
    assert 0 < int(refused.headers["Retry-After"]) <= 120
    assert other_api.get("/api/me/").status_code == 200


def test_the_token_endpoint_is_limited_per_client_address(live_server, user, limit):
    limit(TokenRateThrottle, "2/min")
    credentials = {"username": "alice", "password": PASSWORD}

    codes = [
        requests.post(f"{live_server.url}/api/auth/token/", json=credentials).status_code
        for _ in range(3)
    ]

    assert codes == [200, 200, 429]


def test_the_previous_period_still_counts_as_it_slides_out(limit):
    limit(UserRateThrottle, "10/min")
    assert all(ask(MINUTE + 50)[0] for _ in range(10))

    allowed, throttle = ask(MINUTE + 50)

    assert not allowed
    # Ten requests 50 s into a minute: 6 s into the next, 9 of them still weigh.
    assert throttle.wait() == pytest.approx(16)
    assert not ask(MINUTE + 65)[0]
    assert ask(MINUTE + 67)[0]


def test_refused_requests_do_not_count(limit):
    limit(UserRateThrottle, "2/min")
    assert ask(MINUTE)[0] and ask(MINUTE)[0]

    assert not any(ask(MINUTE + 30)[0] for _ in range(5))

    # Only the two allowed requests weigh in the next minute: 2 * 0.5 + 1 <= 2.
    assert ask(MINUTE + 90)[0]


def test_users_are_counted_apart(limit):
    limit(UserRateThrottle, "1/min")

    assert ask(MINUTE, user_id=1)[0]
    assert not ask(MINUTE, user_id=1)[0]
    assert ask(MINUTE, user_id=2)[0]


def test_concurrent_requests_never_pass_the_limit(limit):
    limit(UserRateThrottle, "10/min")

    allowed = run_in_threads(25, lambda i: ask(MINUTE + 1)[0])

    assert allowed.count(True) == 10


def test_requests_go_through_when_redis_is_unreachable(limit, monkeypatch):
    limit(UserRateThrottle, "1/min")
    unreachable = redis.Redis(port=1, socket_connect_timeout=0.5, retry=None)  # as throttle_redis
    monkeypatch.setattr(throttles, "throttle_redis", lambda *timeout: unreachable)

    assert ask(MINUTE)[0]
    assert ask(MINUTE)[0]
