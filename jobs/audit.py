"""Who did what: operator actions on jobs, queues, job types and schedules, recorded
with the acting user and the door they came through (api, admin, dashboard, command)."""

from __future__ import annotations

from typing import Any

from .models import OperatorAction


class Via:
    API = "api"
    ADMIN = "admin"
    DASHBOARD = "dashboard"
    COMMAND = "command"


def record(
    actor, action: str, target_kind: str, target: Any, *, via: str, **detail: Any
) -> OperatorAction:
    """Record that `actor` (a user, or None for the application) did `action` to
    `target` (of `target_kind`: job, queue, type, schedule) through `via`."""
    return OperatorAction.objects.create(
        actor=actor if actor is not None and actor.is_authenticated else None,
        actor_name=actor.get_username() if actor is not None and actor.is_authenticated else "",
        action=action,
        target_kind=target_kind,
        target=str(target)[:200],
        via=via,
        detail=detail,
    )
