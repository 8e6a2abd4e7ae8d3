import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class Status(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"
    # Not started before its `expires_at`: it never ran, and will not.
    EXPIRED = "expired", "Expired"


ACTIVE_STATUSES = (Status.QUEUED, Status.RUNNING)
FINISHED_STATUSES = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.EXPIRED)
RETRYABLE_STATUSES = (Status.FAILED, Status.CANCELLED, Status.EXPIRED)


class Held(models.TextChoices):
    """Why a queued job waits although its time has come: it starts when a pause ends
    or a slot of its type's limits frees, not on a message of its own."""

    NO = "", "Not held"
    PAUSED = "paused", "Paused"
    CONCURRENCY = "concurrency", "Concurrency limit"
    RATE = "rate", "Rate limit"  # holds a start reserved for its run_at
    # Waits for the jobs it depends on to end; the end of the last one releases it.
    DEPENDENCIES = "dependencies", "Dependencies"


class OnDependencyFailure(models.TextChoices):
    """What a job does when a job it depends on failed, was cancelled or expired."""

    CANCEL = "cancel", "Cancel"
    RUN = "run", "Run anyway"


class Priority(models.IntegerChoices):
    LOW = 0, "low"
    NORMAL = 5, "normal"
    HIGH = 9, "high"

    @classmethod
    def from_name(cls, name: str) -> "Priority":
        return {p.label: p for p in cls}[name]


class JobQuerySet(models.QuerySet):
    def visible_to(self, user) -> "JobQuerySet":
        if user.is_staff:
            return self
        return self.filter(owner=user)

    def active(self) -> "JobQuerySet":
        return self.filter(status__in=ACTIVE_STATUSES)


class Job(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    type = models.CharField(max_length=100)
    # No index of its own: job_owner_created starts with owner_id and serves every
    # lookup by owner, the cascade of a deleted user included.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="jobs",
        db_index=False,
    )
    payload = models.JSONField(default=dict, blank=True)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0)
    message = models.CharField(max_length=255, blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=3)
    # Runs that ended in a snooze (the handler asked to run again later): each claim
    # still counts in `attempts`, the fence of a run, but these are given back.
    snoozes = models.PositiveIntegerField(default=0, db_default=0)
    stalled_count = models.PositiveIntegerField(default=0)
    priority = models.PositiveSmallIntegerField(choices=Priority.choices, default=Priority.NORMAL)
    queue = models.CharField(max_length=64, default="default")
    # NULL, not "", for "no key": the unique constraints must ignore keyless jobs.
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    run_at = models.DateTimeField(null=True, blank=True)
    # Not started by then: it ends as expired instead of running late.
    expires_at = models.DateTimeField(null=True, blank=True)
    # This job's soft time limit in seconds, within its type's (None: the type's).
    time_limit = models.PositiveIntegerField(null=True, blank=True)
    # Types declaring `unique`: the key of the payload fields (and owner) that only one
    # active job may hold; NULL for everything else, which the constraint ignores.
    unique_key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    held = models.CharField(
        max_length=16, choices=Held.choices, blank=True, default=Held.NO, db_default=Held.NO
    )
    on_dependency_failure = models.CharField(
        max_length=8,
        choices=OnDependencyFailure.choices,
        default=OnDependencyFailure.CANCEL,
        db_default=OnDependencyFailure.CANCEL,
    )
    dispatched_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    cancel_requested = models.BooleanField(default=False)
    # The batch it belongs to (jobs/batches.py); indexed by job_batch_status only.
    batch = models.ForeignKey(
        "Batch",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="jobs",
        db_index=False,
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = JobQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        # Beyond the staff flag and view_job: what operators may read and do to jobs
        # that are not theirs (jobs.visibility, the admin's actions).
        permissions = [
            ("view_job_payload", "Can see other users' job payloads and results"),
            ("retry_job", "Can retry failed or cancelled jobs"),
            ("cancel_job", "Can cancel jobs"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=Q(owner__isnull=False, idempotency_key__isnull=False),
                name="job_unique_key_per_owner",
            ),
            models.UniqueConstraint(
                fields=["idempotency_key"],
                condition=Q(owner__isnull=True, idempotency_key__isnull=False),
                name="job_unique_key_for_system",
            ),
            models.UniqueConstraint(
                fields=["type", "unique_key"],
                condition=Q(unique_key__isnull=False, status__in=["queued", "running"]),
                name="job_unique_while_active",
            ),
        ]
        # Every full index gains an entry at each non-HOT update of a job (the claim,
        # the end, the dispatch mark), so only list filters get one; the sweepers use
        # partial indexes holding just the rows they look at. None indexes
        # heartbeat_at, so heartbeats and progress updates can be HOT updates.
        indexes = [
            # GET /api/jobs/ as a user: owner_id = ? ORDER BY created_at DESC.
            models.Index(fields=["owner", "-created_at"], name="job_owner_created"),
            # ... with ?status=: owner_id = ? AND status = ? ORDER BY created_at DESC.
            models.Index(fields=["owner", "status", "-created_at"], name="job_owner_status"),
            # GET /api/jobs/ as staff, the dashboard's recent jobs: ORDER BY created_at DESC.
            models.Index(fields=["-created_at"], name="job_created"),
            # ... as staff with ?status=: status = ? ORDER BY created_at DESC.
            models.Index(fields=["status", "-created_at"], name="job_status_created"),
            # ... as staff with ?type= (and ?status=).
            models.Index(fields=["type", "status", "-created_at"], name="job_type_status"),
            # dispatch_due: queued rows never sent (dispatched_at IS NULL) or sent long
            # ago (dispatched_at < ?), each narrowed by run_at: a bitmap OR of ranges
            # that skips the queued rows waiting for a worker or for a later run_at.
            models.Index(
                fields=["dispatched_at", "run_at"],
                condition=Q(status="queued"),
                name="job_queued_due",
            ),
            # recover_stalled reads the running rows (as many as workers run) through
            # job_status_created and checks their heartbeat_at one by one.
            # purge_finished, one index per retention policy: type = ? AND status IN
            # (...) ORDER BY finished_at DESC OFFSET keep, and finished_at < cutoff.
            # With status in the key, the failed policy's two statuses would need a
            # sort of all its rows to find the newest. They also give the ends by time
            # (the history, the follow-ups' catch-ups): type IN (registered types) AND
            # finished_at >= ?, one query per index.
            models.Index(
                fields=["type", "finished_at"],
                condition=Q(status="succeeded"),
                name="job_purge_succeeded",
            ),
            models.Index(
                fields=["type", "finished_at"],
                condition=Q(status__in=["failed", "cancelled", "expired"]),
                name="job_purge_failed",
            ),
            # Releasing held jobs as limits free and pauses end: the few queued rows
            # held, by type, in the order they start.
            models.Index(
                fields=["type", "-priority", "created_at"],
                condition=Q(status="queued") & ~Q(held=""),
                name="job_held",
            ),
            # jobs.line: the queued jobs ahead of one, not held, in the order workers
            # take them: two range reads (higher priority; same priority, older) that
            # stop at the cap. run_at is checked from the index entry.
            models.Index(
                fields=["queue", "-priority", "created_at", "run_at"],
                condition=Q(status="queued", held=""),
                name="job_queued_line",
            ),
            # The expiry sweeper: queued rows that carry an expiry.
            models.Index(
                fields=["expires_at"],
                condition=Q(status="queued", expires_at__isnull=False),
                name="job_queued_expiring",
            ),
            # The dependencies' catch-up: the few queued rows waiting for other jobs.
            models.Index(
                fields=["created_at"],
                condition=Q(status="queued", held="dependencies"),
                name="job_waiting_dependencies",
            ),
            # The dashboard's failed list: status = 'failed' ORDER BY finished_at DESC.
            models.Index(
                fields=["-finished_at"],
                condition=Q(status="failed"),
                name="job_failed_finished",
            ),
            # A batch's jobs counted by status (its summary, its settling): partial, so
            # the jobs outside batches, nearly all of them, cost it nothing.
            models.Index(
                fields=["batch", "status"],
                condition=Q(batch__isnull=False),
                name="job_batch_status",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.id}"

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @property
    def attempts_used(self) -> int:
        """The attempts counted against `max_attempts`: runs that did not snooze."""
        return self.attempts - self.snoozes

    @property
    def priority_name(self) -> str:
        return Priority(self.priority).label

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


class EventKind(models.TextChoices):
    CREATED = "created"
    DISPATCHED = "dispatched"
    STARTED = "started"
    PROGRESS = "progress"
    RETRY_SCHEDULED = "retry_scheduled"
    FAILED = "failed"
    SUCCEEDED = "succeeded"
    CANCEL_REQUESTED = "cancel_requested"
    CANCELLED = "cancelled"
    RECOVERED = "recovered"
    RETRIED = "retried"
    HELD = "held"  # waits for a pause to end or a limit to allow it
    RELEASED = "released"  # a pause ended or a limit freed: sent to start
    SNOOZED = "snoozed"  # the handler asked to run again later, not as a failure
    EXPIRED = "expired"
    DEBOUNCED = "debounced"  # a newer create replaced its payload


class JobEvent(models.Model):
    # Looked up by jobevent_job_created, which starts with job_id.
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="events", db_index=False)
    kind = models.CharField(max_length=32, choices=EventKind.choices)
    message = models.CharField(max_length=500, blank=True, default="")
    attempt = models.PositiveIntegerField(default=0)
    # The moment of the change it records (the store passes it), not of the INSERT.
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["job", "created_at"], name="jobevent_job_created")]

    def __str__(self) -> str:
        return f"{self.kind} {self.job_id}"


class JobEffect(models.Model):
    """A side effect (an e-mail, an outside call) a job has reserved or done.

    The unique (job, name) pair makes the effect happen at most once however often
    the job is retried, recovered or redelivered.
    """

    # Looked up by the unique (job, name) index, which starts with job_id.
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="effects", db_index=False)
    name = models.CharField(max_length=200)
    done = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["job", "name"], name="jobeffect_unique_per_job"),
        ]

    def __str__(self) -> str:
        return f"{self.name} for {self.job_id}"


class WorkerHeartbeat(models.Model):
    """A running worker's sign of life, written by the worker itself every few seconds."""

    hostname = models.CharField(max_length=255, unique=True)
    pid = models.PositiveIntegerField()
    queues = models.JSONField(default=list)
    # Jobs it runs at once (its pool's size): the slots jobs.line spreads a queue over.
    concurrency = models.PositiveIntegerField(default=1)
    started_at = models.DateTimeField()
    seen_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return self.hostname


class Scope(models.TextChoices):
    QUEUE = "queue", "Queue"
    TYPE = "type", "Job type"


class Control(models.Model):
    """An operator's hand on a queue or a job type: paused or not and, for a type, limits
    that replace the ones it declares (jobs.registry.Limits) while `overrides_limits`.
    A row exists only once an operator touched it; see jobs/controls.py."""

    scope = models.CharField(max_length=8, choices=Scope.choices)
    name = models.CharField(max_length=100)
    paused = models.BooleanField(default=False)
    overrides_limits = models.BooleanField(default=False)
    concurrency = models.PositiveIntegerField(null=True, blank=True)
    owner_concurrency = models.PositiveIntegerField(null=True, blank=True)
    rate = models.PositiveIntegerField(null=True, blank=True)
    owner_rate = models.PositiveIntegerField(null=True, blank=True)
    period = models.FloatField(null=True, blank=True)
    # Whether jobs it covers must go through the limits gate: paused, or with limits of
    # its own. The claim reads just this (one indexed lookup in the claim's statement).
    gates = models.BooleanField(default=False)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["scope", "name"], name="control_unique_scope_name")
        ]
        permissions = [
            ("pause_jobs", "Can pause and resume queues and job types"),
            ("change_limits", "Can change job types' concurrency and rate limits"),
        ]

    def __str__(self) -> str:
        return f"{self.scope} {self.name}"


class LimitState(models.Model):
    """One job type's (or one owner's jobs of a type) rate-limit state: the last starts
    and the starts reserved for jobs waiting their turn, as epoch milliseconds. A type's
    row is also the lock its gated claims take (jobs/limits.py)."""

    key = models.CharField(max_length=200, unique=True)
    starts = models.JSONField(default=list)
    reserved = models.JSONField(default=list)

    def __str__(self) -> str:
        return self.key


class OperatorAction(models.Model):
    """Who did what to jobs, queues, types or schedules, and through which door."""

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The username at the time, kept when the user is deleted.
    actor_name = models.CharField(max_length=150, blank=True, default="")
    action = models.CharField(max_length=32)
    target_kind = models.CharField(max_length=16)
    target = models.CharField(max_length=200)
    via = models.CharField(max_length=16)
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["target_kind", "target"], name="operatoraction_target")]

    def __str__(self) -> str:
        return f"{self.actor_name} {self.action} {self.target_kind} {self.target}"


class BatchState(models.TextChoices):
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


class BatchQuerySet(models.QuerySet):
    def visible_to(self, user) -> "BatchQuerySet":
        if user.is_staff:
            return self
        return self.filter(owner=user)


class Batch(models.Model):
    """Jobs created together and followed as one (jobs/batches.py): once none of them is
    queued or running the batch settles, once, and its callback jobs are created."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # None: the application's own batch. Looked up by batch_owner_created.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="batches",
        db_index=False,
    )
    description = models.CharField(max_length=200, blank=True, default="")
    state = models.CharField(max_length=16, choices=BatchState.choices, default=BatchState.RUNNING)
    cancel_requested = models.BooleanField(default=False)
    # Job specs (type, payload, priority, max_attempts, time_limit) created when the
    # batch settles: on_success only when it succeeded, on_complete however it ended.
    on_success = models.JSONField(null=True, blank=True)
    on_complete = models.JSONField(null=True, blank=True)
    success_job = models.ForeignKey(
        Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    complete_job = models.ForeignKey(
        Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The jobs that failed or expired, as the batch settled.
    failed_job_ids = models.JSONField(default=list, blank=True)
    # NULL, not "", for "no key", as on jobs; `fingerprint` tells a repeat of the same
    # request from another request with the same key.
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    fingerprint = models.CharField(max_length=64, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = BatchQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "batches"
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=Q(owner__isnull=False, idempotency_key__isnull=False),
                name="batch_unique_key_per_owner",
            ),
        ]
        indexes = [
            # GET /api/batches/ as a user; and the cascade of a deleted user.
            models.Index(fields=["owner", "-created_at"], name="batch_owner_created"),
            # ... as staff.
            models.Index(fields=["-created_at"], name="batch_created"),
            # The sweeper's catch-up: the few batches still running.
            models.Index(fields=["created_at"], condition=Q(state="running"), name="batch_running"),
            # The webhooks' catch-up: the batches that settled since its mark.
            models.Index(
                fields=["finished_at"], condition=~Q(state="running"), name="batch_finished"
            ),
        ]

    def __str__(self) -> str:
        return f"batch {self.id}"

    @property
    def is_finished(self) -> bool:
        return self.state != BatchState.RUNNING


class JobDependency(models.Model):
    """`job` waits for `depends_on` to succeed (jobs/dependencies.py)."""

    # Looked up by the unique (job, depends_on) index, which starts with job_id.
    job = models.ForeignKey(
        Job, on_delete=models.CASCADE, related_name="dependencies", db_index=False
    )
    depends_on = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="dependents")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["job", "depends_on"], name="jobdependency_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.job_id} after {self.depends_on_id}"


class HistoryRollup(models.Model):
    """The jobs of one type that ended with one status in one closed minute (`seconds`
    60) or quarter hour (900), rolled up from the job table by the sweeper
    (jobs.history.roll_up): how many, and histograms of their run and wait times
    (jobs.history.Histogram: bin number -> jobs)."""

    start = models.DateTimeField()
    seconds = models.PositiveIntegerField()
    type = models.CharField(max_length=100)
    status = models.CharField(max_length=16, choices=Status.choices)
    finished = models.PositiveIntegerField()
    runs = models.JSONField(default=dict)
    waits = models.JSONField(default=dict)

    class Meta:
        # Also the index the history reads through: a range of minutes or quarters.
        constraints = [
            models.UniqueConstraint(
                fields=["seconds", "start", "type", "status"], name="historyrollup_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.status} {self.seconds}s from {self.start.isoformat()}"


class FollowUpMark(models.Model):
    """How far a follow-up's catch-up has read the ends (jobs/followups.py): the start
    of its last complete pass, and of its last complete full pass."""

    name = models.CharField(max_length=64, primary_key=True)
    caught_up_to = models.DateTimeField()
    full_pass_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.name} caught up to {self.caught_up_to.isoformat()}"


class HistoryMark(models.Model):
    """How far the history is rolled up: every minute before `rolled_up_to` is in
    HistoryRollup, none after. One row, locked while a roll-up advances it."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    rolled_up_to = models.DateTimeField()

    def __str__(self) -> str:
        return f"rolled up to {self.rolled_up_to.isoformat()}"
