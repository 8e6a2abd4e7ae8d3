"""The job engine as the apps see it: everything an app needs to declare job types,
write handlers, create jobs and act on them. Apps import from here, not from the
engine's modules."""

from .api import LINE_HELP, JobSerializer, LineSerializer, job_data, line_representation
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
from .followups import CaughtUp, ended_since
from .followups import register as register_follow_up
from .line import Place, in_words, place_data, place_in_line
from .live import publish as publish_live_change
from .live import publish_on_commit as publish_live_change_on_commit
from .live_api import PUSH_REFUSED, WAIT_PARAMETER, long_poll
from .models import FINISHED_STATUSES, Batch, BatchState, Job, Status
from .registry import Exposure, Limits, Retention, Unique, job_type
from .services import Enqueued, JobSpec, cancel, chain, enqueue, enqueue_many, retry
from .tasks_backend import current_job
from .visibility import one_line_error

__all__ = [
    "FINISHED_STATUSES",
    "Batch",
    "BatchIdempotencyConflict",
    "CaughtUp",
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
    "LINE_HELP",
    "LineSerializer",
    "Limits",
    "PUSH_REFUSED",
    "PermanentError",
    "Place",
    "Retention",
    "Status",
    "TooManyActiveJobs",
    "Unique",
    "Via",
    "audit_record",
    "batch_finished",
    "batch_of_callback",
    "batch_summary",
    "WAIT_PARAMETER",
    "cancel",
    "cancel_batch",
    "create_batch",
    "current_job",
    "chain",
    "enqueue",
    "ended_since",
    "enqueue_many",
    "in_words",
    "job_data",
    "job_type",
    "line_representation",
    "one_line_error",
    "place_data",
    "place_in_line",
    "long_poll",
    "one_line_error",
    "publish_live_change",
    "publish_live_change_on_commit",
    "register_follow_up",
    "retry",
]
