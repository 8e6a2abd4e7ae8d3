"""What of a job each viewer may see.

Everyone who may see a job sees its status. Its payload and result are its owner's:
other users see them only with the `view_job_payload` permission (superusers have every
permission), so the staff flag alone does not reveal them. A stored error is the
exception's one-line summary, then a blank line and the traceback (jobs.runner); staff
see all of it, everyone else the first line. Cancelling or retrying another user's job
takes the `cancel_job` / `retry_job` permission, as the admin's actions do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractUser, AnonymousUser

    Viewer = AbstractUser | AnonymousUser | None

PAYLOAD_PERMISSION = "jobs.view_job_payload"
RETRY_PERMISSION = "jobs.retry_job"
CANCEL_PERMISSION = "jobs.cancel_job"
ONE_LINE_ERROR_MAX = 300


def one_line_error(error: str) -> str:
    """The exception's type and message: the first line of a stored error, shortened."""
    line = error.partition("\n")[0]
    if len(line) > ONE_LINE_ERROR_MAX:
        return line[: ONE_LINE_ERROR_MAX - 1] + "…"
    return line


def sees_tracebacks(viewer: Viewer) -> bool:
    return bool(viewer is not None and viewer.is_staff)


def sees_payload(viewer: Viewer, owner_id: int | None) -> bool:
    if viewer is None or viewer.pk is None:
        return False
    return owner_id == viewer.pk or viewer.has_perm(PAYLOAD_PERMISSION)


def may_act_on(viewer: Viewer, owner_id: int | None, permission: str) -> bool:
    """Owners cancel and retry their own jobs; anyone else (staff seeing every job)
    needs `permission` as well."""
    if viewer is None or viewer.pk is None:
        return False
    return owner_id == viewer.pk or viewer.has_perm(permission)


def shown_to(viewer: Viewer, owner_id: int | None, data: dict[str, Any]) -> dict[str, Any]:
    """A job's serialized fields with what `viewer` may not see taken out."""
    if not sees_payload(viewer, owner_id):
        data["payload"] = data["result"] = None
    if not sees_tracebacks(viewer) and data.get("error"):
        data["error"] = one_line_error(data["error"])
    return data
