"""Who did what: operator actions on jobs, queues, job types and schedules, recorded
with the acting user and the door they came through (api, admin, dashboard, command)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .models import OperatorAction


class Via:
    API = "api"
    ADMIN = "admin"
    DASHBOARD = "dashboard"
    COMMAND = "command"
    WEB = "web"  # the users' own pages (the reports page)


def record(
    actor, action: str, target_kind: str, target: Any, *, via: str, **detail: Any
) -> OperatorAction:
    """Record that `actor` (a user, or None for the application) did `action` to
    `target` (of `target_kind`: job, batch, queue, type, schedule) through `via`."""
    row = _row(actor, action, target_kind, target, via, detail)
    row.save()
    return row


def _row(actor, action: str, target_kind: str, target: Any, via: str, detail: dict):
    signed_in = actor is not None and actor.is_authenticated
    return OperatorAction(
        actor=actor if signed_in else None,
        actor_name=actor.get_username() if signed_in else "",
        action=action,
        target_kind=target_kind,
        target=str(target)[:200],
        via=via,
        detail=detail,
    )


def record_each(
    actor, action: str, target_kind: str, targets: Iterable[Any], *, via: str, **detail: Any
) -> int:
    """`record` for many targets at once (a bulk retry); returns how many rows it wrote."""
    rows = [_row(actor, action, target_kind, target, via, detail) for target in targets]
    OperatorAction.objects.bulk_create(rows, batch_size=1000)
    return len(rows)


def describe(actor, via: str) -> str:
    """Who did it and how, for a job's timeline: "by alice (dashboard)"."""
    name = actor.get_username() if actor is not None and actor.is_authenticated else "the app"
    return f"by {name} ({via})"
