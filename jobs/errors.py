class PermanentError(Exception):
    """Raised by a handler when retrying cannot help (bad data, a refused request).

    The job fails at once with this message, whatever attempts it has left.
    """


class JobSnoozed(Exception):
    """Raised by `JobContext.snooze`: the run ends and the job runs again in `delay`
    seconds, the run not counting as a failed attempt."""

    def __init__(self, delay: float, reason: str = ""):
        super().__init__(reason or f"Snoozed for {delay:g}s")
        self.delay = delay
        self.reason = reason


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


class UniqueKeyHeld(InvalidTransition):
    """A unique job cannot become active again while another job holds its key."""

    def __init__(self, job, holder, action: str):
        super().__init__(job, action)
        self.args = (
            f"Cannot {action} this job: job {holder.id} with the same unique key is "
            f"{holder.status}.",
        )
        self.holder = holder


class TooManyActiveJobs(Exception):
    """Creating more jobs would take a user past their cap of queued and running jobs.

    `active` is counted up to the cap, so at the cap it means "at least this many".
    """

    def __init__(self, *, limit: int, active: int, requested: int):
        have = f"{active}" if active < limit else f"{active} or more"
        super().__init__(
            f"At most {limit} queued or running jobs per user: you have {have}, and this "
            f"request adds {requested}. Wait for some to finish, or cancel some."
        )
        self.limit = limit
        self.active = active
        self.requested = requested
