"""State changes that also write a timeline event, in one statement on PostgreSQL.

A worker changes a job's row twice per run (the claim and the end), and each change
adds an event to the job's timeline. On PostgreSQL the UPDATE and the event's INSERT go
together as one data-modifying `WITH` statement, which halves the round trips and
commits on the worker's hot path; other databases run the ORM's two statements. The
UPDATE itself is the ORM's own SQL for `queryset.update(**changes)`.
"""

from __future__ import annotations

from typing import Any

from django.db import connections
from django.db.models import QuerySet
from django.db.models import sql as orm_sql
from django.utils import timezone

from .models import Job, JobEvent


def _update_sql(queryset: QuerySet, changes: dict[str, Any]) -> tuple[str, tuple]:
    query = queryset.query.chain(orm_sql.UpdateQuery)
    query.add_update_values(changes)
    compiler = query.get_compiler(queryset.db)
    compiler.pre_sql_setup()
    return compiler.as_sql()


EVENTS = JobEvent._meta.db_table
def update_recording(queryset: QuerySet, changes: dict[str, Any], event: JobEvent) -> bool:
    """Apply `changes` to the rows of `queryset` (at most one) and, if a row changed,
    save `event` for it. Returns whether a row changed."""
    connection = connections[queryset.db]
    if connection.vendor != "postgresql":
        if not queryset.update(**changes):
            return False
        event.save(force_insert=True)
        return True
    update, params = _update_sql(queryset, changes)
    statement = (
        f"WITH changed AS ({update} RETURNING id) "
        f'INSERT INTO "{EVENTS}" (job_id, kind, message, attempt, created_at) '
        "SELECT changed.id, %s, %s, %s, %s FROM changed"
    )
    values = (event.kind, event.message, event.attempt, timezone.now())
    with connection.cursor() as cursor:
        cursor.execute(statement, (*params, *values))
        return cursor.rowcount > 0


def claim_returning(queryset: QuerySet, changes: dict[str, Any], now) -> Job | None:
    """PostgreSQL: apply the claim's `changes`, record the `started` event and read the
    claimed row back, in one statement. None when no row matched."""
    update, params = _update_sql(queryset, changes)
    columns = ", ".join(f'"{f.column}"' for f in Job._meta.concrete_fields)
    statement = (
        f"WITH claimed AS ({update} RETURNING {columns}), "
        f'started AS (INSERT INTO "{EVENTS}" (job_id, kind, message, attempt, created_at) '
        "SELECT id, 'started', 'Attempt ' || attempts || ' of ' || max_attempts, attempts, %s "
        "FROM claimed) "
        f"SELECT {columns} FROM claimed"
    )
    found = list(Job.objects.using(queryset.db).raw(statement, (*params, now)))
    return found[0] if found else None


def add_events(kind: str, rows: list[tuple[Any, str, int]], created_at) -> None:
    """Add one `kind` event per (job id, message, attempt) row."""
    if not rows:
        return
    connection = connections[JobEvent.objects.db]
    if connection.vendor != "postgresql":
        JobEvent.objects.bulk_create(
            [
                JobEvent(job_id=job_id, kind=kind, message=message, attempt=attempt, created_at=created_at)
                for job_id, message, attempt in rows
            ],
            batch_size=1000,
        )
        return
    ids, messages, attempts = zip(*rows, strict=True)
    insert = f'INSERT INTO "{EVENTS}" (job_id, kind, message, attempt, created_at) '
    with connection.cursor() as cursor:
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


# Many ids go to PostgreSQL as one comma-separated string: quoting one string is far
# cheaper than quoting an array literal of thousands of UUIDs.
UUIDS = "string_to_array(%s, ',')::uuid[]"


def _joined(ids) -> str:
    return ",".join(str(i) for i in ids)


def mark_dispatched(jobs: list[Job], now) -> None:
    """Set `dispatched_at` on the jobs and add their `dispatched` events."""
    connection = connections[Job.objects.db]
    job_ids = [job.id for job in jobs]
    if connection.vendor != "postgresql":
        Job.objects.filter(id__in=job_ids).update(dispatched_at=now)
        add_events("dispatched", [(job.id, "", job.attempts) for job in jobs], now)
        return
    with connection.cursor() as cursor:
        cursor.execute(
            f'WITH sent AS (UPDATE "{Job._meta.db_table}" SET dispatched_at = %s '
            f"WHERE id = ANY({UUIDS}) RETURNING id, attempts) "
            f'INSERT INTO "{EVENTS}" (job_id, kind, message, attempt, created_at) '
            "SELECT id, 'dispatched', '', attempts, %s FROM sent",
            (now, _joined(job_ids), now),
        )
