"""The job engine as the apps see it: everything an app needs to declare job types,
write handlers, create jobs and act on them. Apps import from here, not from the
engine's modules."""

from .api import JobSerializer, job_data
from .audit import Via
from .audit import record as audit_record
from .context import JobContext
from .errors import IdempotencyConflict, InvalidTransition, PermanentError, TooManyActiveJobs
from .followups import register as register_follow_up
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
    "PermanentError",
    "Retention",
    "Status",
    "TooManyActiveJobs",
    "Unique",
    "Via",
    "audit_record",
    "cancel",
    "enqueue",
    "enqueue_many",
    "job_data",
    "job_type",
    "one_line_error",
    "register_follow_up",
    "retry",
]
