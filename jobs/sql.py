"""The job engine's hot-path writes, in as few statements as the database allows.

A worker changes a job's row twice per run (the claim and the end) and each change adds
an event to the job's timeline; a bulk enqueue writes thousands of rows and events at
once. On PostgreSQL these are single statements with fixed SQL: the UPDATE and the
event's INSERT go together as one data-modifying `WITH` statement, and many ids travel
as one string. Building the same UPDATE through the ORM for every job cost more CPU than
the job itself (measured in bench/), so the claim and finish SQL is written out here,
once. Other databases run the equivalent ORM statements.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import psycopg
from django.conf import settings
from django.db import connections
from django.db.backends.utils import CursorWrapper
from django.db.models import F, JSONField, Q, QuerySet
from django.db.models import sql as orm_sql
from django.utils import timezone

from .models import EventKind, Job, JobEvent, Status

JOBS = Job._meta.db_table
EVENTS = JobEvent._meta.db_table
_FIELDS = Job._meta.concrete_fields
_COLUMNS = ", ".join(f'"{f.column}"' for f in _FIELDS)
# Many ids go to PostgreSQL as one comma-separated string: quoting one string is far
# cheaper than quoting an array literal of thousands of UUIDs.
UUIDS = "string_to_array(%s, ',')::uuid[]"


def _is_postgresql(model=Job) -> bool:
    return connections[model.objects.db].vendor == "postgresql"


# --- claim ---------------------------------------------------------------------------

# The row is found by primary key alone and locked first; its state is checked on the
# locked row. Written as `WHERE id = ? AND status = 'queued'`, the planner may instead
# walk an index of all queued rows whenever its statistics underestimate them (right
# after a burst of new jobs, before the next ANALYZE), making each claim cost as much as
# the whole backlog.
_JOB_COLUMNS = ", ".join(f'job."{f.column}"' for f in _FIELDS)
CLAIM_SQL = f"""
WITH target AS (
    SELECT id, status, run_at FROM "{JOBS}" WHERE id = %(id)s FOR NO KEY UPDATE
), claimed AS (
    UPDATE "{JOBS}" AS job
    SET status = 'running', attempts = job.attempts + 1, started_at = %(now)s,
        heartbeat_at = %(now)s, finished_at = NULL, progress = 0, message = 'Running',
        updated_at = %(now)s
    FROM target
    WHERE job.id = target.id AND target.status = 'queued'
        AND (target.run_at IS NULL OR target.run_at <= %(due)s)
    RETURNING {_JOB_COLUMNS}
), started AS (
    INSERT INTO "{EVENTS}" (job_id, kind, message, attempt, created_at)
    SELECT id, 'started', 'Attempt ' || attempts || ' of ' || max_attempts, attempts, %(now)s
    FROM claimed
)
SELECT {_COLUMNS} FROM claimed
"""


def claim(job_id: str, now: datetime, due: datetime) -> Job | None:
    """Move a queued job whose time (`run_at`, compared with `due`) has come to running,
    add its `started` event and return it; None when it is not claimable."""
    if not _is_postgresql():
        return _claim_with_orm(job_id, now, due)
    connection = connections[Job.objects.db]
    with _prepared_cursor(connection) as cursor:
        cursor.execute(CLAIM_SQL, {"id": job_id, "now": now, "due": due})
        row = cursor.fetchone()
    return None if row is None else _job_from_row(row, connection)


class _PreparingCursor(psycopg.Cursor):
    """Binds parameters on the server and has PostgreSQL plan each statement once per
    connection (Django's own cursors bind on the client, so every run is parsed and
    planned anew)."""

    def execute(self, query, params=None, *, prepare=None, binary=None):
        return super().execute(query, params, prepare=True, binary=binary)


NEVER_AUTOMATICALLY = 2**31


def _prepared_cursor(connection) -> CursorWrapper:
    """A cursor for the claim and finish statements every job runs: as prepared
    statements they cost PostgreSQL half the CPU (bench/). JOBS_PREPARED_STATEMENTS=0
    turns them off for connection poolers that cannot keep prepared statements
    (PgBouncer before 1.21 in transaction mode)."""
    if not settings.JOBS_PREPARED_STATEMENTS:
        return connection.cursor()
    connection.ensure_connection()
    if connection.connection.prepare_threshold is None:
        # Django turns psycopg's automatic preparing off; a threshold is needed for any
        # preparing at all. Django's own cursors bind on the client and never prepare,
        # so this prepares just what a _PreparingCursor runs.
        connection.connection.prepare_threshold = NEVER_AUTOMATICALLY
    cursor = _PreparingCursor(connection.connection)
    if connection.queries_logged:
        return connection.make_debug_cursor(cursor)
    return connection.make_cursor(cursor)


def _job_from_row(row, connection) -> Job:
    values = [
        f.from_db_value(value, None, connection) if hasattr(f, "from_db_value") else value
        for f, value in zip(_FIELDS, row, strict=True)
    ]
    return Job.from_db(Job.objects.db, [f.attname for f in _FIELDS], values)


def _claim_with_orm(job_id: str, now: datetime, due: datetime) -> Job | None:
    claimable = Job.objects.filter(id=job_id, status=Status.QUEUED).filter(
        Q(run_at__isnull=True) | Q(run_at__lte=due)
    )
    claimed = claimable.update(
        status=Status.RUNNING,
        attempts=F("attempts") + 1,
        started_at=now,
        heartbeat_at=now,
        finished_at=None,
        progress=0,
        message="Running",
        updated_at=now,
    )
    if not claimed:
        return None
    job = Job.objects.get(id=job_id)
    JobEvent.objects.create(
        job=job,
        kind=EventKind.STARTED,
        message=f"Attempt {job.attempts} of {job.max_attempts}",
        attempt=job.attempts,
    )
    return job


# --- finish --------------------------------------------------------------------------

FINISH_SQL = f"""
WITH target AS (
    SELECT id, status, attempts FROM "{JOBS}" WHERE id = %(id)s FOR NO KEY UPDATE
), ended AS (
    UPDATE "{JOBS}" AS job
    SET status = %(status)s, result = %(result)s, error = %(error)s,
        progress = COALESCE(%(progress)s, job.progress),
        message = COALESCE(%(message)s, job.message),
        finished_at = %(now)s, updated_at = %(now)s, cancel_requested = false
    FROM target
    WHERE job.id = target.id AND target.status = 'running' AND target.attempts = %(attempts)s
    RETURNING job.id, job.attempts
)
INSERT INTO "{EVENTS}" (job_id, kind, message, attempt, created_at)
SELECT id, %(kind)s, %(event_message)s, attempts, %(now)s FROM ended
"""


def finish(
    job: Job,
    status: str,
    kind: str,
    *,
    result: Any = None,
    error: str = "",
    progress: int | None = None,
    message: str | None = None,
) -> bool:
    """End the run of `job` that this worker holds (same attempt, still running) with
    `status`, and add its `kind` event. False when the run no longer holds the job."""
    now = timezone.now()
    if not _is_postgresql():
        changes = {"progress": progress, "message": message}
        return update_recording(
            held(job),
            {
                "status": status,
                "result": result,
                "error": error,
                "finished_at": now,
                "updated_at": now,
                "cancel_requested": False,
                **{name: value for name, value in changes.items() if value is not None},
            },
            JobEvent(job_id=job.id, kind=kind, message=error[:500], attempt=job.attempts),
        )
    connection = connections[Job.objects.db]
    result_field = Job._meta.get_field("result")
    params = {
        "id": job.id,
        "attempts": job.attempts,
        "status": status,
        "result": result_field.get_db_prep_save(result, connection),
        "error": error,
        "progress": progress,
        "message": message,
        "now": now,
        "kind": kind,
        "event_message": error[:500],
    }
    with _prepared_cursor(connection) as cursor:
        cursor.execute(FINISH_SQL, params)
        return cursor.rowcount > 0


def held(job: Job) -> QuerySet:
    """The job, only while this run still holds it (attempts is the fencing token)."""
    return Job.objects.filter(id=job.id, status=Status.RUNNING, attempts=job.attempts)


# --- any change with its event -------------------------------------------------------


def update_recording(queryset: QuerySet, changes: dict[str, Any], event: JobEvent) -> bool:
    """Apply `changes` to the rows of `queryset` (at most one) and, if a row changed,
    save `event` for it: one statement on PostgreSQL. Returns whether a row changed."""
    connection = connections[queryset.db]
    if connection.vendor != "postgresql":
        if not queryset.update(**changes):
            return False
        event.save(force_insert=True)
        return True
    query = queryset.query.chain(orm_sql.UpdateQuery)
    query.add_update_values(changes)
    compiler = query.get_compiler(queryset.db)
    compiler.pre_sql_setup()
    update, params = compiler.as_sql()
    statement = (
        f"WITH changed AS ({update} RETURNING id) "
        f'INSERT INTO "{EVENTS}" (job_id, kind, message, attempt, created_at) '
        "SELECT changed.id, %s, %s, %s, %s FROM changed"
    )
    values = (event.kind, event.message, event.attempt, timezone.now())
    with connection.cursor() as cursor:
        cursor.execute(statement, (*params, *values))
        return cursor.rowcount > 0


# --- creating jobs -------------------------------------------------------------------


def insert_job(job: Job, message: str) -> None:
    """Insert a new job with its `created` event (`message`) and, when the job is already
    marked dispatched, its `dispatched` event: one statement on PostgreSQL, the ORM's
    INSERT wrapped with the events'."""
    if not _is_postgresql():
        job.save(force_insert=True)
        JobEvent.objects.create(job=job, kind=EventKind.CREATED, message=message)
        if job.dispatched_at:
            JobEvent.objects.create(job=job, kind=EventKind.DISPATCHED)
        return
    query = orm_sql.InsertQuery(Job)
    query.insert_values(_FIELDS, [job])
    [(insert, params)] = query.get_compiler(Job.objects.db).as_sql()
    statement = (
        f"WITH created AS ({insert} RETURNING id, created_at, dispatched_at) "
        f'INSERT INTO "{EVENTS}" (job_id, kind, message, attempt, created_at) '
        "SELECT id, 'created', %s, 0, created_at FROM created "
        "UNION ALL SELECT id, 'dispatched', '', 0, created_at FROM created "
        "WHERE dispatched_at IS NOT NULL"
    )
    with connections[Job.objects.db].cursor() as cursor:
        cursor.execute(statement, (*params, message))
    job._state.adding = False
    job._state.db = Job.objects.db


# --- many jobs at once ---------------------------------------------------------------


def insert_jobs(jobs: list[Job]) -> None:
    """Insert new jobs, as `Job.objects.bulk_create(jobs)` does: on PostgreSQL through
    COPY, which takes the values as they are instead of preparing every field of every
    row in Python (a fifth of the time for a large batch)."""
    if not jobs:
        return
    if not _is_postgresql():
        Job.objects.bulk_create(jobs, batch_size=1000)
        return
    now = timezone.now()
    for job in jobs:
        job.created_at = job.updated_at = now
    connection = connections[Job.objects.db]
    with connection.cursor() as cursor:
        with cursor.copy(f'COPY "{JOBS}" ({_COLUMNS}) FROM STDIN') as copy:
            for job in jobs:
                copy.write_row([_copy_value(field, job) for field in _FIELDS])
    for job in jobs:
        job._state.adding = False
        job._state.db = Job.objects.db


def _copy_value(field, job: Job) -> Any:
    value = getattr(job, field.attname)
    if value is not None and isinstance(field, JSONField):
        return json.dumps(value, cls=field.encoder)
    return value


def add_events(kind: str, rows: list[tuple[Any, str, int]], created_at: datetime) -> None:
    """Add one `kind` event per (job id, message, attempt) row."""
    if not rows:
        return
    if not _is_postgresql(JobEvent):
        JobEvent.objects.bulk_create(
            [
                JobEvent(job_id=job_id, kind=kind, message=message, attempt=attempt)
                for job_id, message, attempt in rows
            ],
            batch_size=1000,
        )
        return
    ids, messages, attempts = zip(*rows, strict=True)
    insert = f'INSERT INTO "{EVENTS}" (job_id, kind, message, attempt, created_at) '
    with connections[JobEvent.objects.db].cursor() as cursor:
        if len(set(messages)) == 1 and len(set(attempts)) == 1:
            cursor.execute(
                insert + f"SELECT id, %s, %s, %s, %s FROM unnest({UUIDS}) AS id",
                (kind, messages[0], attempts[0], created_at, _joined(ids)),
            )
            return
        cursor.execute(
            insert + "SELECT job_id, %s, message, attempt, %s "
            f"FROM unnest({UUIDS}, %s::text[], %s::int[]) AS e(job_id, message, attempt)",
            (kind, created_at, _joined(ids), list(messages), list(attempts)),
        )


def mark_dispatched(jobs: list[Job], now: datetime) -> None:
    """Set `dispatched_at` on the jobs and add their `dispatched` events."""
    if not _is_postgresql():
        Job.objects.filter(id__in=[job.id for job in jobs]).update(dispatched_at=now)
        add_events(EventKind.DISPATCHED, [(job.id, "", job.attempts) for job in jobs], now)
        return
    with connections[Job.objects.db].cursor() as cursor:
        cursor.execute(
            f'WITH sent AS (UPDATE "{JOBS}" SET dispatched_at = %s '
            f"WHERE id = ANY({UUIDS}) RETURNING id, attempts) "
            f'INSERT INTO "{EVENTS}" (job_id, kind, message, attempt, created_at) '
            "SELECT id, 'dispatched', '', attempts, %s FROM sent",
            (now, _joined(job.id for job in jobs), now),
        )


def unmark_dispatched(jobs: list[Job]) -> None:
    """Take back the dispatch mark of new jobs whose messages could not be sent."""
    ids = [job.id for job in jobs]
    Job.objects.filter(id__in=ids).update(dispatched_at=None)
    JobEvent.objects.filter(job_id__in=ids, kind=EventKind.DISPATCHED).delete()


def _joined(ids) -> str:
    return ",".join(str(i) for i in ids)
