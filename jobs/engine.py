"""The job engine as the apps see it: everything an app needs to declare job types,
write handlers, create jobs and act on them. Apps import from here, not from the
engine's modules."""

from .api import JobSerializer, job_data
from .audit import Via
from .context import JobContext
from .errors import IdempotencyConflict, InvalidTransition, PermanentError, TooManyActiveJobs
from .followups import register as register_follow_up
from .live import publish as publish_live_change
from .live import publish_on_commit as publish_live_change_on_commit
from .live_api import PUSH_REFUSED, WAIT_PARAMETER, long_poll
from .models import FINISHED_STATUSES, Job, Status
from .registry import Exposure, Limits, Retention, Unique, job_type
from .services import Enqueued, JobSpec, cancel, enqueue, enqueue_many, retry
from .visibility import one_line_error

__all__ = [
    "FINISHED_STATUSES",
    "Enqueued",
    "Exposure",
    "IdempotencyConflict",
    "InvalidTransition",
    "Job",
    "JobContext",
    "JobSerializer",
    "JobSpec",
    "Limits",
    "PUSH_REFUSED",
    "PermanentError",
    "Retention",
    "Status",
    "TooManyActiveJobs",
    "Unique",
    "Via",
    "WAIT_PARAMETER",
    "cancel",
    "enqueue",
    "enqueue_many",
    "job_data",
    "job_type",
    "long_poll",
    "one_line_error",
    "publish_live_change",
    "publish_live_change_on_commit",
    "register_follow_up",
    "retry",
]
