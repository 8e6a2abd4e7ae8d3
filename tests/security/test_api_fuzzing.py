"""Fuzzing the OpenAPI schema with schemathesis: every documented operation gets generated
requests (valid and invalid) against the live server; none may answer 5xx, and every
answer must be documented (status and content type) and match its schema.

The schema is the one the server serves at /api/schema/. The token endpoints are fuzzed
without credentials, in a test of their own: the failed logins they see count towards
lock-outs, which must not reach the user the other operations are fuzzed as. The suite
sets the rate limits high (tests/plugin.py), so the run is not throttled.
"""

import hypothesis
import pytest
import requests
import schemathesis
from django.apps import apps
from drf_spectacular.generators import SchemaGenerator
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import _token_for

pytestmark = pytest.mark.fuzz

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
TOKEN_ENDPOINTS = r"^/api/auth/"
# Bounded so the whole file takes a minute or two on two cores; derandomized so a
# failure comes back on the next run.
FUZZ_SETTINGS = hypothesis.settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)

# Generated here to name one test per operation; `test_the_server_serves_the_fuzzed_schema`
# checks that it is the schema the live server serves.
SCHEMA_DOCUMENT = SchemaGenerator().get_schema(request=None, public=True)
schema = schemathesis.openapi.from_dict(SCHEMA_DOCUMENT)


@pytest.fixture
def bearer(live_server, user) -> dict[str, str]:
    return {"Authorization": f"Bearer {_token_for(live_server.url, user.username)}"}


@pytest.fixture
def forget_failed_logins():
    """The failed logins of the token fuzzing lock no one out in the tests after it."""
    yield
    if apps.is_installed("axes"):
        from axes.utils import reset

        reset()


def test_the_server_serves_the_fuzzed_schema(live_server):
    served = requests.get(f"{live_server.url}/api/schema/?format=json", timeout=30)

    assert served.status_code == 200
    assert served.json() == SCHEMA_DOCUMENT


@schema.exclude(path_regex=TOKEN_ENDPOINTS).parametrize()
@FUZZ_SETTINGS
def test_each_operation_answers_a_signed_in_user_as_documented(case, live_server, bearer):
    case.call_and_validate(base_url=live_server.url, headers=bearer, checks=CHECKS)


@schema.include(path_regex=TOKEN_ENDPOINTS).parametrize()
@FUZZ_SETTINGS
def test_the_token_endpoints_answer_strangers_as_documented(
    case, live_server, forget_failed_logins
):
    case.call_and_validate(base_url=live_server.url, checks=CHECKS)
