"""Fuzzing the OpenAPI schema with schemathesis: every documented operation gets generated
requests (valid and invalid) against the live server; none may answer 5xx, and every
answer must be documented (status and content type) and match its schema.

The schema is the one the server serves at /api/schema/. Staff-only operations are
fuzzed as staff too. The token endpoints are fuzzed without credentials, in a test of
their own: the failed logins they see count towards lock-outs, which must not reach the
user the other operations are fuzzed as. The suite sets the rate limits high
(tests/plugin.py), so the run is not throttled.
"""

import hypothesis
import pytest
import requests
import schemathesis
from django.apps import apps
from django.contrib.auth.models import Permission
from drf_spectacular.generators import SchemaGenerator
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.security.matrix import World, png_bytes

pytestmark = pytest.mark.fuzz

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
TOKEN_ENDPOINTS = r"^/api/auth/"
# A plain user only ever gets 403 there.
STAFF_ONLY = r"^/api/(notes/images/cleanup/$|controls/|audit/$|schedules/)"
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


@pytest.fixture(autouse=True)
def short_event_streams(settings):
    """An event stream answers and ends at once instead of holding the fuzzer."""
    settings.PUSH_STREAM_SECONDS = 0


@pytest.fixture
def bearer(live_api) -> dict[str, str]:
    """The JWT of a plain signed-in user."""
    return {"Authorization": live_api.session.headers["Authorization"]}


@pytest.fixture
def staff_bearer(live_staff_api) -> dict[str, str]:
    return {"Authorization": live_staff_api.session.headers["Authorization"]}


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


@schema.include(path_regex=STAFF_ONLY).parametrize()
@FUZZ_SETTINGS
def test_staff_operations_answer_staff_as_documented(case, live_server, staff_bearer):
    case.call_and_validate(base_url=live_server.url, headers=staff_bearer, checks=CHECKS)


@schema.include(path_regex=TOKEN_ENDPOINTS).parametrize()
@FUZZ_SETTINGS
def test_the_token_endpoints_answer_strangers_as_documented(
    case, live_server, forget_failed_logins
):
    case.call_and_validate(base_url=live_server.url, checks=CHECKS)


# A request each operation answers with success, so that the success answers are checked
# against the schema too (generated requests rarely name an object that exists).
# (method, path, expected status, role, the case's fields from the user's objects)
SUCCESSES = [
    ("GET", "/api/me/", 200, "user", lambda w: {}),
    ("POST", "/api/auth/token/", 200, "anonymous", lambda w: {"body": CREDENTIALS}),
    ("POST", "/api/auth/token/refresh/", 200, "anonymous", lambda w: refresh_body(w)),
    ("POST", "/api/auth/token/revoke/", 200, "anonymous", lambda w: refresh_body(w)),
    ("GET", "/api/job-types/", 200, "user", lambda w: {}),
    ("GET", "/api/jobs/", 200, "user", lambda w: {}),
    ("POST", "/api/jobs/", 202, "user", lambda w: {"body": {"type": "system.noop"}}),
    (
        "POST",
        "/api/jobs/bulk/",
        202,
        "user",
        lambda w: {"body": {"jobs": [{"type": "system.noop"}]}},
    ),
    ("GET", "/api/jobs/stats/", 200, "user", lambda w: {}),
    ("GET", "/api/events/", 200, "user", lambda w: {}),
    ("GET", "/api/jobs/{id}/", 200, "user", lambda w: object_id(w, "job")),
    ("DELETE", "/api/jobs/{id}/", 200, "user", lambda w: object_id(w, "job")),
    ("POST", "/api/jobs/{id}/cancel/", 200, "user", lambda w: object_id(w, "job")),
    ("POST", "/api/jobs/{id}/retry/", 202, "user", lambda w: object_id(w, "failed_job")),
    ("GET", "/api/jobs/{id}/status/", 200, "user", lambda w: object_id(w, "job")),
    ("GET", "/api/batches/", 200, "user", lambda w: {}),
    (
        "POST",
        "/api/batches/",
        201,
        "user",
        lambda w: {
            "body": {"jobs": [{"type": "system.noop"}], "on_complete": {"type": "system.noop"}}
        },
    ),
    ("GET", "/api/batches/{id}/", 200, "user", lambda w: object_id(w, "batch")),
    ("POST", "/api/batches/{id}/cancel/", 200, "user", lambda w: object_id(w, "batch")),
    ("GET", "/api/batches/{id}/jobs/", 200, "user", lambda w: object_id(w, "batch")),
    ("GET", "/api/reports/", 200, "user", lambda w: {}),
    ("POST", "/api/reports/", 202, "user", lambda w: {"body": {"kind": "job_activity"}}),
    ("GET", "/api/reports/{id}/", 200, "user", lambda w: object_id(w, "report")),
    ("DELETE", "/api/reports/{id}/", 200, "user", lambda w: object_id(w, "report")),
    ("POST", "/api/reports/{id}/cancel/", 200, "user", lambda w: object_id(w, "report")),
    ("POST", "/api/reports/{id}/retry/", 202, "user", lambda w: object_id(w, "failed_report")),
    ("GET", "/api/reports/{id}/status/", 200, "user", lambda w: object_id(w, "report")),
    ("GET", "/api/reports/{id}/download/", 200, "user", lambda w: object_id(w, "ready_report")),
    ("GET", "/api/notes/pages/", 200, "user", lambda w: {}),
    ("POST", "/api/notes/pages/", 201, "user", lambda w: {"body": {"title": "Kitchen"}}),
    ("GET", "/api/notes/pages/{id}/", 200, "user", lambda w: object_id(w, "page")),
    ("PUT", "/api/notes/pages/{id}/", 202, "user", lambda w: object_id(w, "page", content="x")),
    ("PATCH", "/api/notes/pages/{id}/", 202, "user", lambda w: object_id(w, "page", title="y")),
    ("DELETE", "/api/notes/pages/{id}/", 204, "user", lambda w: object_id(w, "page")),
    ("GET", "/api/notes/images/", 200, "user", lambda w: {}),
    ("POST", "/api/notes/images/", 202, "user", lambda w: upload(png_bytes())),
    ("POST", "/api/notes/images/cleanup/", 202, "staff", lambda w: {"body": {}}),
    ("GET", "/api/notes/images/{id}/", 200, "user", lambda w: object_id(w, "image")),
    ("GET", "/api/notes/images/{id}/content/", 200, "user", lambda w: object_id(w, "image")),
    ("DELETE", "/api/notes/images/{id}/", 204, "user", lambda w: object_id(w, "image")),
    ("GET", "/api/webhooks/", 200, "user", lambda w: {}),
    ("POST", "/api/webhooks/", 201, "user", lambda w: {"body": {"url": PUBLIC_HOOK}}),
    ("GET", "/api/webhooks/{id}/", 200, "user", lambda w: object_id(w, "webhook")),
    ("PATCH", "/api/webhooks/{id}/", 200, "user", lambda w: object_id(w, "webhook", active=False)),
    ("DELETE", "/api/webhooks/{id}/", 204, "user", lambda w: object_id(w, "webhook")),
    ("POST", "/api/webhooks/{id}/rotate-secret/", 200, "user", lambda w: object_id(w, "webhook")),
    ("GET", "/api/webhooks/{id}/deliveries/", 200, "user", lambda w: object_id(w, "webhook")),
    ("POST", "/api/webhooks/{id}/test/", 202, "user", lambda w: object_id(w, "webhook")),
    ("GET", "/api/webhooks/deliveries/{id}/", 200, "user", lambda w: object_id(w, "delivery")),
    (
        "POST",
        "/api/webhooks/deliveries/{id}/replay/",
        202,
        "user",
        lambda w: object_id(w, "delivery"),
    ),
    ("GET", "/api/controls/", 200, "staff", lambda w: {}),
    ("POST", "/api/controls/{scope}/{name}/pause/", 200, "operator", lambda w: control("queue")),
    ("POST", "/api/controls/{scope}/{name}/resume/", 200, "operator", lambda w: control("type")),
    ("PUT", "/api/controls/type/{name}/limits/", 200, "operator", lambda w: limits({"rate": 9})),
    ("DELETE", "/api/controls/type/{name}/limits/", 200, "operator", lambda w: limits(None)),
    ("GET", "/api/audit/", 200, "staff", lambda w: {}),
    ("GET", "/api/schedules/", 200, "staff", lambda w: {}),
    ("GET", "/api/schedules/{name}/", 200, "staff", lambda w: schedule()),
    ("POST", "/api/schedules/{name}/pause/", 200, "operator", lambda w: schedule()),
    ("POST", "/api/schedules/{name}/resume/", 200, "operator", lambda w: schedule()),
    ("POST", "/api/schedules/{name}/run-now/", 202, "operator", lambda w: schedule()),
    ("GET", "/api/notes/tasks/", 200, "user", lambda w: {}),
    ("POST", "/api/notes/tasks/", 201, "user", lambda w: {"body": {"title": "Sow"}}),
    ("GET", "/api/notes/tasks/{id}/", 200, "user", lambda w: object_id(w, "task")),
    ("PUT", "/api/notes/tasks/{id}/", 200, "user", lambda w: object_id(w, "task", title="Reap")),
    ("PATCH", "/api/notes/tasks/{id}/", 200, "user", lambda w: object_id(w, "task", done=True)),
    ("DELETE", "/api/notes/tasks/{id}/", 204, "user", lambda w: object_id(w, "task")),
]
# A public address, so the endpoint is accepted without a name to resolve.
PUBLIC_HOOK = "https://93.184.215.14/hooks"
CREDENTIALS = {"username": "alice", "password": "correct-horse-battery-staple"}


def object_id(world: World, name: str, **body) -> dict:
    fields = {"path_parameters": {"id": str(world.values[name])}}
    return {**fields, "body": body} if body else fields


def control(scope: str) -> dict:
    name = "emails" if scope == "queue" else "system.noop"
    return {"path_parameters": {"scope": scope, "name": name}}


def limits(body: dict | None) -> dict:
    fields = {"path_parameters": {"name": "system.noop"}}
    return {**fields, "body": body} if body is not None else fields


def schedule() -> dict:
    # A declared schedule of a job type, synced into django-celery-beat after `migrate`.
    return {"path_parameters": {"name": "purge"}}


def refresh_body(world: World) -> dict:
    return {"body": {"refresh": world.values["refresh_token"]}}


def upload(data: bytes) -> dict:
    return {"body": {"file": data}, "media_type": "multipart/form-data"}


def test_every_operation_has_a_success_example():
    documented = {(op.method.upper(), op.path) for op in _operations()}
    listed = {(method, path) for method, path, *_ in SUCCESSES}
    assert documented - listed == set(), "Add to SUCCESSES a request that succeeds for each"
    assert listed - documented == set(), "SUCCESSES for operations the schema lacks"


@pytest.fixture
def operator_bearer(staff_user, staff_bearer) -> dict[str, str]:
    """The JWT of staff who may pause, change limits and change schedules."""
    codenames = ["pause_jobs", "change_limits", "change_periodictask"]
    staff_user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return staff_bearer


def test_success_answers_match_the_schema(live_server, user, bearer, operator_bearer):
    # Staff's permissions only add to what the staff flag allows.
    headers = {
        "user": bearer,
        "staff": operator_bearer,
        "operator": operator_bearer,
        "anonymous": {},
    }
    wrong = []
    for method, path, expected, role, fields in SUCCESSES:
        world = World.create(user)
        case = schema[path][method].Case(**{"media_type": "application/json", **fields(world)})
        try:
            response = case.call_and_validate(
                base_url=live_server.url, headers=headers[role], checks=CHECKS
            )
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis raises a group
            wrong.append(f"{method} {path}: {exc}")
            continue
        if response.status_code != expected:
            wrong.append(f"{method} {path}: {response.status_code}, expected {expected}")
    assert not wrong, "Success answers that are not as documented:\n" + "\n\n".join(wrong)


def _operations():
    return [result.ok() for result in schema.get_all_operations()]
