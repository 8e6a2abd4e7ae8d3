"""Retries the handler chooses: a snooze runs the job again later without using an
attempt; a type names the errors it retries and those that fail at once. A job may carry
an expiry, after which it ends as expired instead of starting late, and its own attempts
and time limit within its type's. The jobs run in the test process on an injected clock;
one test proves the per-job time limit on a real worker."""

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework import serializers

from jobs import controls, messages, retention, services, sweepers
from jobs.audit import Via
from jobs.models import Job, Scope
from jobs.registry import Limits
from tests.engine import event_kinds, job_type, reloaded, run, run_to_the_end

pytestmark = pytest.mark.django_db


def later(now, seconds: float):
    return now + timedelta(seconds=seconds)


# --- snooze --------------------------------------------------------------------------


def test_a_snooze_runs_the_job_again_later_without_using_an_attempt():
    seen = []

    def handler(ctx):
        seen.append((ctx.attempt, ctx.job.attempts))
        if len(seen) < 3:
            ctx.snooze(30, "provider said retry after 30 s")
        return {"attempt": ctx.attempt}

    with job_type(handler, max_attempts=1) as jt:
        job = services.enqueue(jt.name).job
        now = timezone.now()
        assert run(job, now=now) == "snoozed"

        snoozed = reloaded(job)
        assert (snoozed.status, snoozed.attempts, snoozed.snoozes) == ("queued", 1, 1)
        assert snoozed.run_at == later(now, 30)
        assert snoozed.message == "Snoozed for 30s: provider said retry after 30 s"
        assert snoozed.dispatched_at == now  # sent with its ETA, as a retry is
        # A stale message for the job, arriving now, starts nothing.
        assert run(job, now=now) == "early"
        assert run(job, now=snoozed.run_at) == "snoozed"
        assert run(job, now=reloaded(job).run_at) == "succeeded"

    done = reloaded(job)
    # One attempt allowed, three runs: the two that snoozed were given back.
    assert (done.status, done.attempts, done.snoozes, done.max_attempts) == ("succeeded", 3, 2, 1)
    assert done.result == {"attempt": 1}
    assert seen == [(1, 1), (1, 2), (1, 3)]
    snoozes = done.events.filter(kind="snoozed").order_by("id")
    assert [(e.attempt, e.message) for e in snoozes] == [
        (1, "Snoozed for 30s: provider said retry after 30 s"),
        (2, "Snoozed for 30s: provider said retry after 30 s"),
    ]
    started = done.events.filter(kind="started").order_by("id")
    assert [e.message for e in started] == ["Attempt 1 of 1"] * 3


def test_the_run_after_a_snooze_holds_the_job_under_a_new_fence():
    found = {}

    def handler(ctx):
        if ctx.job.snoozes == 0:
            found["snoozed_run"] = ctx.job.attempts
            ctx.snooze(1)
        # The pool process of the snoozed run died after it: what it held must not
        # requeue this run.
        found["requeued"] = sweepers.recover_lost(
            ctx.job.id, found["snoozed_run"], "its pool process died"
        )
        return "done"

    with job_type(handler) as jt:
        job = services.enqueue(jt.name).job
        assert run_to_the_end(job) == ["snoozed", "succeeded"]

    assert found["requeued"] is False
    assert reloaded(job).status == "succeeded"


def test_a_long_snooze_waits_in_the_database_for_the_dispatch_sweeper(settings):
    settings.JOBS_BROKER_DELAY_MAX = 60

    def handler(ctx):
        if ctx.job.snoozes == 0:
            ctx.snooze(600, "quota resets in 10 minutes")
        return "done"

    with job_type(handler) as jt:
        job = services.enqueue(jt.name).job
        now = timezone.now()
        assert run(job, now=now) == "snoozed"
        snoozed = reloaded(job)
        assert (snoozed.run_at, snoozed.dispatched_at) == (later(now, 600), None)

        assert sweepers.dispatch_due(now=later(now, 500)) == 0
        assert sweepers.dispatch_due(now=later(now, 560)) == 1
        assert reloaded(job).dispatched_at == later(now, 560)
        assert run(job, now=later(now, 600)) == "succeeded"


def test_a_job_that_keeps_snoozing_fails_at_the_cap_and_a_manual_retry_starts_afresh(settings):
    settings.JOBS_MAX_SNOOZES = 2

    def handler(ctx):
        ctx.snooze(1, "still busy")

    with job_type(handler) as jt:
        job = services.enqueue(jt.name).job
        assert run_to_the_end(job) == ["snoozed", "snoozed", "failed"]
        failed = reloaded(job)
        assert failed.error == (
            "Snoozed 2 times, the most a job may (JOBS_MAX_SNOOZES); asked again: still busy"
        )
        assert (failed.attempts, failed.snoozes) == (3, 2)

        retried = services.retry(failed)
        assert (retried.status, retried.attempts, retried.snoozes) == ("queued", 0, 0)
        assert run_to_the_end(job) == ["snoozed", "snoozed", "failed"]


@pytest.mark.parametrize("seconds", [0, -5, 24 * 3600 + 1])
def test_a_snooze_outside_its_bounds_is_an_error_of_the_handler(seconds):
    def handler(ctx):
        ctx.snooze(seconds)

    with job_type(handler, max_attempts=1) as jt:
        job = services.enqueue(jt.name).job
        assert run(job) == "failed"

    failed = reloaded(job)
    assert failed.error.startswith(
        f"ValueError: Snooze for more than 0 and at most 86400 seconds, not {seconds!r}."
    )
    assert failed.snoozes == 0


# --- which errors are retried --------------------------------------------------------


class ProviderBusy(Exception):
    pass


class ProviderRefused(ProviderBusy):
    pass


def raising(error: Exception):
    def handler(ctx):
        raise error

    return handler


def test_a_type_retries_only_its_retry_on_errors_and_never_its_fail_on_ones():
    options = {"max_attempts": 3, "retry_on": (ProviderBusy,), "fail_on": (ProviderRefused,)}

    with job_type(raising(ProviderBusy("try later")), **options) as jt:
        job = services.enqueue(jt.name).job
        assert run_to_the_end(job) == ["retry", "retry", "failed"]

    with job_type(raising(ProviderRefused("no such account")), **options) as jt:
        job = services.enqueue(jt.name).job
        assert run(job) == "failed"
        failed = reloaded(job)
        assert failed.attempts == 1
        assert failed.error.startswith("ProviderRefused: no such account\n\nTraceback")

    with job_type(raising(KeyError("recipient")), **options) as jt:
        job = services.enqueue(jt.name).job
        assert run(job) == "failed"
        assert reloaded(job).error.startswith("KeyError: 'recipient'")
        assert event_kinds(job)[-2:] == ["started", "failed"]


def test_a_type_that_names_no_errors_retries_every_one():
    with job_type(raising(KeyError("recipient")), max_attempts=2) as jt:
        job = services.enqueue(jt.name).job
        assert run_to_the_end(job) == ["retry", "failed"]


# --- expiry ----------------------------------------------------------------------------


def test_a_job_not_started_before_its_expiry_ends_expired_instead_of_running():
    ran = []

    with job_type(lambda ctx: ran.append(ctx.job.id)) as jt:
        now = timezone.now()
        in_time = services.enqueue(jt.name, expires_at=later(now, 10)).job
        late = services.enqueue(jt.name, expires_at=later(now, 10)).job

        assert run(in_time, now=later(now, 9)) == "succeeded"
        assert run(late, now=later(now, 10)) == "expired"
        assert run(late, now=later(now, 11)) == "duplicate"

    assert ran == [in_time.id]
    expired = reloaded(late)
    assert (expired.status, expired.finished_at, expired.attempts) == (
        "expired",
        later(now, 10),
        0,
    )
    assert expired.message == "Expired before it could start"
    assert expired.is_finished
    assert event_kinds(late) == ["created", "dispatched", "expired"]
    assert expired.events.get(kind="expired").message == (
        f"Not started by {later(now, 10).isoformat()}"
    )


def test_a_job_with_limits_expires_at_its_gate_too():
    with job_type(lambda ctx: "done", limits=Limits(concurrency=2)) as jt:
        now = timezone.now()
        job = services.enqueue(jt.name, expires_at=later(now, 5)).job
        assert run(job, now=later(now, 6)) == "expired"
    assert reloaded(job).status == "expired"


def test_a_retry_due_after_the_expiry_ends_expired_without_running_again():
    runs = []

    def handler(ctx):
        runs.append(ctx.attempt)
        raise RuntimeError("down")

    with job_type(handler, backoff_base=30) as jt:
        now = timezone.now()
        job = services.enqueue(jt.name, expires_at=later(now, 10)).job
        assert run(job, now=now) == "retry"
        assert run(job, now=reloaded(job).run_at) == "expired"

    assert runs == [1]
    assert reloaded(job).status == "expired"


def test_the_sweeper_expires_overdue_queued_jobs_a_batch_at_a_time(settings, staff_user):
    settings.JOBS_SWEEP_BATCH = 2

    with job_type(lambda ctx: "done") as jt:
        controls.pause(Scope.TYPE, jt.name, by=staff_user, via=Via.API)
        now = timezone.now()
        overdue = [services.enqueue(jt.name, expires_at=later(now, 5)).job for _ in range(3)]
        assert run(overdue[0], now=now) == "held"  # held for the pause: no message
        not_yet = services.enqueue(jt.name, expires_at=later(now, 60)).job
        no_expiry = services.enqueue(jt.name).job

        assert sweepers.expire_overdue(later(now, 6)) == 2
        assert sweepers.expire_overdue(later(now, 6)) == 1
        assert sweepers.expire_overdue(later(now, 6)) == 0

    assert [reloaded(job).status for job in overdue] == ["expired"] * 3
    assert reloaded(overdue[0]).held == ""
    assert reloaded(not_yet).status == "queued"
    assert reloaded(no_expiry).status == "queued"
    assert event_kinds(overdue[0])[-1] == "expired"


@pytest.mark.parametrize("ended_by", ["sweeper", "its message"])
def test_a_job_that_expires_waiting_for_its_rate_limit_turn_gives_the_turn_back(ended_by):
    now = timezone.now().replace(microsecond=0)
    with job_type(lambda ctx: "done", limits=Limits(rate=1, period=60)) as jt:
        assert run(services.enqueue(jt.name).job, now=now) == "succeeded"
        waiting = services.enqueue(jt.name, expires_at=later(now, 30)).job
        assert run(waiting, now=now) == "held"
        assert reloaded(waiting).run_at == later(now, 60)  # its reserved turn

        if ended_by == "sweeper":
            assert sweepers.expire_overdue(later(now, 31)) == 1
        else:
            # A message before its turn, after its expiry: it expires, not "early".
            assert run(waiting, now=later(now, 30)) == "expired"
        assert reloaded(waiting).status == "expired"

        # The next job takes the turn the expired one left, not the one after it.
        behind = services.enqueue(jt.name).job
        assert run(behind, now=later(now, 31)) == "held"
        assert reloaded(behind).run_at == later(now, 60)


def test_every_sweep_expires_what_is_overdue():
    with job_type(lambda ctx: "done") as jt:
        job = services.enqueue(jt.name, expires_at=later(timezone.now(), 60)).job
        Job.objects.filter(id=job.id).update(expires_at=later(timezone.now(), -1))
        assert sweepers.sweep()["expired"] == 1
    assert reloaded(job).status == "expired"


def test_expired_jobs_are_purged_with_the_failed_ones():
    with job_type(lambda ctx: "done") as jt:
        now = timezone.now()
        job = services.enqueue(jt.name, expires_at=later(now, 1)).job
        assert run(job, now=later(now, 2)) == "expired"
        assert retention.purge_finished(now=later(now, 8 * 24 * 3600)) == {jt.name: 1}
    assert not Job.objects.filter(id=job.id).exists()


def test_its_owner_retries_an_expired_job_which_then_runs(api):
    created = api.post(
        "/api/jobs/", {"type": "system.sleep", "payload": {"seconds": 0}, "expires_in": 5}
    ).json()
    expires_at = reloaded(created["id"]).expires_at
    assert run(created["id"], now=later(expires_at, 1)) == "expired"
    assert (
        api.get("/api/jobs/", params={"status": "expired"}).json()["results"][0]["id"]
        == (created["id"])
    )

    response = api.post(f"/api/jobs/{created['id']}/retry/")

    assert response.status_code == 202, response.text
    retried = response.json()
    assert (retried["status"], retried["expires_at"]) == ("queued", None)
    assert run(created["id"]) == "succeeded"


def test_another_user_cannot_retry_an_expired_job(api, other_api):
    created = api.post(
        "/api/jobs/", {"type": "system.sleep", "payload": {"seconds": 0}, "expires_in": 5}
    ).json()
    run(created["id"], now=later(reloaded(created["id"]).expires_at, 1))

    assert other_api.post(f"/api/jobs/{created['id']}/retry/").status_code == 404
    assert reloaded(created["id"]).status == "expired"


# --- the API: expiry and overrides -------------------------------------------------------


def days_ahead(days: int) -> str:
    return (timezone.now() + timedelta(days=days)).isoformat()


def sleep_request(**fields) -> dict:
    return {"type": "system.sleep", "payload": {"seconds": 1}, **fields}


def test_a_user_creates_a_job_with_an_expiry_and_its_own_attempts_and_time_limit(api):
    before = timezone.now()
    response = api.post("/api/jobs/", sleep_request(expires_in=60, max_attempts=1, time_limit=5))

    assert response.status_code == 202, response.text
    created = response.json()
    assert (created["max_attempts"], created["time_limit"], created["snoozes"]) == (1, 5, 0)
    job = reloaded(created["id"])
    assert (job.owner.username, job.max_attempts, job.time_limit) == ("alice", 1, 5)
    assert later(before, 60) <= job.expires_at <= later(timezone.now(), 60)
    assert created["expires_at"] == job.expires_at.isoformat().replace("+00:00", "Z")

    status = api.get(f"/api/jobs/{created['id']}/status/").json()
    assert status["expires_at"] == created["expires_at"]
    detail = api.job(created["id"])
    assert (detail["expires_at"], detail["time_limit"]) == (created["expires_at"], 5)

    at = (timezone.now() + timedelta(hours=1)).replace(microsecond=0)
    response = api.post("/api/jobs/", sleep_request(expires_at=at.isoformat()))
    assert response.status_code == 202, response.text
    assert reloaded(response.json()["id"]).expires_at == at


def test_a_job_without_overrides_takes_its_types(api):
    created = api.post("/api/jobs/", sleep_request()).json()
    assert (created["max_attempts"], created["time_limit"], created["expires_at"]) == (
        3,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"expires_at": "2020-01-01T00:00:00Z"}, "expires_at", "Must be in the future."),
        ({"expires_in": 0}, "expires_in", "Must be more than 0 seconds."),
        ({"expires_in": -3}, "expires_in", "Must be more than 0 seconds."),
        ({"expires_in": "soon"}, "expires_in", "A valid integer is required."),
        (
            {"expires_in": 60, "expires_at": "2099-01-01T00:00:00Z"},
            "expires_in",
            "Give expires_at or expires_in, not both.",
        ),
        (
            {"run_at": days_ahead(2), "expires_at": days_ahead(1)},
            "expires_at",
            "Must be after run_at: the job could never start.",
        ),
        ({"max_attempts": 0}, "max_attempts", "Must be between 1 and 3, the most system.sleep"),
        ({"max_attempts": 4}, "max_attempts", "Must be between 1 and 3, the most system.sleep"),
        ({"time_limit": 0}, "time_limit", "Must be between 1 and 3700 seconds"),
        ({"time_limit": 3701}, "time_limit", "Must be between 1 and 3700 seconds"),
        ({"time_limit": "long"}, "time_limit", "A valid integer is required."),
    ],
)
def test_bad_expiry_and_overrides_are_refused_naming_the_field(api, fields, field, message):
    response = api.post("/api/jobs/", sleep_request(**fields))

    assert response.status_code == 400, response.text
    errors = response.json()["errors"]
    assert list(errors) == [field], errors
    assert errors[field][0].startswith(message), errors
    assert not Job.objects.exists()


def test_staff_are_held_to_the_types_bounds_too(staff_api):
    response = staff_api.post("/api/jobs/", sleep_request(max_attempts=10, time_limit=4000))

    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"max_attempts", "time_limit"}


def test_a_bulk_request_with_a_bad_override_names_the_job_and_writes_nothing(api):
    response = api.post(
        "/api/jobs/bulk/",
        {"jobs": [sleep_request(max_attempts=2, expires_in=30), sleep_request(time_limit=0)]},
    )

    assert response.status_code == 400, response.text
    errors = response.json()["errors"]["jobs"]
    assert list(errors) == ["1"]
    assert list(errors["1"]) == ["time_limit"]
    assert not Job.objects.exists()

    response = api.post(
        "/api/jobs/bulk/", {"jobs": [sleep_request(max_attempts=2, expires_in=30, time_limit=9)]}
    )
    assert response.status_code == 202, response.text
    job = reloaded(response.json()["jobs"][0]["id"])
    assert (job.max_attempts, job.time_limit, job.expires_at is not None) == (2, 9, True)


def test_overrides_apply_only_to_the_callers_own_new_jobs(api, other_api):
    created = api.post("/api/jobs/", sleep_request(max_attempts=1)).json()

    # There is no way to change another user's job: it is not even there for them.
    assert other_api.get(f"/api/jobs/{created['id']}/").status_code == 404
    assert other_api.post(f"/api/jobs/{created['id']}/retry/").status_code == 404
    assert reloaded(created["id"]).owner.username == "alice"


def test_code_sets_the_same_overrides_within_the_same_bounds():
    now = timezone.now()
    job = services.enqueue(
        "system.sleep", {"seconds": 0}, expires_at=later(now, 30), max_attempts=2, time_limit=10
    ).job
    assert (job.max_attempts, job.time_limit, job.expires_at) == (2, 10, later(now, 30))

    with pytest.raises(serializers.ValidationError) as refused:
        services.enqueue("system.sleep", {"seconds": 0}, max_attempts=9, time_limit=0)
    assert set(refused.value.detail) == {"max_attempts", "time_limit"}

    with pytest.raises(serializers.ValidationError) as refused:
        services.enqueue_many(
            [services.JobSpec("system.sleep", {"seconds": 0}, expires_at=later(now, -1))]
        )
    assert list(refused.value.detail["jobs"]["0"]) == ["expires_at"]


def test_a_per_job_max_attempts_ends_the_retries_sooner():
    job = services.enqueue("system.sleep", {"seconds": 0, "fail_times": 5}, max_attempts=2).job
    assert run_to_the_end(job) == ["retry", "failed"]
    assert reloaded(job).attempts == 2


def test_a_per_job_time_limit_goes_in_its_message():
    assert messages.message_for("system.sleep", "x").headers["timelimit"] == [3730, 3700]
    assert messages.message_for("system.sleep", "x", time_limit=2).headers["timelimit"] == [32, 2]


@pytest.mark.worker
def test_a_run_over_its_jobs_own_time_limit_is_stopped_by_the_worker(api, worker):
    # The type allows 3700 s; this job 2 s.
    response = api.post(
        "/api/jobs/",
        {"type": "system.sleep", "payload": {"seconds": 30}, "time_limit": 2, "max_attempts": 1},
    )
    assert response.status_code == 202, response.text

    job = api.wait_for_status(response.json()["id"], "failed", timeout=30)

    assert job["error"].startswith("SoftTimeLimitExceeded"), job["error"]
    assert job["duration_seconds"] < 10
    assert 0 < job["progress"] < 100
