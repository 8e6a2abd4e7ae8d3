"""Who may call what. Every URL pattern of the project, read from the URL configuration,
has a row per method it answers, with the exact status for each of five roles:

- anonymous: no credentials;
- owner: owns the object in the URL (on lists and creates: any signed-in user);
- other: another signed-in user;
- staff: `is_staff` and nothing else (no model permission, no group);
- superuser.

The API is called with a JWT, the pages with a session cookie (and a CSRF token, so only
authorization decides). LOGIN means a 302 to a login page. The Django admin and
django.contrib.auth are covered by a sample of their views.

A new URL pattern without rows fails `test_every_url_pattern_has_a_row_for_each_method`,
which prints the rows to add; a row whose path no longer resolves fails
`test_every_row_names_an_existing_url_pattern`; a method a pattern has no row for must be
refused with 405 (`test_methods_without_a_row_are_refused`).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from django.core.management import call_command
from django.test import override_settings
from pytest_django.live_server_helper import LiveServer

from tests.security.matrix import (
    LOGIN,
    ROLES,
    UNSAFE_METHODS,
    Body,
    Caller,
    Expected,
    People,
    Row,
    World,
    form_body,
    json_body,
    observed,
    pattern_of,
    placeholder_world,
    png_bytes,
    project_patterns,
    row,
    upload_body,
)

# The cells read the outcome of one module-wide run (see `outcomes`) on a live server of
# its own; the django_db mark only makes pytest-django set up the test database, each
# test's own transaction is empty.
pytestmark = [pytest.mark.django_db, pytest.mark.live]

# Paths name the owner's objects: {job} queued, {failed_job}, {page}, {image} (a stored PNG;
# {task}, {report} (being made),
# {failed_report}, {ready_report} (with its PDF). Unsafe requests get fresh objects.
#

# fmt: off
TABLE: list[Row] = [
    #   method   path                                     anon.  owner  other  staff  superuser
    # --- accounts and tokens
    row("GET",   "/api/me/",                              401,   200,   200,   200,   200),
    row("POST",  "/api/auth/token/",                      200,   200,   200,   200,   200),
    row("POST",  "/api/auth/token/refresh/",              200,   200,   200,   200,   200),
    # the refresh token is the proof: whoever holds it may sign it out
    row("POST",  "/api/auth/token/revoke/",               200,   200,   200,   200,   200),
    # --- the schema and its browsable docs are public
    row("GET",   "/api/schema/",                          200,   200,   200,   200,   200),
    row("GET",   "/api/docs/",                            200,   200,   200,   200,   200),
    # --- jobs: staff see every user's jobs; acting on them takes a permission
    row("GET",   "/api/job-types/",                       401,   200,   200,   200,   200),
    row("GET",   "/api/jobs/",                            401,   200,   200,   200,   200),
    row("POST",  "/api/jobs/",                            401,   202,   202,   202,   202),
    row("POST",  "/api/jobs/bulk/",                       401,   202,   202,   202,   202),
    row("GET",   "/api/jobs/stats/",                      401,   200,   200,   200,   200),
    row("GET",   "/api/jobs/{job}/",                      401,   200,   404,   200,   200),
    row("DELETE", "/api/jobs/{job}/",                     401,   200,   404,   403,   200),
    row("POST",  "/api/jobs/{job}/cancel/",               401,   200,   404,   403,   200),
    row("POST",  "/api/jobs/{failed_job}/retry/",         401,   202,   404,   403,   202),
    row("GET",   "/api/jobs/{job}/status/",               401,   200,   404,   200,   200),
    # --- batches: as jobs
    row("GET",   "/api/batches/",                         401,   200,   200,   200,   200),
    row("POST",  "/api/batches/",                         401,   201,   201,   201,   201),
    row("GET",   "/api/batches/{batch}/",                 401,   200,   404,   200,   200),
    row("POST",  "/api/batches/{batch}/cancel/",          401,   200,   404,   403,   200),
    row("GET",   "/api/batches/{batch}/jobs/",            401,   200,   404,   200,   200),
    # live updates: everyone signed in gets a stream, of their own jobs' changes
    row("GET",   "/api/events/",                          401,   200,   200,   200,   200),
    # --- operators' controls, audit log and schedules: staff; acting takes jobs.pause_jobs
    # or jobs.change_limits
    row("GET",   "/api/controls/",                        401,   403,   403,   200,   200),
    row("POST",  "/api/controls/queue/emails/pause/",     401,   403,   403,   403,   200),
    row("POST",  "/api/controls/type/system.noop/resume/", 401,  403,   403,   403,   200),
    row("PUT",   "/api/controls/type/system.noop/limits/", 401,  403,   403,   403,   200),
    row("DELETE", "/api/controls/type/system.noop/limits/", 401, 403,   403,   403,   200),
    row("GET",   "/api/audit/",                           401,   403,   403,   200,   200),
    # schedules: staff read them; pausing, resuming and running one now take
    # django_celery_beat.change_periodictask
    row("GET",   "/api/schedules/",                       401,   403,   403,   200,   200),
    row("GET",   "/api/schedules/purge/",                 401,   403,   403,   200,   200),
    row("POST",  "/api/schedules/purge/pause/",           401,   403,   403,   403,   200),
    row("POST",  "/api/schedules/purge/resume/",          401,   403,   403,   403,   200),
    row("POST",  "/api/schedules/purge/run-now/",         401,   403,   403,   403,   202),
    # --- reports: each user's own, staff included
    row("GET",   "/api/reports/",                         401,   200,   200,   200,   200),
    row("POST",  "/api/reports/",                         401,   202,   202,   202,   202),
    row("GET",   "/api/reports/{report}/",                401,   200,   404,   404,   404),
    row("DELETE", "/api/reports/{report}/",               401,   200,   404,   404,   404),
    row("POST",  "/api/reports/{report}/cancel/",         401,   200,   404,   404,   404),
    row("POST",  "/api/reports/{failed_report}/retry/",   401,   202,   404,   404,   404),
    row("GET",   "/api/reports/{report}/status/",         401,   200,   404,   404,   404),
    row("GET",   "/api/reports/{ready_report}/download/", 401,   200,   404,   404,   404),
    # --- notes: each user's own, staff included; the image clean-up is for staff
    row("GET",   "/api/notes/pages/",                     401,   200,   200,   200,   200),
    row("POST",  "/api/notes/pages/",                     401,   201,   201,   201,   201),
    row("GET",   "/api/notes/pages/{page}/",              401,   200,   404,   404,   404),
    row("PUT",   "/api/notes/pages/{page}/",              401,   202,   404,   404,   404),
    row("PATCH", "/api/notes/pages/{page}/",              401,   202,   404,   404,   404),
    row("DELETE", "/api/notes/pages/{page}/",             401,   204,   404,   404,   404),
    row("GET",   "/api/notes/images/",                    401,   200,   200,   200,   200),
    row("POST",  "/api/notes/images/",                    401,   202,   202,   202,   202),
    row("POST",  "/api/notes/images/cleanup/",            401,   403,   403,   202,   202),
    row("GET",   "/api/notes/images/{image}/",            401,   200,   404,   404,   404),
    row("DELETE", "/api/notes/images/{image}/",           401,   204,   404,   404,   404),
    row("GET",   "/api/notes/images/{image}/content/",    401,   200,   404,   404,   404),
    row("GET",   "/api/notes/tasks/",                     401,   200,   200,   200,   200),
    row("POST",  "/api/notes/tasks/",                     401,   201,   201,   201,   201),
    row("GET",   "/api/notes/tasks/{task}/",              401,   200,   404,   404,   404),
    row("PUT",   "/api/notes/tasks/{task}/",              401,   200,   404,   404,   404),
    row("PATCH", "/api/notes/tasks/{task}/",              401,   200,   404,   404,   404),
    row("DELETE", "/api/notes/tasks/{task}/",             401,   204,   404,   404,   404),
    # --- webhooks: each user's own; staff see everyone's but change only their own;
    # replaying another user's delivery takes webhooks.replay_webhookdelivery (as in the admin)
    row("GET",   "/api/webhooks/",                        401,   200,   200,   200,   200),
    row("POST",  "/api/webhooks/",                        401,   201,   201,   201,   201),
    row("GET",   "/api/webhooks/{webhook}/",              401,   200,   404,   200,   200),
    row("PATCH", "/api/webhooks/{webhook}/",              401,   200,   404,   403,   403),
    row("DELETE", "/api/webhooks/{webhook}/",             401,   204,   404,   403,   403),
    row("POST",  "/api/webhooks/{webhook}/rotate-secret/", 401,  200,   404,   403,   403),
    row("GET",   "/api/webhooks/{webhook}/deliveries/",   401,   200,   404,   200,   200),
    row("POST",  "/api/webhooks/{webhook}/test/",         401,   202,   404,   403,   403),
    row("GET",   "/api/webhooks/deliveries/{delivery}/",  401,   200,   404,   200,   200),
    row("POST",  "/api/webhooks/deliveries/{delivery}/replay/", 401, 202, 404,  403,   202),
    # --- operators. No worker runs here, so /health/ reports the workers check failing.
    row("GET",   "/health/",                              503,   503,   503,   503,   503),
    # The metrics token or a staff session; requests from loopback are not trusted.
    row("GET",   "/metrics",                              401,   403,   403,   200,   200),
    row("GET",   "/dashboard/",                           LOGIN, 403,   403,   200,   200),
    row("GET",   "/dashboard/data/",                      LOGIN, 403,   403,   200,   200),
    row("GET",   "/dashboard/history/",                   LOGIN, 403,   403,   200,   200),
    row("POST",  "/dashboard/retry-failed/",              LOGIN, 403,   403,   403,   302),
    row("POST",  "/dashboard/jobs/{failed_job}/retry/",   LOGIN, 403,   403,   403,   302),
    # pause and limits take jobs.pause_jobs and jobs.change_limits, schedules
    # django_celery_beat.change_periodictask
    row("POST",  "/dashboard/controls/queue/emails/pause/", LOGIN, 403, 403,   403,   302),
    row("POST",  "/dashboard/controls/type/system.noop/resume/", LOGIN, 403, 403, 403, 302),
    row("POST",  "/dashboard/controls/type/system.noop/limits/", LOGIN, 403, 403, 403, 302),
    row("POST",  "/dashboard/schedules/purge/switch/",    LOGIN, 403,   403,   403,   302),
    row("POST",  "/dashboard/schedules/purge/run/",       LOGIN, 403,   403,   403,   302),
    # batches: staff see every batch; cancelling one takes jobs.cancel_job
    row("GET",   "/dashboard/batches/",                   LOGIN, 403,   403,   200,   200),
    row("GET",   "/dashboard/batches/{batch}/",           LOGIN, 403,   403,   200,   200),
    row("POST",  "/dashboard/batches/{batch}/cancel/",    LOGIN, 403,   403,   403,   302),
    # --- the reports pages: each user's own
    row("GET",   "/",                                     302,   302,   302,   302,   302),
    row("GET",   "/reports/",                             LOGIN, 200,   200,   200,   200),
    row("POST",  "/reports/",                             LOGIN, 302,   302,   302,   302),
    row("GET",   "/reports/rows/",                        LOGIN, 200,   200,   200,   200),
    row("GET",   "/reports/{report}/row/",                LOGIN, 200,   404,   404,   404),
    row("POST",  "/reports/{report}/cancel/",             LOGIN, 302,   404,   404,   404),
    row("POST",  "/reports/{failed_report}/retry/",       LOGIN, 302,   404,   404,   404),
    row("GET",   "/reports/{ready_report}/download/",     LOGIN, 200,   404,   404,   404),
    # --- samples: the Django admin (the staff flag alone opens no model) ...
    row("GET",   "/admin/",                               LOGIN, LOGIN, LOGIN, 200,   200),
    row("GET",   "/admin/login/",                         200,   200,   200,   302,   302),
    row("GET",   "/admin/jobs/job/",                      LOGIN, LOGIN, LOGIN, 403,   200),
    row("POST",  "/admin/jobs/job/",                      LOGIN, LOGIN, LOGIN, 403,   302),
    row("GET",   "/admin/jobs/job/{job}/change/",         LOGIN, LOGIN, LOGIN, 403,   200),
    row("GET",   "/admin/notes/page/",                    LOGIN, LOGIN, LOGIN, 403,   200),
    row("GET",   "/admin/jobs/batch/",                    LOGIN, LOGIN, LOGIN, 403,   200),
    row("GET",   "/admin/jobs/control/",                  LOGIN, LOGIN, LOGIN, 403,   200),
    row("GET",   "/admin/jobs/operatoraction/",           LOGIN, LOGIN, LOGIN, 403,   200),
    # ... and django.contrib.auth
    row("GET",   "/accounts/login/",                      200,   200,   200,   200,   200),
    row("POST",  "/accounts/logout/",                     LOGIN, LOGIN, LOGIN, LOGIN, LOGIN),
    row("GET",   "/accounts/password_change/",            LOGIN, 200,   200,   200,   200),
]
# fmt: on

# What unsafe requests send, so that the status reflects authorization, not validation.
BODIES: dict[tuple[str, str], Body] = {
    ("POST", "/api/auth/token/"): json_body(
        {"username": "owner", "password": "correct-horse-battery-staple"}
    ),
    ("POST", "/api/auth/token/refresh/"): json_body(
        lambda w: {"refresh": w.values["refresh_token"]}
    ),
    ("POST", "/api/auth/token/revoke/"): json_body(
        lambda w: {"refresh": w.values["refresh_token"]}
    ),
    ("POST", "/api/jobs/"): json_body({"type": "system.noop"}),
    ("POST", "/api/jobs/bulk/"): json_body({"jobs": [{"type": "system.noop"}]}),
    ("POST", "/api/batches/"): json_body({"jobs": [{"type": "system.noop"}]}),
    ("POST", "/api/reports/"): json_body({"kind": "job_activity"}),
    ("POST", "/api/notes/pages/"): json_body({"title": "Kitchen"}),
    ("PUT", "/api/notes/pages/{page}/"): json_body({"title": "Garden", "content": "Tulips"}),
    ("PATCH", "/api/notes/pages/{page}/"): json_body({"content": "Tulips"}),
    ("POST", "/api/notes/images/"): upload_body("tulips.png", png_bytes()),
    ("POST", "/api/notes/images/cleanup/"): json_body({"type": "mark-orphaned"}),
    ("POST", "/api/notes/tasks/"): json_body({"title": "Sow"}),
    ("POST", "/api/webhooks/"): json_body({"url": "https://93.184.215.14/hooks"}),
    ("PATCH", "/api/webhooks/{webhook}/"): json_body({"description": "Alerts"}),
    ("PUT", "/api/notes/tasks/{task}/"): json_body({"title": "Sow", "done": True}),
    ("PATCH", "/api/notes/tasks/{task}/"): json_body({"done": True}),
    ("POST", "/reports/"): form_body({"kind": "job_activity"}),
    ("PUT", "/api/controls/type/system.noop/limits/"): json_body({"rate": 100}),
    ("POST", "/dashboard/controls/type/system.noop/limits/"): form_body({"rate": "100"}),
    ("POST", "/dashboard/schedules/purge/switch/"): form_body({"enabled": "1"}),
    ("POST", "/admin/jobs/job/"): form_body(
        lambda w: {"action": "retry_jobs", "_selected_action": [str(w.values["failed_job"])]}
    ),
}

Cell = tuple[Row, str]
CELLS: list[Cell] = [(r, role) for r in TABLE for role in ROLES]
PROBED_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def unlisted_requests() -> list[tuple[str, str, str]]:
    """(role, method, path) for each method no row lists, on a path of each project
    pattern, sent as a role the pattern's first row lets through (the owner, else the
    superuser), so that only the method can be refused."""
    project_routes = {pattern.route for pattern in project_patterns()}
    listed: dict[str, set[str]] = {}
    first_row: dict[str, Row] = {}
    for r in TABLE:
        route = pattern_of(placeholder_world().fill(r.path))
        if route in project_routes:
            listed.setdefault(route, set()).add(r.method)
            first_row.setdefault(route, r)
    return [
        (_admitted_role(first), method, first.path)
        for route, first in first_row.items()
        for method in PROBED_METHODS
        if method not in listed[route]
    ]


def _admitted_role(first: Row) -> str:
    admitted = [role for role in ("owner", "superuser") if first.expected[role] in range(200, 400)]
    return admitted[0] if admitted else "superuser"


@dataclass
class Outcomes:
    cells: dict[tuple[str, str], Expected]  # (row label, role): what the role got
    unlisted: dict[str, Expected]  # "METHOD path as role" no row lists: what it got


@pytest.fixture(scope="module")
def outcomes(django_db_setup, django_db_blocker) -> Outcomes:
    """Every cell's observed status, from one run over the table: users and a live server
    made once for the module, the database flushed once at the end."""
    # An event stream answers at once and ends, instead of holding the caller.
    with django_db_blocker.unblock(), override_settings(PUSH_STREAM_SECONDS=0):
        server = LiveServer("127.0.0.1:0")
        try:
            people = People.create()
            caller = Caller(server.url, people)
            shared = World.create(people.owner)
            results = {}
            for matrix_row, role in CELLS:
                world = (
                    World.create(people.owner) if matrix_row.method in UNSAFE_METHODS else shared
                )
                body = BODIES.get((matrix_row.method, matrix_row.path))
                response = caller.send(
                    role,
                    matrix_row.method,
                    world.fill(matrix_row.path),
                    **(body(world) if body else {}),
                )
                results[(matrix_row.label, role)] = observed(response)
            unlisted = {}
            for role, method, path in unlisted_requests():
                world = World.create(people.owner)
                response = caller.send(role, method, world.fill(path))
                unlisted[f"{method} {path} as {role}"] = observed(response)
        finally:
            server.stop()
            call_command("flush", verbosity=0, interactive=False)
    return Outcomes(results, unlisted)


@pytest.mark.parametrize(
    ("matrix_row", "role"), CELLS, ids=[f"{r.label} as {role}" for r, role in CELLS]
)
def test_each_role_gets_the_status_its_row_says(outcomes, matrix_row: Row, role: str):
    got = outcomes.cells[(matrix_row.label, role)]
    want = matrix_row.expected[role]
    assert got == want, f"{matrix_row.label} as {role}: expected {want}, got {got}"


def test_no_cell_differs_from_the_table(outcomes):
    """All differences at once, as a table (the cells above fail one by one)."""
    wrong = [
        (r.label, role, r.expected[role], outcomes.cells[(r.label, role)])
        for r, role in CELLS
        if outcomes.cells[(r.label, role)] != r.expected[role]
    ]
    width = max((len(label) for label, *_ in wrong), default=0)
    lines = [
        f"{label:<{width}}  {role:<9}  expected {want!s:<5}  got {got}"
        for label, role, want, got in wrong
    ]
    assert not wrong, f"{len(wrong)} cell(s) differ from the table:\n" + "\n".join(lines)


def test_methods_without_a_row_are_refused(outcomes):
    answered = {request: got for request, got in outcomes.unlisted.items() if got != 405}
    assert not answered, (
        "Methods no row lists were not refused with 405; add rows for "
        "them or make the view refuse them:\n"
        + "\n".join(f"{request}: {got}" for request, got in answered.items())
    )


def test_every_url_pattern_has_a_row_for_each_method():
    covered: dict[str, set[str]] = {}
    for r in TABLE:
        covered.setdefault(pattern_of(placeholder_world().fill(r.path)) or "", set()).add(r.method)
    missing = []
    for pattern in project_patterns():
        methods = pattern.methods or ("GET",)
        lacking = [m for m in methods if m not in covered.get(pattern.route, set())]
        if pattern.route not in covered or (pattern.methods and lacking):
            for method in lacking or methods:
                missing.append(
                    f'    row("{method}", "/{pattern.route}", <anonymous>, <owner>, <other>,'
                    f" <staff>, <superuser>),  # pattern {pattern.name or '(unnamed)'}"
                )
    assert not missing, (
        "URL patterns without a row in TABLE (tests/security/test_authorization_matrix.py); "
        "add these, with the path filled in ({job}, {page}...) and the expected statuses:\n"
        + "\n".join(missing)
    )


def test_every_row_names_an_existing_url_pattern():
    stale = [r.label for r in TABLE if pattern_of(placeholder_world().fill(r.path)) is None]
    assert not stale, (
        "Rows in TABLE whose path no URL pattern matches any more; delete or correct them:\n"
        + "\n".join(stale)
    )


def test_each_row_appears_once():
    labels = [r.label for r in TABLE]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    assert not repeated, f"Rows given twice: {repeated}"


def test_unsafe_rows_have_a_body_only_where_the_table_gives_one():
    unknown = [key for key in BODIES if key not in {(r.method, r.path) for r in TABLE}]
    assert not unknown, f"BODIES for requests that have no row: {unknown}"
