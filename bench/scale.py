"""Benchmark 5: list pages and sweeper passes at 10,000 and at 1,000,000 job rows.

The jobs table is built with 10,000 rows, copied (a database made from it as template)
and the copy grown to 1,000,000 with the same mix, generated in SQL and spread over the
same six weeks; both are vacuumed and analysed. The queued, running and expired rows the
sweepers act on are then added to each, the same few hundred, so a pass does the same
work at both sizes: only the finished history differs.

Measured at both sizes, in turns (10 k, 1 M, 10 k, ...) so that the rest of the machine
weighs on both alike: the first and the hundredth page of `GET /api/jobs/` (the real view,
with a JWT) as a user (owner filter) and as staff, each without and with
`?status=failed`; one pass of `dispatch_due`, `recover_stalled` and `purge_finished`,
each in a transaction rolled back after, so every pass meets the same rows; then, with
the rows the follow-ups look at added (RECENT_ENDS), each follow-up's catch-up as a full
pass and from its mark, rolled back in the same way. A figure is the median time at 1 M
divided by the median at 10 k. The plan of every statement these send is printed
(EXPLAIN ANALYZE, replayed in a transaction rolled back after) and checked: no
sequential scan of a job table (nor of the batches, dependencies or deliveries once it
reads more than 1,000 rows), no sort of more than 1,000 rows.
"""

from __future__ import annotations

import copy
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench import harness

DATABASE_URL = os.environ.get(
    "BENCH_SCALE_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/jobsite_bench_scale"
)
# The copy of the 10 k database that grows to 1 M (dropped at the end).
GROWN_DATABASE_URL = DATABASE_URL + "_grown"
SMALL = int(os.environ.get("BENCH_SCALE_SMALL", "10000"))
LARGE = int(os.environ.get("BENCH_SCALE_LARGE", "1000000"))
REPEATS = int(os.environ.get("BENCH_SCALE_REPEATS", "7"))
TARGET = 2.0
HISTORY_DAYS = 42
LOAD_CHUNK = 200_000

# Who owns the history: the bench user most of it, a few other users some, the rest
# are system jobs (no owner).
BENCH_SHARE = 0.65
OWNED_SHARE = 0.85
OTHER_USERS = 4
OWNED_TYPES = [
    "email.send",
    "reports.generate",
    "notes.save_page",
    "notes.upload_image",
    "system.noop",
]
SYSTEM_TYPES = ["notes.task_reminders", "notes.image_cleanup", "system.purge", "email.digest"]
ERRORS = [
    "SMTPRecipientsRefused: {'someone@example.com': (550, b'No such user')}",
    "TimeoutError: the upstream service did not answer within 30s",
    "ConnectionError: Cloudinary upload failed (502 Bad Gateway)",
    "ValueError: page content is not valid markdown",
    "Stalled 3 times: the worker running it stopped sending heartbeats.",
    "OSError: [Errno 28] No space left on device",
]

# The rows the sweepers act on, the same at both sizes: (name, count, column overrides).
# dispatch_due sends "undispatched" and "lost" (250 < JOBS_SWEEP_BATCH) and skips
# "waiting" and "delayed"; recover_stalled requeues "stalled" (fails a fifth of them)
# and leaves "running"; purge_finished deletes "expired".
ACTIVE_ROWS: list[tuple[str, int, dict[str, str]]] = [
    ("undispatched", 200, {"updated_at": "now() - interval '1 minute'"}),
    ("lost", 50, {"dispatched_at": "now() - interval '10 minutes'"}),
    ("waiting", 300, {"dispatched_at": "now() - interval '5 seconds'"}),
    ("delayed", 300, {"run_at": "now() + interval '1 day'"}),
    (
        "running",
        40,
        {
            "status": "'running'",
            "attempts": "1",
            "started_at": "now() - interval '30 seconds'",
            "heartbeat_at": "now()",
            "dispatched_at": "now() - interval '31 seconds'",
        },
    ),
    (
        "stalled",
        100,
        {
            "status": "'running'",
            "attempts": "1",
            "stalled_count": "CASE WHEN mod(g, 5) = 0 THEN 2 ELSE 0 END",
            "started_at": "now() - interval '15 minutes'",
            "heartbeat_at": "now() - interval '10 minutes'",
            "dispatched_at": "now() - interval '16 minutes'",
        },
    ),
    (
        "expired",
        300,
        {
            "status": "(ARRAY['succeeded', 'failed', 'cancelled'])[1 + mod(g, 3)]",
            "attempts": "1",
            "message": "'Done'",
            "created_at": "now() - interval '90 days' - interval '1 hour' * g",
            "dispatched_at": "now() - interval '90 days' - interval '1 hour' * g",
            "started_at": "now() - interval '90 days' - interval '1 hour' * g",
            "finished_at": "now() - interval '90 days' - interval '1 hour' * g",
            "updated_at": "now() - interval '90 days' - interval '1 hour' * g",
        },
    ),
]
ACTIVE_DEFAULTS = {
    "status": "'queued'",
    "attempts": "0",
    "stalled_count": "0",
    "message": "''",
    "run_at": "NULL",
    "dispatched_at": "NULL",
    "heartbeat_at": "NULL",
    "created_at": "now() - interval '1 minute'",
    "started_at": "NULL",
    "finished_at": "NULL",
    "updated_at": "now() - interval '1 minute'",
}
ACTIVE_COUNT = sum(count for _name, count, _columns in ACTIVE_ROWS)
EXPECTED_WORK = {"dispatch_due": 250, "recover_stalled": 100, "purge_finished": 300}

# The history must outlive the purge at both sizes, so the types keep every row younger
# than 60 days (the history spans 42); the "expired" rows are 90 days old.
KEEP_HISTORY = {
    "succeeded_for": timedelta(days=60),
    "succeeded_max": None,
    "failed_for": timedelta(days=60),
    "failed_max": None,
}

JOB_TABLES = {"jobs_job", "jobs_jobevent"}
# Tables that grow with the job history: none may be read through.
PLAN_TABLES = JOB_TABLES | {"jobs_batch", "jobs_jobdependency", "webhooks_webhookdelivery"}
BIG_SORT = 1000  # rows; a sort of more than this in a page or a pass grows with the table


@dataclass(frozen=True)
class Listing:
    label: str
    username: str
    query: str


# At 10 k rows the failed jobs fill fewer than 100 pages of 50, so those pages hold 10.
LISTINGS = [
    Listing("user", "bench", ""),
    Listing("user, status=failed", "bench", "status=failed&page_size=10"),
    Listing("staff", "bench-staff", ""),
    Listing("staff, status=failed", "bench-staff", "status=failed&page_size=10"),
]
PAGES = (1, 100)


# --- data ----------------------------------------------------------------------------

JOB_COLUMNS = (
    "id, type, owner_id, payload, result, error, status, progress, message, attempts, "
    "max_attempts, stalled_count, priority, queue, idempotency_key, run_at, dispatched_at, "
    "heartbeat_at, cancel_requested, created_at, started_at, finished_at, updated_at"
)

HISTORY_SQL = f"""
WITH drawn AS (
    SELECT g, random() AS who, random() AS what, random() AS outcome, random() AS took,
           now() - interval '1 day' * %(days)s * random() AS born
    FROM generate_series(1, %(count)s) AS g
), shaped AS (
    SELECT g, what, took, born,
        CASE WHEN who < %(bench_share)s THEN %(bench)s
             WHEN who < %(owned_share)s THEN (%(others)s::bigint[])[1 + mod(g, %(other_n)s)]
        END AS owner_id,
        CASE WHEN outcome < 0.74 THEN 'succeeded' WHEN outcome < 0.94 THEN 'failed'
             ELSE 'cancelled' END AS status,
        interval '1 second' * (0.05 - 3 * ln(1 - took)) AS duration
    FROM drawn
), typed AS (
    SELECT shaped.*,
        CASE WHEN owner_id IS NULL THEN %(owned_n)s + 1 + floor(what * %(system_n)s)::int
             ELSE 1 + floor(what * %(owned_n)s)::int END AS kind,
        CASE WHEN status = 'succeeded' THEN 1 + (took > 0.9)::int
             WHEN status = 'failed' THEN 3
             ELSE (took >= 0.5)::int END AS attempts
    FROM shaped
), timed AS (
    SELECT typed.*,
        CASE WHEN attempts > 0 THEN born + interval '20 milliseconds' END AS started_at,
        born + interval '20 milliseconds' + duration AS finished_at
    FROM typed
), added AS (
    INSERT INTO jobs_job ({JOB_COLUMNS})
    SELECT gen_random_uuid(), (%(types)s::text[])[kind], owner_id,
        jsonb_build_object('to', 'user' || mod(g, 500) || '@example.com', 'n', g),
        CASE WHEN status = 'succeeded' THEN jsonb_build_object('ok', true, 'n', mod(g, 97)) END,
        CASE WHEN status = 'failed' THEN (%(errors)s::text[])[1 + mod(g, %(error_n)s)]
             || E'\\nTraceback (most recent call last):\\n  ...' ELSE '' END,
        status,
        CASE WHEN status = 'succeeded' THEN 100 ELSE 25 * mod(g, 4) END,
        CASE status WHEN 'succeeded' THEN 'Done' WHEN 'failed' THEN 'Failed'
             ELSE 'Cancelled' END,
        attempts, 3, 0,
        (ARRAY[5, 5, 5, 5, 5, 5, 5, 0, 9, 9])[1 + mod(g, 10)],
        (%(queues)s::text[])[kind], NULL, NULL,
        born + interval '5 milliseconds',
        CASE WHEN attempts > 0 THEN finished_at END,
        status = 'cancelled' AND attempts > 0,
        born, started_at, finished_at, finished_at
    FROM timed
    RETURNING id, status, attempts, created_at, started_at, finished_at
)
INSERT INTO jobs_jobevent (job_id, kind, message, attempt, created_at)
SELECT added.id, e.kind, e.message, e.attempt, e.at
FROM added CROSS JOIN LATERAL (VALUES
    ('created', 'Created', 0, added.created_at),
    ('dispatched', '', 0, added.created_at + interval '5 milliseconds'),
    ('started', 'Attempt ' || added.attempts || ' of 3', added.attempts, added.started_at),
    (added.status, '', added.attempts, added.finished_at)
) AS e(kind, message, attempt, at)
WHERE e.at IS NOT NULL
"""


def bench_users() -> dict[str, Any]:
    from django.contrib.auth import get_user_model

    User = get_user_model()
    others = [User.objects.get_or_create(username=f"scale-user-{i}")[0] for i in range(OTHER_USERS)]
    return {
        "bench": harness.bench_user(),
        "bench-staff": harness.bench_user("bench-staff", staff=True),
        "others": others,
    }


def _type_arrays() -> dict[str, Any]:
    from jobs import registry

    types = OWNED_TYPES + SYSTEM_TYPES
    return {
        "types": types,
        "queues": [registry.get(name).queue for name in types],
        "owned_n": len(OWNED_TYPES),
        "system_n": len(SYSTEM_TYPES),
    }


@contextmanager
def secondary_indexes_dropped(cursor) -> Iterator[None]:
    """Drop the job tables' indexes other than primary keys, and build them again on exit
    from their own definitions: building an index once is several times faster than
    maintaining it through a million inserts."""
    cursor.execute(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i "
        "WHERE i.indrelid = ANY(%s::regclass[]) AND NOT i.indisprimary",
        [sorted(JOB_TABLES)],
    )
    indexes = cursor.fetchall()
    for name, _definition in indexes:
        cursor.execute(f"DROP INDEX {name}")
    try:
        yield
    finally:
        cursor.execute("SET maintenance_work_mem = '256MB'")
        for _name, definition in indexes:
            cursor.execute(definition)
        cursor.execute("RESET maintenance_work_mem")


def add_history(
    count: int,
    users: dict[str, Any],
    *,
    days: int = HISTORY_DAYS,
    bench_share: float = BENCH_SHARE,
) -> None:
    """Insert `count` jobs that finished over the last `days` (and their four or three
    events) in SQL; the bench user owns `bench_share` of them."""
    from django.db import connection

    params = {
        **_type_arrays(),
        "days": days,
        "bench_share": bench_share,
        "owned_share": max(bench_share, OWNED_SHARE),
        "bench": users["bench"].id,
        "others": [u.id for u in users["others"]],
        "other_n": len(users["others"]),
        "errors": ERRORS,
        "error_n": len(ERRORS),
    }
    with connection.cursor() as cursor, secondary_indexes_dropped(cursor):
        # The rows are consistent by construction: skip the foreign key triggers.
        cursor.execute("SET session_replication_role = replica")
        try:
            for start in range(0, count, LOAD_CHUNK):
                cursor.execute(HISTORY_SQL, {**params, "count": min(LOAD_CHUNK, count - start)})
        finally:
            cursor.execute("RESET session_replication_role")


def add_active_rows(users: dict[str, Any]) -> None:
    """Insert the rows the sweepers act on (ACTIVE_ROWS), timed from now."""
    from django.db import connection

    owners = [users["bench"].id, users["bench"].id, users["others"][0].id, None]
    ids: list[str] = []
    with connection.cursor() as cursor:
        for _name, count, overrides in ACTIVE_ROWS:
            columns = {**ACTIVE_DEFAULTS, **overrides}
            cursor.execute(
                f"INSERT INTO jobs_job ({JOB_COLUMNS}) "
                "SELECT gen_random_uuid(), (%(types)s::text[])[1 + mod(g, %(owned_n)s)], "
                "(%(owners)s::bigint[])[1 + mod(g, 4)], jsonb_build_object('n', g), NULL, '', "
                f"{columns['status']}, 0, {columns['message']}, {columns['attempts']}, 3, "
                f"{columns['stalled_count']}, 5, (%(queues)s::text[])[1 + mod(g, %(owned_n)s)], "
                f"NULL, {columns['run_at']}, {columns['dispatched_at']}, "
                f"{columns['heartbeat_at']}, false, {columns['created_at']}, "
                f"{columns['started_at']}, {columns['finished_at']}, {columns['updated_at']} "
                "FROM generate_series(1, %(count)s) AS g RETURNING id",
                {**_type_arrays(), "owners": owners, "count": count},
            )
            ids += [str(row[0]) for row in cursor.fetchall()]
        cursor.execute(
            "INSERT INTO jobs_jobevent (job_id, kind, message, attempt, created_at) "
            "SELECT id, 'created', 'Created', 0, created_at FROM jobs_job "
            "WHERE id = ANY(%s::uuid[])",
            [ids],
        )


# The rows the follow-ups' catch-ups look at, the same at both sizes, added once the
# sweeper passes are measured. RECENT_ENDS jobs ended within the last hour; two users
# have a webhook endpoint since before the history began, and every end of theirs has
# its delivery but every MISSED_EVERY-th recent one (the history's ends included, so the
# deliveries grow with the table). BATCHES batches run, the first BATCHES_READY with all
# their jobs ended, the others with one still queued; settled batches (without jobs),
# SETTLED_SHARE of the history's job count, spread over it. DEPENDENTS jobs wait for
# another one, DEPENDENTS_READY of them for a job that succeeded (half before the mark,
# half after), the others for a running one.
RECENT_ENDS = 3000
MISSED_EVERY = 100
BATCHES, BATCH_JOBS, BATCHES_READY = 200, 10, 20
SETTLED_SHARE = 0.01
DEPENDENTS, DEPENDENTS_READY = 500, 50
ENDED = "('succeeded', 'failed', 'cancelled', 'expired')"
# A catch-up from its mark is measured as the pass after one that began when the rows
# above were added, a sweep interval before: since that time less the lag (per database).
SWEEP_INTERVAL = 5
MARKS: dict[str, Any] = {}


def _insert_jobs(cursor, count: int, columns: dict[str, str], params: dict[str, Any]) -> list:
    """Insert `count` owned jobs (g = 1..count in `columns`' expressions); their ids."""
    columns = {
        **ACTIVE_DEFAULTS,
        "owner_id": "(%(owners)s::bigint[])[1 + mod(g, 4)]",
        "payload": "jsonb_build_object('n', g)",
        "batch_id": "NULL",
        "held": "''",
        **columns,
    }
    cursor.execute(
        f"INSERT INTO jobs_job ({JOB_COLUMNS}, batch_id, held) "
        "SELECT gen_random_uuid(), (%(types)s::text[])[1 + mod(g, %(owned_n)s)], "
        f"{columns['owner_id']}, {columns['payload']}, NULL, '', "
        f"{columns['status']}, 0, {columns['message']}, {columns['attempts']}, 3, "
        f"{columns['stalled_count']}, 5, (%(queues)s::text[])[1 + mod(g, %(owned_n)s)], "
        f"NULL, {columns['run_at']}, {columns['dispatched_at']}, "
        f"{columns['heartbeat_at']}, false, {columns['created_at']}, "
        f"{columns['started_at']}, {columns['finished_at']}, {columns['updated_at']}, "
        f"{columns['batch_id']}, {columns['held']} "
        "FROM generate_series(1, %(count)s) AS g ORDER BY g RETURNING id",
        {**_type_arrays(), **params, "count": count},
    )
    return [row[0] for row in cursor.fetchall()]


def _ended(ago: str) -> dict[str, str]:
    return {
        "status": "(ARRAY['succeeded', 'failed', 'cancelled'])[1 + mod(g, 3)]",
        "attempts": "1",
        "message": "'Done'",
        "created_at": f"now() - ({ago}) - interval '2 seconds'",
        "dispatched_at": f"now() - ({ago}) - interval '2 seconds'",
        "started_at": f"now() - ({ago}) - interval '1 second'",
        "finished_at": f"now() - ({ago})",
        "updated_at": f"now() - ({ago})",
    }


def add_follow_up_rows(users: dict[str, Any], history: int) -> dict[str, int]:
    """Insert the rows the catch-ups look at (see RECENT_ENDS); what each should do."""
    from datetime import timedelta

    from django.conf import settings
    from django.db import connection
    from django.utils import timezone

    from jobs.models import Batch, BatchState, JobDependency
    from webhooks.models import Event, WebhookEndpoint

    now = timezone.now()
    MARKS[connection.settings_dict["NAME"]] = now - timedelta(
        seconds=settings.JOBS_FOLLOW_UP_LAG + SWEEP_INTERVAL
    )
    bench, other = users["bench"], users["others"][0]
    owners = {"owners": [bench.id, bench.id, other.id, None]}
    for owner in (bench, other):
        WebhookEndpoint.objects.create(
            owner=owner, url=f"https://hooks.example.com/{owner.username}", events=Event.values
        )
    WebhookEndpoint.objects.update(created_at=now - timedelta(days=HISTORY_DAYS + 1))
    settled = [
        Batch(
            owner=bench,
            state=BatchState.SUCCEEDED,
            created_at=now - timedelta(hours=2, days=HISTORY_DAYS * i / (history * SETTLED_SHARE)),
        )
        for i in range(int(history * SETTLED_SHARE))
    ]
    for batch in settled:
        batch.finished_at = batch.created_at + timedelta(seconds=30)
    Batch.objects.bulk_create(settled, batch_size=5000)
    running = Batch.objects.bulk_create(
        Batch(owner=bench, created_at=now - timedelta(minutes=30, seconds=i))
        for i in range(BATCHES)
    )
    with connection.cursor() as cursor:
        missed = (
            f"CASE WHEN mod(g, {MISSED_EVERY}) = 0 THEN jsonb_build_object('missed', g) "
            "ELSE jsonb_build_object('n', g) END"
        )
        _insert_jobs(
            cursor,
            RECENT_ENDS,
            {**_ended(f"interval '3500 seconds' * g / {RECENT_ENDS}"), "payload": missed},
            owners,
        )
        in_batch = _ended("interval '1 second' * g")
        _insert_jobs(
            cursor,
            BATCHES * BATCH_JOBS,
            {
                **in_batch,
                "owner_id": str(bench.id),
                "batch_id": f"(%(batches)s::uuid[])[1 + (g - 1) / {BATCH_JOBS}]",
                "status": f"CASE WHEN (g - 1) / {BATCH_JOBS} >= {BATCHES_READY} "
                f"AND mod(g - 1, {BATCH_JOBS}) = 0 THEN 'queued' ELSE 'succeeded' END",
                "finished_at": f"CASE WHEN (g - 1) / {BATCH_JOBS} >= {BATCHES_READY} "
                f"AND mod(g - 1, {BATCH_JOBS}) = 0 THEN NULL ELSE {in_batch['finished_at']} END",
            },
            {"batches": [str(b.id) for b in running]},
        )
        # Half the ready dependents wait on a job that ended before the mark, half on
        # one that ended after it.
        succeeded = [
            _insert_jobs(
                cursor, 1, {**_ended(f"interval '{ago}'"), "status": "'succeeded'"}, owners
            )[0]
            for ago in ("10 minutes", "30 seconds")
        ]
        running_columns = next(c for name, _n, c in ACTIVE_ROWS if name == "running")
        (still_running,) = _insert_jobs(cursor, 1, running_columns, owners)
        waiting = _insert_jobs(
            cursor,
            DEPENDENTS,
            {"held": "'dependencies'", "created_at": "now() - interval '20 minutes'"},
            owners,
        )
        JobDependency.objects.bulk_create(
            JobDependency(
                job_id=job_id,
                depends_on_id=succeeded[i % 2] if i < DEPENDENTS_READY else still_running,
            )
            for i, job_id in enumerate(waiting)
        )
        cursor.execute(
            "INSERT INTO webhooks_webhookdelivery (id, endpoint_id, event, subject_id, payload, "
            "replay_of_id, status, attempts, response_status, last_error, job_id, created_at, "
            "updated_at, delivered_at) "
            "SELECT gen_random_uuid(), e.id, 'job.' || j.status, j.id::text, '{}'::jsonb, NULL, "
            "'delivered', 1, 200, '', NULL, j.finished_at, j.finished_at, j.finished_at "
            "FROM jobs_job j JOIN webhooks_webhookendpoint e ON e.owner_id = j.owner_id "
            f"WHERE j.status IN {ENDED} AND NOT (j.payload ? 'missed')",
        )
        cursor.execute(
            "SELECT count(*) FROM jobs_job j JOIN webhooks_webhookendpoint e "
            "ON e.owner_id = j.owner_id WHERE j.payload ? 'missed'"
        )
        (missing,) = cursor.fetchone()
        cursor.execute(
            "VACUUM (ANALYZE) jobs_job, jobs_batch, jobs_jobdependency, webhooks_webhookdelivery"
        )
    return {
        "dependencies catch-up, full": DEPENDENTS_READY,
        "batches catch-up, full": BATCHES_READY,
        "webhooks catch-up, full": missing,
    }


def vacuum_analyze() -> None:
    """What autovacuum does to a table that has settled: statistics and the visibility
    map (index-only scans)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("VACUUM (ANALYZE) jobs_job, jobs_jobevent, auth_user")


def analyze() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE jobs_job")


def table_counts() -> dict[str, Any]:
    from django.db.models import Count

    from jobs.models import Job, JobEvent

    by_status = dict(Job.objects.order_by().values_list("status").annotate(n=Count("id")))
    return {
        "jobs": sum(by_status.values()),
        "by_status": by_status,
        "events": JobEvent.objects.count(),
    }


@contextmanager
def history_kept() -> Iterator[None]:
    """Give every job type the long retention of KEEP_HISTORY while inside."""
    from jobs import registry

    original = registry.all_types()
    for jt in original:
        registry.register(replace(jt, retention=replace(jt.retention, **KEEP_HISTORY)))
    try:
        yield
    finally:
        for jt in original:
            registry.register(jt)


# --- timing --------------------------------------------------------------------------


def _client(user):
    from django.test import Client

    from jobsite.auth import AccessToken

    return Client(HTTP_AUTHORIZATION=f"Bearer {AccessToken.for_user(user)}", HTTP_HOST="localhost")


def _get(client, path: str):
    response = client.get(path, secure=True)
    if response.status_code != 200:
        raise AssertionError(f"GET {path}: {response.status_code} {response.content[:200]!r}")
    return response


def page_path(client, listing: Listing, number: int) -> str:
    """The path of page `number`, found by following the `next` links from the first."""
    path = f"/api/jobs/?{listing.query}"
    for _ in range(number - 1):
        following = _get(client, path).json()["next"]
        if following is None:
            raise AssertionError(f"{listing.label}: fewer than {number} pages")
        parts = urlsplit(following)
        path = f"{parts.path}?{parts.query}"
    return path


def rolled_back(action: Callable[[], Any]) -> Any:
    """Run `action` in a transaction that is then rolled back, so every pass of a sweeper
    meets the same rows (the messages it sends stay in the broker; flushed at the end)."""
    from django.db import transaction

    with transaction.atomic():
        outcome = action()
        transaction.set_rollback(True)
    return outcome


def sweepers() -> dict[str, Callable[[], Any]]:
    from jobs import retention, sweepers

    return {
        "dispatch_due": sweepers.dispatch_due,
        "recover_stalled": sweepers.recover_stalled,
        "purge_finished": retention.purge_finished,
    }


def work_done(name: str, outcome: Any) -> int:
    if isinstance(outcome, dict):
        return sum(outcome.values())
    return int(getattr(outcome, "done", outcome))


# --- plans ---------------------------------------------------------------------------


EXPLAINABLE = ("SELECT", "INSERT", "UPDATE", "DELETE", "WITH")


EXPLAINABLE = ("SELECT", "INSERT", "UPDATE", "DELETE", "WITH")


def captured_statements(action: Callable[[], Any]) -> list[tuple[str, float]]:
    """The statements `action` sends, with the seconds each took."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        action()
    return [
        (q["sql"], float(q["time"]))
        for q in captured.captured_queries
        if q["sql"].lstrip().split(" ", 1)[0].upper() in EXPLAINABLE
    ]


def explain_replayed(statements: list[str]) -> list[dict[str, Any]]:
    """EXPLAIN ANALYZE each statement, in order, in one transaction rolled back after."""
    from django.db import connection, transaction

    plans = []
    with transaction.atomic(), connection.cursor() as cursor:
        for sql in statements:
            cursor.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}")
            plans.append(cursor.fetchone()[0][0]["Plan"])
        transaction.set_rollback(True)
    return plans


def statement_shape(sql: str) -> str:
    """The statement with its values taken out, to tell the distinct statements apart."""
    shape = re.sub(r"'(?:[^']|'')*'", "?", sql)
    shape = re.sub(r"\b\d+(?:\.\d+)?\b", "?", shape)
    return re.sub(r"\?(?:\s*,\s*\?)+", "?", shape)


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _grows(scan: dict[str, Any]) -> bool:
    """A sequential scan of a job table, or of another table that grows with the history
    once it reads more rows than a large sort (small, it is the planner's best choice)."""
    table = scan.get("Relation Name")
    read = (scan["Actual Rows"] + scan.get("Rows Removed by Filter", 0)) * scan["Actual Loops"]
    return table in JOB_TABLES or (table in PLAN_TABLES and read > BIG_SORT)


def plan_problems(plan: dict[str, Any]) -> list[str]:
    problems = []
    for node in _nodes(plan):
        if node["Node Type"] == "Seq Scan" and _grows(node):
            problems.append(f"Seq Scan on {node['Relation Name']}")
        if node["Node Type"] in ("Sort", "Incremental Sort"):
            sorted_rows = sum(c["Actual Rows"] * c["Actual Loops"] for c in node.get("Plans", []))
            if sorted_rows > BIG_SORT:
                problems.append(f"Sort of {sorted_rows:,} rows")
    return problems


def indexes_used(plan: dict[str, Any]) -> list[str]:
    return sorted({n["Index Name"] for n in _nodes(plan) if "Index Name" in n})


def plan_text(plan: dict[str, Any], depth: int = 0) -> list[str]:
    node = plan["Node Type"]
    if "Index Name" in plan:
        node += f" using {plan['Index Name']}"
    if "Relation Name" in plan:
        node += f" on {plan['Relation Name']}"
    rows = f"rows {plan['Actual Rows']:,}" + (
        f" x {plan['Actual Loops']:,}" if plan["Actual Loops"] > 1 else ""
    )
    for key in ("Sort Method", "Index Cond", "Recheck Cond", "Filter"):
        if key in plan:
            rows += f"; {key.lower()}: {plan[key][:120]}"
    if plan.get("Rows Removed by Filter"):
        rows += f" ({plan['Rows Removed by Filter']:,} removed)"
    lines = [f"{'  ' * depth}{node} ({rows})"]
    for child in plan.get("Plans", []):
        lines += plan_text(child, depth + 1)
    return lines


def examine(label: str, statements: list[tuple[str, float]], show: bool) -> list[dict]:
    """Plans of the distinct statements among `statements`; printed when `show`."""
    plans = explain_replayed([sql for sql, _ in statements])
    seen: dict[str, dict[str, Any]] = {}
    for (sql, seconds), plan in zip(statements, plans, strict=True):
        entry = seen.setdefault(
            statement_shape(sql),
            {"statement": sql, "count": 0, "seconds": 0.0, "indexes": set(), "problems": set()},
        )
        entry["count"] += 1
        entry["seconds"] += seconds
        entry["indexes"].update(indexes_used(plan))
        entry["problems"].update(plan_problems(plan))
        entry.setdefault("plan", plan_text(plan))
    entries = [
        {
            **e,
            "statement": e["statement"][:200],
            "indexes": sorted(e["indexes"]),
            "problems": sorted(e["problems"]),
        }
        for e in seen.values()
    ]
    if show:
        for e in entries:
            print(
                f"-- {label} ({e['count']}x, {e['seconds'] * 1000:.1f} ms): {e['statement']}",
                flush=True,
            )
            print("\n".join("     " + line for line in e["plan"]), flush=True)
    return entries


# --- two sizes side by side ----------------------------------------------------------


@dataclass
class Size:
    """One state of the table: a database (the 10 k one, or its copy grown to 1 M) and a
    Django connection to it, kept open, that `current()` makes the default one."""

    rows: int
    url: str
    connection: Any = None

    @property
    def label(self) -> str:
        return _rows(self.rows)

    def connect(self) -> None:
        from django.db import connections
        from django.db.utils import load_backend

        settings = copy.deepcopy(connections.settings["default"])
        settings["NAME"] = _database_name(self.url)
        self.connection = load_backend(settings["ENGINE"]).DatabaseWrapper(settings, "default")

    @contextmanager
    def current(self) -> Iterator[None]:
        from django.db import connections

        previous = connections["default"]
        connections["default"] = self.connection
        try:
            yield
        finally:
            connections["default"] = previous


def _rows(count: int) -> str:
    return f"{count // 1_000_000}M" if count % 1_000_000 == 0 else f"{count // 1000}k"


def _database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def _admin(sql: str) -> None:
    import psycopg

    admin_url = urlunsplit(urlsplit(DATABASE_URL)._replace(path="/postgres", query=""))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql)


def clone_database(source_url: str, target_url: str) -> None:
    """A copy of the source database: the same tables, rows, indexes and statistics."""
    _admin(f'DROP DATABASE IF EXISTS "{_database_name(target_url)}" WITH (FORCE)')
    _admin(
        f'CREATE DATABASE "{_database_name(target_url)}" TEMPLATE "{_database_name(source_url)}"'
    )


def side_by_side(sizes: list[Size], action: Callable[[Size], Any]) -> dict[int, float]:
    """Median seconds of `action` at each size, run in turns (10 k, 1 M, 10 k, ...) so
    that a busy moment of the machine falls on both alike; the first turn warms up."""
    times: dict[int, list[float]] = {size.rows: [] for size in sizes}
    for turn in range(REPEATS + 1):
        for size in sizes:
            with size.current():
                start = time.perf_counter()
                action(size)
                elapsed = time.perf_counter() - start
            if turn:
                times[size.rows].append(elapsed)
    return {rows: harness.median(found) for rows, found in times.items()}


def load(size: Size, users: dict[str, Any], history: int) -> float:
    """Add `history` finished jobs and settle the table; returns the seconds it took."""
    with size.current():
        started = time.monotonic()
        add_history(history, users)
        vacuum_analyze()
    return time.monotonic() - started


def activate(size: Size, users: dict[str, Any]) -> dict[str, Any]:
    """Add the rows the sweepers act on; returns what the table holds."""
    with size.current():
        add_active_rows(users)
        analyze()  # the statistics know the queued and running rows, as they would in use
        counts = table_counts()
    print(f"scale  {size.label}: {counts['jobs']:,} jobs, {counts['events']:,} events", flush=True)
    return counts


def catch_ups() -> dict[str, Callable[[], Any]]:
    """Each follow-up's catch-up (jobs/followups.py) as a full pass (no mark yet, or once
    per JOBS_FOLLOW_UP_FULL_PASS_EVERY) and from its mark (every other pass: see MARKS);
    the webhooks' one without the cache that runs it once a minute."""
    from django.db import connection
    from django.utils import timezone

    from jobs import batches, dependencies
    from webhooks import services

    def mark() -> Any:
        return MARKS[connection.settings_dict["NAME"]]

    passes: dict[str, Callable[[], Any]] = {}
    for name, catch_up in (
        ("dependencies", dependencies.catch_up),
        ("batches", batches.catch_up),
        ("webhooks", services.catch_up),
    ):
        passes[f"{name} catch-up, full"] = lambda c=catch_up: c(timezone.now(), None)
        passes[f"{name} catch-up, from its mark"] = lambda c=catch_up: c(timezone.now(), mark())
    return passes


def measure_sweepers(
    sizes: list[Size], times: dict, plans: dict, passes: dict[str, Callable[[], Any]]
) -> dict[int, dict]:
    """One run of each of `passes` at each size, timed side by side; the work done."""
    work: dict[int, dict[str, int]] = {size.rows: {} for size in sizes}
    for name, sweep in passes.items():
        for size in sizes:
            with size.current():
                work[size.rows][name] = work_done(name, rolled_back(sweep))
        times[f"{name} pass"] = side_by_side(sizes, lambda size, sweep=sweep: rolled_back(sweep))
        for size in sizes:
            with size.current():
                statements = captured_statements(lambda sweep=sweep: rolled_back(sweep))
                plans[size.rows][name] = examine(
                    f"{name} at {size.label}", statements, show=size is sizes[-1]
                )
    return work


def measure_pages(sizes: list[Size], users: dict[str, Any], times: dict, plans: dict) -> None:
    for listing in LISTINGS:
        client = _client(users[listing.username])
        for number in PAGES:
            key = f"{listing.label}, page {number}"
            paths = {}
            for size in sizes:
                with size.current():
                    paths[size.rows] = page_path(client, listing, number)
            times[key] = side_by_side(
                sizes, lambda size, client=client, paths=paths: _get(client, paths[size.rows])
            )
            for size in sizes:
                with size.current():
                    statements = captured_statements(
                        lambda client=client, path=paths[size.rows]: _get(client, path)
                    )
                    plans[size.rows][key] = examine(
                        f"{key} at {size.label}", statements, show=size is sizes[-1]
                    )


def count_check_ms(plans: dict[str, list]) -> float:
    """Milliseconds a purge pass spent finding the newest row beyond each type's limit."""
    return 1000 * sum(
        entry["seconds"]
        for entry in plans["purge_finished"]
        if entry["statement"].startswith('SELECT "jobs_job"."finished_at"')
    )


def main() -> harness.Results:
    small, large = Size(SMALL, DATABASE_URL), Size(LARGE, GROWN_DATABASE_URL)
    sizes = [small, large]
    results = harness.Results(
        "scale", f"list pages and sweepers: {large.label} job rows against {small.label}"
    )
    harness.recreate_database(small.url)
    harness.setup_django(small.url)
    harness.flush_broker()
    users = bench_users()
    small.connect()
    load_seconds = {small.rows: load(small, users, SMALL - ACTIVE_COUNT)}
    harness.close_connections()
    small.connection.close()
    # The large table is the small one, copied before the active rows came, then grown.
    clone_database(small.url, large.url)
    large.connect()
    load_seconds[large.rows] = load(large, users, LARGE - SMALL)
    print(f"scale  grown to {large.label} in {load_seconds[large.rows]:.0f}s", flush=True)
    setup = {size.rows: activate(size, users) for size in sizes}

    times: dict[str, dict[int, float]] = {}
    plans: dict[int, dict[str, list]] = {size.rows: {} for size in sizes}
    with history_kept():
        work = measure_sweepers(sizes, times, plans, sweepers())
    expected_catch_ups = {}
    for size in sizes:
        with size.current():
            expected_catch_ups[size.rows] = add_follow_up_rows(users, size.rows)
    catch_up_work = measure_sweepers(sizes, times, plans, catch_ups())
    measure_pages(sizes, users, times, plans)
    harness.flush_broker()
    for size in sizes:
        size.connection.close()
    _admin(f'DROP DATABASE IF EXISTS "{_database_name(large.url)}" WITH (FORCE)')

    for rows, done in work.items():
        if done != EXPECTED_WORK:
            raise AssertionError(f"At {rows:,} rows the passes did {done}")
    for rows, done in catch_up_work.items():
        if {k: v for k, v in done.items() if k in expected_catch_ups[rows]} != expected_catch_ups[
            rows
        ]:
            raise AssertionError(
                f"At {rows:,} rows the catch-ups did {done}, not {expected_catch_ups[rows]}"
            )
    for key, by_size in times.items():
        ratio = by_size[large.rows] / by_size[small.rows]
        note = (
            f"{by_size[small.rows] * 1000:.2f} ms at {small.label}, "
            f"{by_size[large.rows] * 1000:.2f} ms at {large.label}"
        )
        if key.startswith("purge_finished") and "purge_finished" in plans[small.rows]:
            check = {size.rows: count_check_ms(plans[size.rows]) for size in sizes}
            note += (
                f"; of a pass, the retention count check (OFFSET keep) took "
                f"{check[small.rows]:.0f} ms at {small.label}, {check[large.rows]:.0f} ms "
                f"at {large.label}"
            )
        results.figure(
            f"{key}: {large.label} / {small.label}",
            ratio,
            "x",
            target=f"<= {TARGET:g}",
            met=ratio <= TARGET,
            note=note,
        )
    problems = [
        f"{key}: {problem}: {entry['statement'][:100]}"
        for key, entries in plans[large.rows].items()
        for entry in entries
        for problem in entry["problems"]
    ]
    results.figure(
        f"statements with a job-table Seq Scan or a sort > {BIG_SORT:,} rows at {large.label}",
        len(problems),
        target="0",
        met=not problems,
    )
    for problem in problems:
        print(f"scale    {problem}", flush=True)
    results.detail("seconds", times)
    results.detail("rows", setup)
    results.detail("load_seconds", load_seconds)
    results.detail("work", work)
    results.detail("catch_up_work", catch_up_work)
    results.detail("plan_problems", problems)
    results.detail("plans", plans)
    results.write()
    return results


if __name__ == "__main__":
    main()
