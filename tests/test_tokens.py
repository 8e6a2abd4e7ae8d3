"""API tokens: signed with a key of their own, bound to the user's password, refresh
tokens used once (rotation with a blacklist) and revocable."""

import time
import uuid
from datetime import timedelta

import jwt
import pytest
import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken

from jobs import services
from jobs.models import Job, Status
from jobsite.auth import AccessToken
from tests.conftest import PASSWORD
from tests.engine import run
from tests.support import run_in_threads

OLD_DEVELOPMENT_KEY = "insecure-development-key-do-not-use-in-production"


@pytest.fixture
def admin(transactional_db):
    return get_user_model().objects.create_superuser("root", "root@example.com", PASSWORD)


def forged_access_token(user_id: int, key: str) -> str:
    now = int(time.time())
    claims = {
        "token_type": "access",
        "exp": now + 600,
        "iat": now,
        "jti": uuid.uuid4().hex,
        "user_id": str(user_id),
    }
    return jwt.encode(claims, key, algorithm="HS256")


def me(live_server, access: str) -> requests.Response:
    return requests.get(
        f"{live_server.url}/api/me/", headers={"Authorization": f"Bearer {access}"}, timeout=10
    )


def obtain(live_server, username: str, password: str = PASSWORD) -> dict:
    response = requests.post(
        f"{live_server.url}/api/auth/token/",
        json={"username": username, "password": password},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.json()


def refresh(live_server, token: str) -> requests.Response:
    return requests.post(
        f"{live_server.url}/api/auth/token/refresh/", json={"refresh": token}, timeout=10
    )


def test_a_token_signed_with_the_old_development_key_is_refused(live_server, admin):
    response = me(live_server, forged_access_token(admin.id, OLD_DEVELOPMENT_KEY))

    assert response.status_code == 401
    assert response.json()["code"] == "token_not_valid"


def test_a_token_signed_with_the_secret_key_itself_is_refused(live_server, admin):
    assert settings.SIMPLE_JWT["SIGNING_KEY"] != settings.SECRET_KEY

    response = me(live_server, forged_access_token(admin.id, settings.SECRET_KEY))

    assert response.status_code == 401
    assert response.json()["code"] == "token_not_valid"


def test_a_token_with_the_signing_key_but_no_password_claim_is_refused(live_server, admin):
    response = me(live_server, forged_access_token(admin.id, settings.SIMPLE_JWT["SIGNING_KEY"]))

    assert response.status_code == 401
    assert response.json()["code"] == "token_revoked"


def test_an_issued_token_signs_in(live_server, admin):
    tokens = obtain(live_server, "root")

    response = me(live_server, tokens["access"])

    assert response.status_code == 200
    assert response.json()["username"] == "root"


def test_a_refresh_gives_a_new_pair_and_the_used_refresh_token_is_refused(live_server, user):
    first = obtain(live_server, "alice")

    renewed = refresh(live_server, first["refresh"])
    assert renewed.status_code == 200
    second = renewed.json()
    assert second["refresh"] != first["refresh"]
    assert me(live_server, second["access"]).json()["username"] == "alice"

    reused = refresh(live_server, first["refresh"])
    assert reused.status_code == 401
    assert reused.json()["code"] == "token_not_valid"
    assert refresh(live_server, second["refresh"]).status_code == 200


def test_a_refresh_token_sent_twice_at_once_is_honoured_once(live_server, user):
    token = obtain(live_server, "alice")["refresh"]

    codes = run_in_threads(4, lambda i: refresh(live_server, token).status_code)

    assert sorted(codes) == [200, 401, 401, 401]


def test_tokens_issued_before_a_password_change_are_refused(live_server, user):
    tokens = obtain(live_server, "alice")
    user.set_password("a-new-password-for-alice")
    user.save()

    access = me(live_server, tokens["access"])
    renewed = refresh(live_server, tokens["refresh"])

    assert access.status_code == 401
    assert access.json()["code"] == "token_revoked"
    assert renewed.status_code == 401
    assert renewed.json()["code"] == "token_revoked"
    fresh = obtain(live_server, "alice", "a-new-password-for-alice")
    assert me(live_server, fresh["access"]).status_code == 200


def test_access_tokens_from_a_refresh_are_bound_to_the_password_too(live_server, user):
    renewed = refresh(live_server, obtain(live_server, "alice")["refresh"]).json()
    user.set_password("a-new-password-for-alice")
    user.save()

    assert me(live_server, renewed["access"]).status_code == 401


def test_a_revoked_refresh_token_is_refused(live_server, user):
    tokens = obtain(live_server, "alice")

    revoked = requests.post(
        f"{live_server.url}/api/auth/token/revoke/", json={"refresh": tokens["refresh"]}, timeout=10
    )

    assert revoked.status_code == 200
    response = refresh(live_server, tokens["refresh"])
    assert response.status_code == 401
    assert response.json()["code"] == "token_not_valid"


def test_revoking_needs_a_valid_refresh_token(live_server, user):
    access = obtain(live_server, "alice")["access"]

    for token in ("not-a-token", access):
        response = requests.post(
            f"{live_server.url}/api/auth/token/revoke/", json={"refresh": token}, timeout=10
        )
        assert response.status_code == 401
        assert response.json()["code"] == "token_not_valid"


def test_a_refresh_token_of_a_deleted_user_is_a_401(live_server, user):
    token = obtain(live_server, "alice")["refresh"]
    user.delete()

    response = refresh(live_server, token)

    assert response.status_code == 401
    assert response.json()["code"] == "no_active_account"


def test_checking_a_token_costs_one_query_for_the_user(user, django_assert_num_queries):
    client = Client(HTTP_AUTHORIZATION=f"Bearer {AccessToken.for_user(user)}")

    with django_assert_num_queries(1):
        assert client.get("/api/me/").status_code == 200


def test_the_token_cleanup_job_deletes_expired_tokens_and_keeps_current_ones(live_server, user):
    revoked, expired, current = (obtain(live_server, "alice") for _ in range(3))
    revoke_url = f"{live_server.url}/api/auth/token/revoke/"
    requests.post(revoke_url, json={"refresh": revoked["refresh"]}, timeout=10)
    past = timezone.now() - timedelta(minutes=1)
    for tokens in (revoked, expired):
        jti = jwt.decode(tokens["refresh"], options={"verify_signature": False})["jti"]
        OutstandingToken.objects.filter(jti=jti).update(expires_at=past)

    job = services.enqueue("system.flush_expired_tokens").job
    assert run(job) == Status.SUCCEEDED

    assert Job.objects.get(id=job.id).result["tokens"] == 2
    assert OutstandingToken.objects.count() == 1
    assert BlacklistedToken.objects.count() == 0
    assert refresh(live_server, current["refresh"]).status_code == 200
