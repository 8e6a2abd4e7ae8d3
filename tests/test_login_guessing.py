"""Password guessing: failed sign-ins on the token endpoint, the login page and the admin
login are counted per username and per client address (django-axes, in the database);
past the limit that username or address is locked out with a 429. The token endpoints'
own rate limit refuses requests when Redis cannot be reached."""

import os
import re
import signal
import time

import pytest
import requests
from axes.models import AccessAttempt
from django.conf import settings as django_settings

from jobsite import throttles
from jobsite.embedded_redis import EmbeddedRedis, free_port
from tests.conftest import PASSWORD

LIMIT = django_settings.AXES_FAILURE_LIMIT


@pytest.fixture
def clients_by_forwarded_address(settings):
    """The live server believes X-Forwarded-For, as behind one proxy, so a test can
    speak from several client addresses."""
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}


def token_request(live_server, username: str, password: str, address: str | None = None):
    headers = {"X-Forwarded-For": address} if address else {}
    return requests.post(
        f"{live_server.url}/api/auth/token/",
        json={"username": username, "password": password},
        headers=headers,
        timeout=10,
    )


def fail(live_server, username: str, times: int, address: str | None = None) -> list[int]:
    return [
        token_request(live_server, username, "wrong-password", address).status_code
        for _ in range(times)
    ]


def form_login(live_server, path: str, username: str, password: str) -> requests.Response:
    with requests.Session() as session:
        page = session.get(f"{live_server.url}{path}", timeout=10)
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        return session.post(
            f"{live_server.url}{path}",
            data={"username": username, "password": password, "csrfmiddlewaretoken": csrf},
            allow_redirects=False,
            timeout=10,
        )


def test_the_token_endpoint_locks_a_username_out_after_the_failure_limit(live_server, user):
    codes = fail(live_server, "alice", LIMIT)

    assert codes == [401] * (LIMIT - 1) + [429]
    refused = token_request(live_server, "alice", PASSWORD)
    assert refused.status_code == 429
    assert refused.json() == {
        "detail": "Too many failed sign-in attempts. Try again later.",
        "code": "locked_out",
    }
    assert int(refused.headers["Retry-After"]) == django_settings.AXES_COOLOFF_TIME.total_seconds()


def test_a_locked_out_username_is_refused_from_every_address(
    live_server, user, other_user, clients_by_forwarded_address
):
    fail(live_server, "alice", LIMIT, address="203.0.113.1")

    assert token_request(live_server, "alice", PASSWORD, "198.51.100.7").status_code == 429
    assert token_request(live_server, "bob", PASSWORD, "198.51.100.7").status_code == 200


def test_an_address_guessing_many_usernames_is_locked_out(
    live_server, user, clients_by_forwarded_address
):
    for i in range(LIMIT):
        token_request(live_server, f"guess{i}", "wrong-password", "203.0.113.2")

    assert token_request(live_server, "alice", PASSWORD, "203.0.113.2").status_code == 429
    assert token_request(live_server, "alice", PASSWORD, "198.51.100.8").status_code == 200


def test_successful_sign_ins_are_never_counted(live_server, user):
    codes = {token_request(live_server, "alice", PASSWORD).status_code for _ in range(LIMIT * 3)}

    assert codes == {200}
    assert not AccessAttempt.objects.exists()


def test_a_success_clears_that_usernames_failures_from_that_address(live_server, user):
    fail(live_server, "alice", LIMIT - 1)
    assert token_request(live_server, "alice", PASSWORD).status_code == 200

    assert fail(live_server, "alice", LIMIT - 1) == [401] * (LIMIT - 1)


def test_signing_in_to_ones_own_account_does_not_clear_guesses_at_another(
    live_server, user, other_user
):
    fail(live_server, "alice", LIMIT - 1)
    assert token_request(live_server, "bob", PASSWORD).status_code == 200

    assert fail(live_server, "alice", 1) == [429]


def test_failures_are_kept_in_the_database(live_server, user):
    fail(live_server, "alice", 2)

    attempt = AccessAttempt.objects.get(username="alice")
    assert attempt.failures_since_start == 2
    assert attempt.ip_address == "127.0.0.1"


def test_the_login_page_locks_out_with_a_429_page(live_server, user):
    codes = [form_login(live_server, "/accounts/login/", "alice", "nope") for _ in range(LIMIT)]

    assert [r.status_code for r in codes] == [200] * (LIMIT - 1) + [429]
    locked = form_login(live_server, "/accounts/login/", "alice", PASSWORD)
    assert locked.status_code == 429
    assert locked.headers["Content-Type"].startswith("text/html")
    assert "Too many failed sign-in attempts" in locked.text
    assert "sessionid" not in locked.cookies


def test_the_admin_login_locks_out_too(live_server, staff_user):
    for _ in range(LIMIT):
        form_login(live_server, "/admin/login/", "carol", "nope")

    locked = form_login(live_server, "/admin/login/", "carol", PASSWORD)

    assert locked.status_code == 429
    assert "Too many failed sign-in attempts" in locked.text


def test_failures_on_the_forms_and_the_api_count_together(live_server, user):
    for _ in range(LIMIT - 1):
        form_login(live_server, "/accounts/login/", "alice", "nope")

    assert fail(live_server, "alice", 1) == [429]


def test_the_login_page_still_signs_in_below_the_limit(live_server, user):
    form_login(live_server, "/accounts/login/", "alice", "nope")

    signed_in = form_login(live_server, "/accounts/login/", "alice", PASSWORD)

    assert signed_in.status_code == 302
    assert not AccessAttempt.objects.filter(username="alice").exists()


# --- the token endpoints' rate limit when Redis cannot be reached --------------------


@pytest.fixture
def throttle_cache(settings):
    """Point the rate limits at another Redis; the test's URL goes in `point(url)`."""

    def point(url: str) -> None:
        settings.CACHES = {
            "default": {**django_settings.CACHES["default"], "LOCATION": url},
        }
        throttles.throttle_redis.cache_clear()

    yield point
    throttles.throttle_redis.cache_clear()


def test_with_redis_unreachable_the_token_endpoints_answer_503(
    live_server, user, live_api, throttle_cache
):
    throttle_cache(f"redis://127.0.0.1:{free_port()}/0")

    obtain = token_request(live_server, "alice", PASSWORD)
    renewed = requests.post(
        f"{live_server.url}/api/auth/token/refresh/", json={"refresh": "x"}, timeout=10
    )

    assert obtain.status_code == renewed.status_code == 503
    assert obtain.json()["code"] == renewed.json()["code"] == "rate_limit_unavailable"
    # The per-user API limit lets requests through instead.
    assert live_api.get("/api/me/").status_code == 200


def test_with_redis_not_answering_the_token_endpoint_answers_503_within_its_timeout(
    live_server, user, throttle_cache, tmp_path
):
    redis_server = EmbeddedRedis(data_dir=tmp_path / "redis", persist=False)
    redis_server.start()
    try:
        throttle_cache(redis_server.url)
        assert token_request(live_server, "alice", PASSWORD).status_code == 200
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            response = token_request(live_server, "alice", PASSWORD)
            elapsed = time.monotonic() - started
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
    finally:
        redis_server.stop()

    assert response.status_code == 503
    assert response.json()["code"] == "rate_limit_unavailable"
    assert elapsed < 2.5
