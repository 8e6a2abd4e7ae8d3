"""Reading the soak's database directly (psycopg, no Django: the soak may run inside a
test process whose Django points elsewhere)."""

from __future__ import annotations

from typing import Any

import psycopg

ACTIVE = ("queued", "running")
TERMINAL = ("succeeded", "failed", "cancelled")


def query(url: str, sql: str, params: tuple = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, connect_timeout=3) as conn:
        return conn.execute(sql, params).fetchall()


def active_count(url: str, moved_within: float | None = None) -> int | None:
    """Queued and running jobs (only those updated within the last `moved_within`
    seconds, if given); None while the database does not answer."""
    sql = "SELECT count(*) FROM jobs_job WHERE status IN ('queued', 'running')"
    params: tuple = ()
    if moved_within is not None:
        sql += " AND updated_at > now() - make_interval(secs => %s)"
        params = (moved_within,)
    try:
        return query(url, sql, params)[0][0]
    except psycopg.Error:
        return None
