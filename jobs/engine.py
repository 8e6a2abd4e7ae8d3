"""The job engine as the apps see it: everything an app needs to declare job types,
write handlers, create jobs and act on them. Apps import from here, not from the
engine's modules."""

from .api import JobSerializer, job_data
from .audit import Via
from .audit import record as audit_record
from .batches import (
    BatchIdempotencyConflict,
    BatchNotRunning,
    batch_finished,
    batch_of_callback,
    batch_summary,
    cancel_batch,
    create_batch,
)
from .context import JobContext
from .errors import IdempotencyConflict, InvalidTransition, PermanentError, TooManyActiveJobs
from .followups import register as register_follow_up
from .models import FINISHED_STATUSES, Batch, BatchState, Job, Status
from .registry import Exposure, Limits, Retention, Unique, job_type
from .services import Enqueued, JobSpec, cancel, chain, enqueue, enqueue_many, retry
from .visibility import one_line_error

__all__ = [
    "FINISHED_STATUSES",
    "Batch",
    "BatchIdempotencyConflict",
    "BatchNotRunning",
    "BatchState",
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
    "batch_finished",
    "batch_of_callback",
    "batch_summary",
    "cancel",
    "cancel_batch",
    "create_batch",
    "chain",
    "enqueue",
    "enqueue_many",
    "job_data",
    "job_type",
    "one_line_error",
    "register_follow_up",
    "retry",
]
