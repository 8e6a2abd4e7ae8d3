"""Global limits and pauses, decided at the claim (jobs/limits.py), in the test process:
a job over its type's concurrency cap or rate waits queued and says why, and starts when
the limit allows; a paused queue or type starts nothing until resumed. With real workers:
test_limits_workers.py."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from jobs import controls, limits, services, sweepers
from jobs.audit import Via
from jobs.models import Held, Job, LimitState, OperatorAction, Scope
from jobs.registry import Limits
from jobs.store import job_store
from tests.engine import event_kinds, job_type, reloaded, run

pytestmark = pytest.mark.django_db


def a_moment():
    """Now, to the millisecond rate limits count in."""
    now = timezone.now()
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def test_a_job_over_its_types_concurrency_cap_waits_and_starts_when_a_slot_frees():
    outcomes = {}

    def handler(ctx):
        if "second" not in outcomes:
            outcomes["second"] = run(second)  # a worker handed the next one meanwhile
            assert reloaded(second).status == "queued"
        return "done"

    with job_type(handler, limits=Limits(concurrency=1)) as jt:
        first = services.enqueue(jt.name).job
        second = services.enqueue(jt.name).job
        assert run(first) == "succeeded"
        assert outcomes["second"] == "held"

        waiting = reloaded(second)
        # The first one's end released it: no longer held, sent again to start.
        assert (waiting.status, waiting.held) == ("queued", "")
        assert waiting.dispatched_at is not None
        assert event_kinds(second)[-3:] == ["held", "released", "dispatched"]
        held = waiting.events.get(kind="held")
        assert held.message == f"Waiting for a slot: 1 of {jt.name} running at most"
        assert run(second) == "succeeded"


def test_a_concurrency_cap_per_owner_lets_other_owners_through(user, other_user):
    outcomes = {}

    def handler(ctx):
        if not outcomes:
            outcomes["same owner"] = run(same_owner)
            outcomes["other owner"] = run(other_owner)
        return "done"

    with job_type(handler, limits=Limits(owner_concurrency=1)) as jt:
        first = services.enqueue(jt.name, owner=user).job
        same_owner = services.enqueue(jt.name, owner=user).job
        other_owner = services.enqueue(jt.name, owner=other_user).job
        assert run(first) == "succeeded"

    assert outcomes == {"same owner": "held", "other owner": "succeeded"}
    assert "per owner" in reloaded(same_owner).events.get(kind="held").message


def test_a_held_job_is_not_sent_again_by_the_dispatch_sweeper_but_released_when_a_slot_frees():
    def handler(ctx):
        return "done"

    with job_type(handler, limits=Limits(concurrency=1)) as jt:
        blocker = services.enqueue(jt.name).job
        waiting = services.enqueue(jt.name).job
        Job.objects.filter(id=blocker.id).update(status="running", started_at=timezone.now())
        assert run(waiting) == "held"
        later = timezone.now() + timedelta(minutes=10)
        assert sweepers.dispatch_due(now=later) == 0
        assert limits.release_held() == 0  # still no slot

        Job.objects.filter(id=blocker.id).update(status="succeeded")
        assert limits.release_held() == 1  # the worker ending it died before releasing
        assert reloaded(waiting).held == ""
        assert run(waiting) == "succeeded"


def test_a_rate_limit_starts_at_most_n_per_period_and_gives_each_waiting_job_its_own_turn():
    def handler(ctx):
        return "done"

    now = a_moment()
    with job_type(handler, limits=Limits(rate=2, period=60)) as jt:
        jobs = [services.enqueue(jt.name).job for _ in range(5)]
        assert [run(j, now=now) for j in jobs] == ["succeeded"] * 2 + ["held"] * 3

        turns = [reloaded(j).run_at for j in jobs[2:]]
        # Each waiting job reserved the earliest start that keeps every 60 s window at
        # two starts: the third and fourth one period after the first two, the fifth
        # one period after those.
        assert turns == [now + timedelta(seconds=60)] * 2 + [now + timedelta(seconds=120)]
        assert all(reloaded(j).held == Held.RATE for j in jobs[2:])
        assert "Rate limited to 2 per 60s" in reloaded(jobs[2]).message

        assert run(jobs[2], now=turns[0] - timedelta(seconds=5)) == "early"
        assert [run(j, now=t) for j, t in zip(jobs[2:], turns, strict=True)] == ["succeeded"] * 3


def test_a_new_job_waits_behind_the_jobs_that_reserved_a_turn_before_it():
    def handler(ctx):
        return "done"

    now = a_moment()
    with job_type(handler, limits=Limits(rate=1, period=10)) as jt:
        first, second, third = (services.enqueue(jt.name).job for _ in range(3))
        assert run(first, now=now) == "succeeded"
        assert run(second, now=now) == "held"
        # The window after the first start has room at +10 s, but that is second's turn.
        assert run(third, now=now + timedelta(seconds=10)) == "held"
        assert reloaded(third).run_at == now + timedelta(seconds=20)


def test_a_rate_limit_per_owner_counts_each_owners_starts(user, other_user):
    def handler(ctx):
        return "done"

    now = a_moment()
    with job_type(handler, limits=Limits(owner_rate=1, period=30)) as jt:
        mine = [services.enqueue(jt.name, owner=user).job for _ in range(2)]
        theirs = services.enqueue(jt.name, owner=other_user).job
        assert [run(j, now=now) for j in [*mine, theirs]] == ["succeeded", "held", "succeeded"]
        assert reloaded(mine[1]).run_at == now + timedelta(seconds=30)


EVERY_LIMIT = Limits(concurrency=10, owner_concurrency=5, rate=100, owner_rate=50, period=60)


@pytest.mark.django_db(transaction=True)
def test_an_admitted_gated_claim_is_four_statements_and_a_transaction(user):
    if connection.vendor != "postgresql":
        pytest.skip("counts the statements of the PostgreSQL store")
    now = a_moment()
    with job_type(lambda ctx: "done", limits=EVERY_LIMIT) as jt:
        first, second = (services.enqueue(jt.name, owner=user).job for _ in range(2))
        assert run(first, now=now) == "succeeded"  # the first start writes the state rows

        with CaptureQueriesContext(connection) as queries:
            admitted = limits.admit(str(second.id), now, now, at_a_given_time=True)

        assert isinstance(admitted, Job) and admitted.status == "running"
        # The job; then, in one transaction, the type's lock, its controls, running jobs
        # and rate logs read under it, and the claim that writes the start to the logs.
        statements = [str(q["sql"]) for q in queries.captured_queries]
        assert len(statements) == 6, statements
        assert (statements[1], statements[-1]) == ("BEGIN", "COMMIT")
        logs = LimitState.objects.filter(key__startswith=f"type:{jt.name}")
        assert [len(log.starts) for log in logs.order_by("key")] == [2, 2]


@pytest.mark.django_db(transaction=True)
def test_a_type_found_gated_goes_to_the_gate_at_once_until_it_is_found_ungated_again():
    if connection.vendor != "postgresql":
        pytest.skip("counts the statements of the PostgreSQL store")
    with job_type(lambda ctx: "done") as jt:
        jobs = [services.enqueue(jt.name).job for _ in range(4)]
        controls.set_limits(jt.name, Limits(concurrency=5), by=None, via=Via.COMMAND)
        assert run(jobs[0]) == "succeeded"  # the plain claim is refused: through the gate

        with CaptureQueriesContext(connection) as gated:
            assert run(jobs[1]) == "succeeded"
        controls.set_limits(jt.name, None, by=None, via=Via.COMMAND)
        assert run(jobs[2]) == "succeeded"  # through the gate, which lets it through
        with CaptureQueriesContext(connection) as plain:
            assert run(jobs[3]) == "succeeded"

    # No plain claim first: the job, the gate's transaction, the end, a look for jobs
    # waiting for a slot. Then the plain claim and the end alone.
    assert len(gated.captured_queries) == 8, [q["sql"] for q in gated.captured_queries]
    assert len(plain.captured_queries) == 2, [q["sql"] for q in plain.captured_queries]


def test_an_admitted_claim_that_finds_its_job_gone_writes_no_start(user):
    now = a_moment()
    with job_type(lambda ctx: "done", limits=EVERY_LIMIT) as jt:
        job = services.enqueue(jt.name, owner=user).job
        job_store().cancel(job, now)
        key = f"type:{jt.name}"

        claimed = job_store().claim_admitted(job.id, now, now, [(key, [1, 2], [3])])

        assert claimed is None
        assert not LimitState.objects.filter(key=key).exists()
        assert reloaded(job).status == "cancelled"


def test_a_paused_type_starts_none_of_its_jobs_until_resumed(staff_user):
    def handler(ctx):
        return "done"

    with job_type(handler) as jt, job_type(handler) as other:
        controls.pause(Scope.TYPE, jt.name, by=staff_user, via=Via.API)
        job = services.enqueue(jt.name).job
        unaffected = services.enqueue(other.name).job

        assert run(job) == "held"
        assert run(unaffected) == "succeeded"
        held = reloaded(job)
        assert (held.status, held.held, held.message) == (
            "queued",
            "paused",
            f"Waiting: type {jt.name} is paused",
        )
        assert run(job) == "held"  # a stray message changes nothing

        assert controls.resume(Scope.TYPE, jt.name, by=staff_user, via=Via.API) == 1
        assert reloaded(job).held == ""
        assert run(job) == "succeeded"

    actions = list(OperatorAction.objects.order_by("id").values_list("action", "actor", "via"))
    assert actions == [("pause", staff_user.id, "api"), ("resume", staff_user.id, "api")]


def test_a_paused_queue_holds_every_type_in_it_and_only_that_queue(staff_user):
    def handler(ctx):
        return "done"

    with job_type(handler, queue="reports") as jt, job_type(handler, queue="emails") as other:
        controls.pause(Scope.QUEUE, "reports", by=staff_user, via=Via.DASHBOARD)
        job = services.enqueue(jt.name).job
        assert run(job) == "held"
        assert run(services.enqueue(other.name).job) == "succeeded"
        assert reloaded(job).message == "Waiting: queue reports is paused"

        controls.resume(Scope.QUEUE, "reports", by=staff_user, via=Via.DASHBOARD)
        assert run(job) == "succeeded"


def test_limits_staff_set_at_run_time_replace_the_declared_ones_and_can_be_reset(staff_user):
    def handler(ctx):
        if not outcomes:
            outcomes.append(run(second))
        return "done"

    outcomes: list[str] = []
    with job_type(handler) as jt:  # declares no limits
        controls.set_limits(jt.name, Limits(concurrency=1), by=staff_user, via=Via.ADMIN)
        first, second = (services.enqueue(jt.name).job for _ in range(2))
        assert run(first) == "succeeded"
        assert outcomes == ["held"]
        assert run(second) == "succeeded"

        controls.set_limits(jt.name, None, by=staff_user, via=Via.ADMIN)
        assert limits.rules_for(jt, jt.queue).gated is False

    changes = OperatorAction.objects.filter(target=jt.name).order_by("id")
    assert [(a.action, a.detail["after"]["concurrency"]) for a in changes] == [
        ("set_limits", 1),
        ("reset_limits", None),
    ]


def test_raising_a_rate_limit_gives_waiting_jobs_a_new_turn_at_once(staff_user):
    def handler(ctx):
        return "done"

    now = a_moment()
    with job_type(handler, limits=Limits(rate=1, period=3600)) as jt:
        first, second = (services.enqueue(jt.name).job for _ in range(2))
        assert [run(first, now=now), run(second, now=now)] == ["succeeded", "held"]
        assert reloaded(second).run_at == now + timedelta(hours=1)

        controls.set_limits(jt.name, Limits(rate=10, period=3600), by=staff_user, via=Via.API)

        released = reloaded(second)
        assert (released.held, released.run_at) == ("", None)
        assert run(second) == "succeeded"


def test_bad_limits_are_refused_naming_the_field(staff_user):
    from rest_framework.exceptions import ValidationError

    with job_type(lambda ctx: None) as jt:
        with pytest.raises(ValidationError) as refused:
            controls.set_limits(jt.name, Limits(concurrency=0, period=0), by=staff_user, via="api")
    assert set(refused.value.detail) == {"concurrency", "period"}
    with pytest.raises(ValidationError) as unknown:
        controls.pause(Scope.QUEUE, "nope", by=staff_user, via="api")
    assert "queue" in unknown.value.detail
