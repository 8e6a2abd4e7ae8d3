"""Jobs that wait for other jobs (jobs/dependencies.py): held until every dependency
succeeded, released by the end of the last one, cancelled when one does not succeed.
Jobs run in the test process (tests.engine); a real worker: test_dependencies_workers.py."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext, override_settings
from django.utils import timezone
from rest_framework import serializers

from jobs import dependencies, followups, services, sweepers
from jobs.engine import JobSpec, chain
from jobs.errors import PermanentError
from jobs.models import FollowUpMark, Held, Job, JobDependency, Status
from jobs.store import job_store
from tests.engine import event_kinds, job_type, reloaded, run

pytestmark = pytest.mark.django_db(transaction=True)


def ok(ctx):
    return {"ran": str(ctx.job.id)}


def fails(ctx):
    raise PermanentError("broken")


@pytest.fixture
def step():
    with job_type(ok) as jt:
        yield jt.name


@pytest.fixture
def failing():
    with job_type(fails) as jt:
        yield jt.name


def create(type_name, owner=None, **options):
    return services.enqueue(type_name, owner=owner, **options).job


def end_in_store(job: Job, status: str) -> None:
    """End the job as a worker would, without the follow-up (a crash right after)."""
    claimed = job_store().claim(job.id, timezone.now(), timezone.now(), gate_passed=True)
    assert job_store().finish(claimed, status, timezone.now())


# --- waiting and release --------------------------------------------------------------------


def test_a_job_waits_until_all_its_dependencies_succeeded(step, user):
    first, second = create(step, user), create(step, user)
    waiting = create(step, user, depends_on=[first.id, str(second.id)])

    assert waiting.held == Held.DEPENDENCIES
    assert waiting.dispatched_at is None
    assert waiting.message == "Waiting for 2 jobs it depends on"
    assert run(waiting) == "held"

    assert run(first) == "succeeded"
    assert reloaded(waiting).held == Held.DEPENDENCIES
    assert reloaded(waiting).status == Status.QUEUED

    assert run(second) == "succeeded"
    released = reloaded(waiting)
    assert released.held == Held.NO
    assert released.dispatched_at is not None  # sent by the follow-up, not a sweep
    assert run(waiting) == "succeeded"
    assert event_kinds(waiting) == [
        "created",
        "held",
        "released",
        "dispatched",
        "started",
        "succeeded",
    ]
    held_event = reloaded(waiting).events.get(kind="held")
    assert str(first.id) in held_event.message and str(second.id) in held_event.message


def test_a_failed_dependency_cancels_the_job_naming_it(step, failing, user):
    good, bad = create(step, user), create(failing, user)
    waiting = create(step, user, depends_on=[good.id, bad.id])
    after_waiting = create(step, user, depends_on=[waiting.id])

    assert run(bad) == "failed"

    cancelled = reloaded(waiting)
    assert cancelled.status == Status.CANCELLED
    assert cancelled.message == f"Dependency {bad.id} failed"
    assert cancelled.events.get(kind="cancelled").message == f"Dependency {bad.id} failed"
    # Its own dependents follow, since its cancel is an end too.
    assert reloaded(after_waiting).status == Status.CANCELLED
    assert reloaded(after_waiting).message == f"Dependency {waiting.id} cancelled"
    assert run(waiting) == "duplicate"


def test_a_job_that_runs_anyway_waits_for_all_then_runs(step, failing, user):
    bad, slow = create(failing, user), create(step, user)
    waiting = create(step, user, depends_on=[bad.id, slow.id], on_dependency_failure="run")

    assert run(bad) == "failed"
    assert reloaded(waiting).held == Held.DEPENDENCIES

    assert run(slow) == "succeeded"
    released = reloaded(waiting)
    assert released.status == Status.QUEUED and released.held == Held.NO
    assert "did not succeed" in released.events.get(kind="released").message
    assert run(waiting) == "succeeded"


def test_cancelling_a_dependency_cancels_the_jobs_waiting_on_it(step, user):
    first = create(step, user)
    waiting = create(step, user, depends_on=[first.id])

    services.cancel(first)

    assert reloaded(waiting).status == Status.CANCELLED
    assert reloaded(waiting).message == f"Dependency {first.id} cancelled"


def test_an_expired_dependency_cancels_the_jobs_waiting_on_it(step, user):
    first = create(step, user, expires_at=timezone.now() + timedelta(seconds=1))
    waiting = create(step, user, depends_on=[first.id])

    assert sweepers.expire_overdue(timezone.now() + timedelta(seconds=2)) == 1

    assert reloaded(waiting).status == Status.CANCELLED
    assert reloaded(waiting).message == f"Dependency {first.id} expired"


def test_a_retried_dependency_does_not_revive_the_cancelled_job(step, failing, user):
    bad = create(failing, user)
    waiting = create(step, user, depends_on=[bad.id])
    run(bad)

    services.retry(bad)

    assert reloaded(waiting).status == Status.CANCELLED


# --- at creation --------------------------------------------------------------------------------


def test_dependencies_that_already_succeeded_do_not_hold_the_job(step, user):
    first = create(step, user)
    run(first)

    job = create(step, user, depends_on=[first.id])

    assert job.held == Held.NO
    assert job.dispatched_at is not None
    assert event_kinds(job) == ["created", "dispatched"]
    assert run(job) == "succeeded"


def test_a_dependency_that_already_failed_cancels_the_job_at_once(step, failing, user):
    bad = create(failing, user)
    run(bad)

    job = create(step, user, depends_on=[bad.id])

    assert job.status == Status.CANCELLED
    assert reloaded(job).status == Status.CANCELLED
    assert event_kinds(job) == ["created", "held", "cancelled"]
    # ... or runs at once when it asked to.
    anyway = create(step, user, depends_on=[bad.id], on_dependency_failure="run")
    assert anyway.held == Held.NO and anyway.dispatched_at is not None


def test_another_users_job_is_refused_as_if_it_did_not_exist(step, user, other_user):
    theirs = create(step, other_user)
    missing = uuid.uuid4()

    refused = []
    for dep in (theirs.id, missing):
        with pytest.raises(serializers.ValidationError) as exc:
            create(step, user, depends_on=[dep])
        refused.append(exc.value.detail["depends_on"][0].replace(str(dep), "<id>"))

    assert refused[0] == refused[1] == "No job of yours with id <id>."
    assert not Job.objects.filter(owner=user).exists()
    # The application's jobs depend only on the application's jobs.
    with pytest.raises(serializers.ValidationError):
        create(step, None, depends_on=[theirs.id])


@override_settings(JOBS_MAX_DEPENDENCIES=2)
def test_no_more_dependencies_than_the_setting_allows(step, user):
    deps = [create(step, user).id for _ in range(3)]

    with pytest.raises(serializers.ValidationError) as exc:
        create(step, user, depends_on=deps)

    assert exc.value.detail["depends_on"] == ["At most 2 jobs."]


def test_bad_references_and_policies_are_named(step, user):
    with pytest.raises(serializers.ValidationError) as exc:
        create(step, user, depends_on=["$0"])
    assert "bulk" in exc.value.detail["depends_on"][0]
    with pytest.raises(serializers.ValidationError) as exc:
        create(step, user, depends_on=["not-an-id"])
    assert "not a job id" in exc.value.detail["depends_on"][0]
    with pytest.raises(serializers.ValidationError) as exc:
        create(step, user, depends_on=[create(step, user).id], on_dependency_failure="maybe")
    assert "on_dependency_failure" in exc.value.detail


# --- bulk and chains ----------------------------------------------------------------------------


def test_a_bulk_spec_may_wait_for_an_earlier_one(step, user):
    outer = create(step, user)
    first, second = services.enqueue_many(
        [JobSpec(step), JobSpec(step, depends_on=["$0", str(outer.id)])], owner=user
    )

    assert first.job.held == Held.NO
    assert second.job.held == Held.DEPENDENCIES
    assert set(dependencies.ids_of(reloaded(second.job))) == {str(first.job.id), str(outer.id)}
    run(first.job)
    run(outer)
    assert run(second.job) == "succeeded"


def test_a_bulk_job_cancelled_at_once_cancels_those_waiting_on_it(step, failing, user):
    bad = create(failing, user)
    run(bad)

    first, second, third = services.enqueue_many(
        [
            JobSpec(step, depends_on=[str(bad.id)]),
            JobSpec(step, depends_on=["$0"]),
            JobSpec(step, depends_on=["$1"], on_dependency_failure="run"),
        ],
        owner=user,
    )

    assert first.job.status == Status.CANCELLED
    assert reloaded(second.job).status == Status.CANCELLED
    assert reloaded(second.job).message == f"Dependency {first.job.id} cancelled"
    assert reloaded(third.job).held == Held.NO
    assert run(third.job) == "succeeded"


def test_a_bulk_reference_must_name_an_earlier_spec(step, user):
    with pytest.raises(serializers.ValidationError) as exc:
        services.enqueue_many([JobSpec(step, depends_on=["$1"]), JobSpec(step)], owner=user)

    assert "earlier" in exc.value.detail["jobs"]["0"]["depends_on"][0]
    assert not Job.objects.exists()


def test_a_chain_runs_in_order(step, user):
    jobs = [e.job for e in chain([JobSpec(step), JobSpec(step), JobSpec(step)], owner=user)]

    assert [j.held for j in jobs] == [Held.NO, Held.DEPENDENCIES, Held.DEPENDENCIES]
    assert run(jobs[2]) == "held"
    for job in jobs:
        assert run(job) == "succeeded"
    assert [reloaded(j).started_at for j in jobs] == sorted(reloaded(j).started_at for j in jobs)


def test_a_failed_link_cancels_the_rest_of_the_chain(step, failing, user):
    jobs = [e.job for e in chain([JobSpec(step), JobSpec(failing), JobSpec(step)], owner=user)]

    run(jobs[0])
    run(jobs[1])

    assert reloaded(jobs[2]).status == Status.CANCELLED
    assert reloaded(jobs[2]).message == f"Dependency {jobs[1].id} failed"


# --- sweeps -------------------------------------------------------------------------------------


def test_dispatch_due_never_sends_a_waiting_job(step, user):
    first = create(step, user)
    waiting = create(step, user, depends_on=[first.id])
    Job.objects.filter(id=waiting.id).update(updated_at=timezone.now() - timedelta(hours=1))

    sweepers.dispatch_due(timezone.now() + timedelta(hours=1))

    assert reloaded(waiting).dispatched_at is None


def test_catch_up_releases_after_a_skipped_follow_up(step, failing, user):
    first, bad = create(step, user), create(failing, user)
    waiting = create(step, user, depends_on=[first.id])
    doomed = create(step, user, depends_on=[bad.id])
    still_waiting = create(step, user, depends_on=[create(step, user).id])

    end_in_store(first, Status.SUCCEEDED)
    end_in_store(bad, Status.FAILED)
    assert reloaded(waiting).held == Held.DEPENDENCIES

    assert followups.catch_up() == 2

    assert reloaded(waiting).held == Held.NO
    assert reloaded(waiting).dispatched_at is not None
    assert reloaded(doomed).status == Status.CANCELLED
    assert reloaded(still_waiting).held == Held.DEPENDENCIES
    assert followups.catch_up() == 0  # nothing decided twice
    assert event_kinds(waiting).count("released") == 1


def test_catch_up_from_its_mark_releases_after_a_follow_up_skipped_since(step, user):
    followups.catch_up()
    full_pass = FollowUpMark.objects.get(name="dependencies").full_pass_at
    first = create(step, user)
    waiting = create(step, user, depends_on=[first.id])
    end_in_store(first, Status.SUCCEEDED)

    assert followups.catch_up() == 1

    assert reloaded(waiting).held == Held.NO
    assert FollowUpMark.objects.get(name="dependencies").full_pass_at == full_pass
    assert followups.catch_up() == 0


def test_an_end_stamped_before_the_mark_is_caught_up_within_the_lag_or_by_a_full_pass(
    step, user, settings
):
    now = timezone.now()
    lag = timedelta(seconds=settings.JOBS_FOLLOW_UP_LAG)
    followups.catch_up(now)
    first, second = create(step, user), create(step, user)
    late = create(step, user, depends_on=[first.id])
    older = create(step, user, depends_on=[second.id])
    for job, ago in ((first, lag / 2), (second, lag * 2)):
        end_in_store(job, Status.SUCCEEDED)
        # Stamped that long before the mark, committed after the pass that set it.
        Job.objects.filter(id=job.id).update(finished_at=now - ago)
    Job.objects.filter(id__in=[late.id, older.id]).update(created_at=now - lag * 2)

    assert followups.catch_up(now + timedelta(seconds=5)) == 1
    assert reloaded(late).held == Held.NO
    assert reloaded(older).held == Held.DEPENDENCIES

    full = now + timedelta(seconds=settings.JOBS_FOLLOW_UP_FULL_PASS_EVERY)
    assert followups.catch_up(full) == 1
    assert reloaded(older).held == Held.NO


def test_jobs_still_waiting_do_not_hold_the_catch_ups_mark_back(step, user, settings):
    settings.JOBS_SWEEP_BATCH = 2
    now = timezone.now()
    followups.catch_up(now)
    blocker = create(step, user)
    still = [create(step, user, depends_on=[blocker.id]) for _ in range(3)]
    first = create(step, user)
    ready = create(step, user, depends_on=[first.id])
    end_in_store(first, Status.SUCCEEDED)

    later = now + timedelta(seconds=5)
    assert followups.catch_up(later) == 1

    assert reloaded(ready).held == Held.NO
    assert all(reloaded(job).held == Held.DEPENDENCIES for job in still)
    assert FollowUpMark.objects.get(name="dependencies").caught_up_to == later


# --- concurrency (PostgreSQL) -------------------------------------------------------------------

postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="concurrent writers need PostgreSQL"
)


def _in_thread(target) -> threading.Thread:
    def body():
        try:
            target()
        finally:
            connections.close_all()

    thread = threading.Thread(target=body)
    thread.start()
    return thread


@postgres_only
def test_a_dependency_ending_while_the_dependent_is_created_does_not_strand_it(step, user):
    first = create(step, user)
    claimed = job_store().claim(first.id, timezone.now(), timezone.now(), gate_passed=True)
    created: list[Job] = []
    written, finished = threading.Event(), threading.Event()

    def make():
        with transaction.atomic():
            created.append(create(step, user, depends_on=[first.id]))
            written.set()
            # The dependency ends, and its follow-up runs, before this create commits:
            # the follow-up cannot see the new job; the create's own check must.
            assert finished.wait(10)

    def finish():
        written.wait(10)
        if job_store().finish(claimed, Status.SUCCEEDED, timezone.now()):
            followups.jobs_ended([reloaded(first)])
        finished.set()

    for thread in [_in_thread(make), _in_thread(finish)]:
        thread.join(30)

    [job] = created
    assert job.held == Held.DEPENDENCIES  # it was written waiting
    job = reloaded(job)
    assert job.held == Held.NO, "stranded waiting for a dependency that succeeded"
    assert job.dispatched_at is not None
    assert event_kinds(job) == ["created", "held", "released", "dispatched"]


@postgres_only
def test_two_dependencies_ending_at_once_release_the_job_once(step, user):
    for _ in range(5):
        first, second = create(step, user), create(step, user)
        waiting = create(step, user, depends_on=[first.id, second.id])
        claims = [
            job_store().claim(j.id, timezone.now(), timezone.now(), gate_passed=True)
            for j in (first, second)
        ]
        barrier = threading.Barrier(2)

        def end(claimed, barrier=barrier):
            def body():
                barrier.wait()
                job_store().finish(claimed, Status.SUCCEEDED, timezone.now())
                followups.jobs_ended([reloaded(claimed)])

            return body

        for thread in [_in_thread(end(c)) for c in claims]:
            thread.join(30)

        assert reloaded(waiting).held == Held.NO
        assert event_kinds(waiting).count("released") == 1
        assert event_kinds(waiting).count("dispatched") == 1


def test_the_dependency_rows_are_unique(step, user):
    first = create(step, user)
    job = create(step, user, depends_on=[first.id, first.id, str(first.id)])

    assert JobDependency.objects.filter(job=job).count() == 1


# --- the API ------------------------------------------------------------------------------------


def test_the_api_creates_a_waiting_job_and_shows_what_it_waits_for(api, user):
    first = api.post("/api/jobs/", {"type": "system.noop"}).json()

    response = api.post(
        "/api/jobs/",
        {"type": "system.noop", "depends_on": [first["id"]], "on_dependency_failure": "run"},
    )

    assert response.status_code == 202, response.text
    created = response.json()
    assert created["depends_on"] == [first["id"]]
    assert created["on_dependency_failure"] == "run"
    assert created["message"] == "Waiting for 1 job it depends on"
    shown = api.job(created["id"])
    assert shown["depends_on"] == [first["id"]]
    assert [e["kind"] for e in shown["events"]] == ["created", "held"]
    assert api.get(f"/api/jobs/{created['id']}/status/").json()["message"] == (
        "Waiting for 1 job it depends on"
    )
    listed = api.get("/api/jobs/").json()["results"]
    assert {j["id"]: j["depends_on"] for j in listed} == {
        first["id"]: [],
        created["id"]: [first["id"]],
    }


def test_the_api_refuses_another_users_job_without_telling_it_exists(api, other_api, user):
    theirs = other_api.post("/api/jobs/", {"type": "system.noop"}).json()
    missing = str(uuid.uuid4())

    answers = [
        api.post("/api/jobs/", {"type": "system.noop", "depends_on": [dep]})
        for dep in (theirs["id"], missing)
    ]

    assert [a.status_code for a in answers] == [400, 400]
    assert answers[0].json()["errors"]["depends_on"] == [f"No job of yours with id {theirs['id']}."]
    assert answers[1].json()["errors"]["depends_on"] == [f"No job of yours with id {missing}."]
    assert not Job.objects.filter(owner=user).exists()


def test_the_bulk_api_takes_references_and_names_bad_ones(api, other_api):
    theirs = other_api.post("/api/jobs/", {"type": "system.noop"}).json()
    noop = {"type": "system.noop"}

    refused = api.post(
        "/api/jobs/bulk/",
        {"jobs": [noop, {**noop, "depends_on": ["$0"]}, {**noop, "depends_on": [theirs["id"]]}]},
    )
    assert refused.status_code == 400
    assert list(refused.json()["errors"]["jobs"]) == ["2"]
    assert "depends_on" in refused.json()["errors"]["jobs"]["2"]
    assert JobDependency.objects.count() == 0

    created = api.post("/api/jobs/bulk/", {"jobs": [noop, {**noop, "depends_on": ["$0"]}]})
    assert created.status_code == 202, created.text
    first, second = created.json()["jobs"]
    assert api.job(second["id"])["depends_on"] == [first["id"]]


def test_anonymous_callers_cannot_create_waiting_jobs(anonymous_api, step):
    response = anonymous_api.post(
        "/api/jobs/", {"type": "system.noop", "depends_on": [str(uuid.uuid4())]}
    )

    assert response.status_code == 401


def test_staff_see_what_a_users_job_waits_for(api, staff_api):
    first = api.post("/api/jobs/", {"type": "system.noop"}).json()
    waiting = api.post("/api/jobs/", {"type": "system.noop", "depends_on": [first["id"]]}).json()

    assert staff_api.job(waiting["id"])["depends_on"] == [first["id"]]
    # ... but the staff's own jobs may not wait for it: the same owner rule.
    refused = staff_api.post("/api/jobs/", {"type": "system.noop", "depends_on": [first["id"]]})
    assert refused.status_code == 400
    assert "depends_on" in refused.json()["errors"]


def test_the_schema_describes_the_dependency_fields(api):
    schema = api.get("/api/schema/", headers={"Accept": "application/vnd.oai.openapi+json"}).json()
    components = schema["components"]["schemas"]

    create = components["JobCreate"]["properties"]
    assert create["depends_on"]["type"] == "array"
    assert create["depends_on"]["maxItems"] == 100
    assert "on_dependency_failure" in create
    shown = components["Job"]["properties"]
    assert shown["depends_on"]["items"]["format"] == "uuid"
    assert "on_dependency_failure" in shown


@pytest.mark.skipif(
    "postgresql" not in connection.vendor, reason="the single-statement finish is PostgreSQL's"
)
def test_an_end_tells_whether_jobs_wait_on_it_so_a_lone_job_costs_no_lookup(step, user):
    lone = services.enqueue(step, owner=user).job
    awaited = services.enqueue(step, owner=user).job
    waiting = services.enqueue(step, owner=user, depends_on=[awaited.id]).job
    store, now = job_store(), timezone.now()
    claimed = [store.claim(job.id, now, now) for job in (lone, awaited)]

    for job in claimed:
        assert store.finish(job, Status.SUCCEEDED, timezone.now())
    assert [job.has_dependents for job in claimed] == [False, True]

    with CaptureQueriesContext(connection) as lone_end:
        dependencies.after_end([claimed[0]])
    assert len(lone_end) == 0
    dependencies.after_end([claimed[1]])
    assert reloaded(waiting).held == Held.NO
