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


def active_count(url: str) -> int | None:
    """Queued and running jobs; None while the database does not answer."""
    try:
        return query(url, "SELECT count(*) FROM jobs_job WHERE status IN ('queued', 'running')")[0][
            0
        ]
    except psycopg.Error:
        return None
