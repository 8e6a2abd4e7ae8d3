class PermanentError(Exception):
    """Raised by a handler when retrying cannot help (bad data, a refused request).

    The job fails at once with this message, whatever attempts it has left.
    """


class JobCancelled(Exception):
    """Raised at a progress checkpoint when the job's cancellation was requested."""


class JobLost(Exception):
    """Raised at a checkpoint when this worker no longer holds the job.

    It happens when the job was recovered as stalled and claimed elsewhere; the run
    stops without writing anything more.
    """


class IdempotencyConflict(Exception):
    def __init__(self, job):
        super().__init__(
            f"Idempotency key {job.idempotency_key!r} was already used for a different "
            f"request (job {job.id})."
        )
        self.job = job


class InvalidTransition(Exception):
    """An operation that the job's current status does not allow."""

    def __init__(self, job, action: str):
        super().__init__(f"Cannot {action} a job that is {job.status}.")
        self.job = job
        self.action = action
