"""Unique jobs: one queued or running job per owner and value of the type's declared
payload fields; a second create returns it (200 through the API). With debounce, a create
while the job is still queued replaces its payload, and the job starts `debounce` seconds
after the first create of the burst; a create while it runs queues a new job."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.db import connection, connections, transaction
from django.utils import timezone
from rest_framework import serializers

from jobs import registry, services
from jobs.errors import PermanentError, UniqueKeyHeld
from jobs.models import EventKind, Job, Status
from jobs.registry import Exposure, Unique
from jobs.store import job_store
from tests.engine import event_kinds, job_type, reloaded, run, run_when_due
from tests.support import run_in_threads, wait_for


class ExportPayload(serializers.Serializer):
    page_id = serializers.IntegerField()
    text = serializers.CharField(required=False, allow_blank=True, default="")


SEEN: list[dict] = []


def remember(ctx) -> dict:
    SEEN.append(dict(ctx.payload))
    return {"text": ctx.payload["text"]}


@pytest.fixture(autouse=True)
def forget_seen() -> Iterator[None]:
    SEEN.clear()
    yield
    SEEN.clear()


@pytest.fixture
def unique_type() -> Iterator[registry.JobType]:
    with job_type(
        remember,
        serializer=ExportPayload,
        unique=Unique(fields=("page_id",)),
        exposure=Exposure.USERS,
    ) as jt:
        yield jt


@pytest.fixture
def debounced_type() -> Iterator[registry.JobType]:
    with job_type(
        remember,
        serializer=ExportPayload,
        unique=Unique(fields=("page_id",), debounce=30),
        exposure=Exposure.USERS,
    ) as jt:
        yield jt


def create(jt, owner, page_id: int = 1, text: str = "") -> services.Enqueued:
    return services.enqueue(jt.name, {"page_id": page_id, "text": text}, owner=owner)


def claim(job: Job) -> Job:
    """Start the job as a worker's claim would (the engine's own claim)."""
    due = reloaded(job).run_at or job.created_at
    claimed = job_store().claim(job.id, due, due)
    assert claimed is not None
    return claimed


# --- without debounce ---------------------------------------------------------------------


def test_a_second_create_returns_the_queued_job_unchanged(unique_type, user):
    first = create(unique_type, user, text="first")
    second = create(unique_type, user, text="second")

    assert first.created and not second.created
    assert second.job.id == first.job.id
    assert reloaded(first.job).payload == {"page_id": 1, "text": "first"}
    assert Job.objects.count() == 1
    assert reloaded(first.job).run_at is None  # without debounce it runs at once


def test_a_running_job_answers_for_its_key(unique_type, user):
    first = create(unique_type, user).job
    claim(first)

    again = create(unique_type, user)

    assert not again.created and again.job.id == first.id
    assert again.job.status == Status.RUNNING


def test_once_the_job_ended_a_create_makes_a_new_one(unique_type, user):
    first = create(unique_type, user).job
    assert run(first) == "succeeded"

    again = create(unique_type, user)

    assert again.created and again.job.id != first.id


def test_only_the_declared_fields_make_the_key(unique_type, user):
    first = create(unique_type, user, page_id=1, text="a").job

    assert create(unique_type, user, page_id=1, text="b").job.id == first.id
    assert create(unique_type, user, page_id=2, text="a").created


def test_the_key_is_a_fixed_length_hash_of_the_owner_and_the_fields(unique_type, user):
    job = create(unique_type, user, text="x" * 10_000).job

    assert len(job.unique_key) == 64
    assert job.unique_key == unique_type.unique.key_for(user.pk, {"page_id": 1})
    assert job.unique_key != unique_type.unique.key_for(None, {"page_id": 1})
    assert job.unique_key != unique_type.unique.key_for(user.pk, {"page_id": "1"})


def test_keys_belong_to_their_owner(unique_type, user, other_user):
    mine = create(unique_type, user).job
    theirs = create(unique_type, other_user)
    system = create(unique_type, None)

    assert theirs.created and system.created
    assert len({mine.id, theirs.job.id, system.job.id}) == 3
    assert not create(unique_type, None).created


def test_a_run_being_cancelled_does_not_answer_for_its_key(unique_type, user):
    first = create(unique_type, user).job
    claim(first)
    services.cancel(first)

    again = create(unique_type, user)

    assert again.created and again.job.id != first.id
    assert reloaded(first).unique_key is None


def test_a_types_keys_are_separate_from_another_types(unique_type, debounced_type, user):
    assert create(unique_type, user).job.id != create(debounced_type, user).job.id


def test_a_unique_key_and_an_idempotency_key_together(unique_type, user):
    first = services.enqueue(unique_type.name, {"page_id": 1}, owner=user, idempotency_key="k1")
    repeat = services.enqueue(unique_type.name, {"page_id": 1}, owner=user, idempotency_key="k1")
    same_page = services.enqueue(unique_type.name, {"page_id": 1}, owner=user, idempotency_key="k2")

    assert first.created and not repeat.created and not same_page.created
    assert repeat.job.id == same_page.job.id == first.job.id


# --- debounce ------------------------------------------------------------------------


def test_a_debounced_job_starts_debounce_seconds_after_the_first_create(debounced_type, user):
    job = create(debounced_type, user).job

    assert abs(job.run_at - (job.created_at + timedelta(seconds=30))) < timedelta(seconds=1)
    assert run(job, now=job.run_at - timedelta(seconds=5)) == "early"
    assert run_when_due(job) == "succeeded"


def test_a_later_run_at_is_kept(debounced_type, user):
    later = timezone.now() + timedelta(hours=1)

    job = services.enqueue(debounced_type.name, {"page_id": 1}, owner=user, run_at=later).job

    assert job.run_at == later


def test_a_burst_of_creates_is_one_job_run_once_with_the_last_payload(debounced_type, user):
    first = create(debounced_type, user, text="v1").job
    outcomes = [create(debounced_type, user, text=f"v{i}") for i in range(2, 6)]

    assert not any(o.created for o in outcomes)
    assert {o.job.id for o in outcomes} == {first.id}
    job = reloaded(first)
    assert job.payload == {"page_id": 1, "text": "v5"}
    assert job.run_at == first.run_at  # later creates do not push the start back
    assert event_kinds(job).count(EventKind.DEBOUNCED) == 4
    assert Job.objects.count() == 1

    assert run_when_due(job) == "succeeded"
    assert SEEN == [{"page_id": 1, "text": "v5"}]
    assert reloaded(job).result == {"text": "v5"}


def save_again_while_running(ctx) -> dict:
    SEEN.append(dict(ctx.payload))
    if ctx.payload["text"] == "first":
        created = services.enqueue(ctx.job.type, {"page_id": 1, "text": "during"}, owner=None)
        SEEN.append({"created": created.created, "id": str(created.job.id)})
    return {}


def test_a_create_while_a_debounced_job_runs_queues_a_new_one(db):
    with job_type(
        save_again_while_running,
        serializer=ExportPayload,
        unique=Unique(fields=("page_id",), debounce=5),
    ) as jt:
        first = services.enqueue(jt.name, {"page_id": 1, "text": "first"}).job

        assert run_when_due(first) == "succeeded"

        assert SEEN[1]["created"] is True
        new = reloaded(SEEN[1]["id"])
        assert (new.status, new.payload["text"]) == (Status.QUEUED, "during")
        assert new.unique_key == first.unique_key and reloaded(first).unique_key is None
        # Later creates go to the queued job, not to the one that ran.
        after = services.enqueue(jt.name, {"page_id": 1, "text": "after"})
        assert after.job.id == new.id and reloaded(new).payload["text"] == "after"
        assert run_when_due(new) == "succeeded"
        assert SEEN[-1] == {"page_id": 1, "text": "after"}


def test_a_job_waiting_for_a_retry_takes_the_newer_payload(debounced_type, user):
    def flaky(ctx):
        SEEN.append(dict(ctx.payload))
        if ctx.attempt == 1:
            raise RuntimeError("try again")
        return {}

    with job_type(
        flaky, serializer=ExportPayload, unique=Unique(fields=("page_id",), debounce=5)
    ) as jt:
        job = services.enqueue(jt.name, {"page_id": 1, "text": "old"}, owner=user).job
        assert run_when_due(job) == "retry"

        again = services.enqueue(jt.name, {"page_id": 1, "text": "new"}, owner=user)

        assert not again.created and again.job.id == job.id
        assert run_when_due(job) == "succeeded"
        assert [p["text"] for p in SEEN] == ["old", "new"]


# --- bulk ----------------------------------------------------------------------------


def test_bulk_applies_the_rule_per_spec_in_order(unique_type, debounced_type, user):
    existing = create(unique_type, user, page_id=9).job
    specs = [
        services.JobSpec(debounced_type.name, {"page_id": 1, "text": "a"}),
        services.JobSpec(debounced_type.name, {"page_id": 2, "text": "b"}),
        services.JobSpec(debounced_type.name, {"page_id": 1, "text": "c"}),
        services.JobSpec(unique_type.name, {"page_id": 9}),
        services.JobSpec(unique_type.name, {"page_id": 3}),
        services.JobSpec("system.noop"),
    ]

    results = services.enqueue_many(specs, owner=user)

    assert [r.created for r in results] == [True, True, False, False, True, True]
    assert results[2].job.id == results[0].job.id
    assert results[3].job.id == existing.id
    assert reloaded(results[0].job).payload == {"page_id": 1, "text": "c"}
    assert Job.objects.count() == 5


# --- manual retry ----------------------------------------------------------------------


def test_a_failed_unique_job_is_not_retried_while_another_holds_its_key(user):
    def failing(ctx):
        raise PermanentError("no")

    with job_type(failing, serializer=ExportPayload, unique=Unique(fields=("page_id",))) as jt:
        failed = services.enqueue(jt.name, {"page_id": 1}, owner=user).job
        assert run(failed) == "failed"
        holder = services.enqueue(jt.name, {"page_id": 1}, owner=user).job

        with pytest.raises(UniqueKeyHeld, match=str(holder.id)):
            services.retry(reloaded(failed))
        assert services.retry_many(Job.objects.filter(id=failed.id)) == 0
        assert reloaded(failed).status == Status.FAILED

        services.cancel(holder)
        assert services.retry(reloaded(failed)).status == Status.QUEUED


def test_a_bulk_retry_makes_one_of_two_failed_jobs_with_a_key_active(user):
    def failing(ctx):
        raise PermanentError("no")

    with job_type(failing, serializer=ExportPayload, unique=Unique(fields=("page_id",))) as jt:
        for _ in range(2):
            assert run(services.enqueue(jt.name, {"page_id": 1}, owner=user).job) == "failed"

        assert services.retry_many(Job.objects.filter(type=jt.name)) == 1
        assert Job.objects.filter(type=jt.name, status=Status.QUEUED).count() == 1


# --- declaring a unique type --------------------------------------------------------------


@pytest.mark.parametrize(
    ("unique", "error"),
    [
        (Unique(fields=("pgae_id",)), "no payload field pgae_id"),
        (Unique(fields=()), "at least one payload field"),
        (Unique(fields=("page_id",), debounce=0), "debounce must be more than 0"),
    ],
)
def test_a_wrong_declaration_is_refused_at_registration(unique, error):
    with pytest.raises(ValueError, match=error):
        registry.register(
            registry.JobType(
                name="tests.bad_unique", handler=remember, serializer=ExportPayload, unique=unique
            )
        )
    assert "tests.bad_unique" not in registry.names()


# --- the API ---------------------------------------------------------------------------


def test_the_api_answers_202_for_a_new_job_and_200_with_the_existing_one(api, unique_type):
    first = api.post("/api/jobs/", {"type": unique_type.name, "payload": {"page_id": 1}})
    again = api.post("/api/jobs/", {"type": unique_type.name, "payload": {"page_id": 1}})

    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["status"] == "queued"


def test_the_api_shows_the_debounced_payload(api, debounced_type):
    api.post("/api/jobs/", {"type": debounced_type.name, "payload": {"page_id": 1, "text": "a"}})
    again = api.post(
        "/api/jobs/", {"type": debounced_type.name, "payload": {"page_id": 1, "text": "b"}}
    )

    assert again.status_code == 200
    assert again.json()["payload"] == {"page_id": 1, "text": "b"}
    events = api.get(f"/api/jobs/{again.json()['id']}/").json()["events"]
    assert [e["kind"] for e in events].count("debounced") == 1


def test_at_the_active_job_cap_the_existing_unique_job_is_still_answered(
    api, settings, unique_type
):
    settings.JOBS_USER_MAX_ACTIVE = 1
    first = api.post("/api/jobs/", {"type": unique_type.name, "payload": {"page_id": 1}})

    again = api.post("/api/jobs/", {"type": unique_type.name, "payload": {"page_id": 1}})
    other_page = api.post("/api/jobs/", {"type": unique_type.name, "payload": {"page_id": 2}})

    assert (first.status_code, again.status_code, other_page.status_code) == (202, 200, 429)
    assert again.json()["id"] == first.json()["id"]


def test_bulk_through_the_api_marks_which_jobs_are_new(api, unique_type):
    body = {"jobs": [{"type": unique_type.name, "payload": {"page_id": p}} for p in (1, 2, 1)]}

    response = api.post("/api/jobs/bulk/", body)

    assert response.status_code == 202
    data = response.json()
    assert data["created"] == 2
    assert [j["created"] for j in data["jobs"]] == [True, True, False]
    assert data["jobs"][2]["id"] == data["jobs"][0]["id"]


def test_another_user_with_a_colliding_payload_neither_sees_nor_changes_the_job(
    api, other_api, debounced_type
):
    mine = api.post(
        "/api/jobs/", {"type": debounced_type.name, "payload": {"page_id": 1, "text": "mine"}}
    ).json()
    collide = {"type": debounced_type.name, "payload": {"page_id": 1, "text": "pwned"}}

    theirs = other_api.post("/api/jobs/", collide)
    bulk = other_api.post("/api/jobs/bulk/", {"jobs": [collide]})

    assert theirs.status_code == 202 and theirs.json()["id"] != mine["id"]
    # Their bulk create finds their own job, never mine.
    assert bulk.json()["jobs"][0]["id"] == theirs.json()["id"]
    assert mine["id"] not in theirs.text + bulk.text
    assert reloaded(mine["id"]).payload == {"page_id": 1, "text": "mine"}
    assert event_kinds(mine["id"]).count(EventKind.DEBOUNCED) == 0
    assert other_api.get(f"/api/jobs/{mine['id']}/").status_code == 404


def test_retrying_through_the_api_while_another_holds_the_key_is_a_409(api, user):
    def failing(ctx):
        raise PermanentError("no")

    with job_type(
        failing,
        serializer=ExportPayload,
        unique=Unique(fields=("page_id",)),
        exposure=Exposure.USERS,
    ) as jt:
        failed = api.post("/api/jobs/", {"type": jt.name, "payload": {"page_id": 1}}).json()
        assert run(failed["id"]) == "failed"
        holder = api.post("/api/jobs/", {"type": jt.name, "payload": {"page_id": 1}}).json()

        response = api.post(f"/api/jobs/{failed['id']}/retry/")

    assert response.status_code == 409
    assert response.json()["code"] == "not_retryable"
    assert holder["id"] in response.json()["detail"]


# --- races ---------------------------------------------------------------------------


def test_concurrent_creates_through_the_api_make_one_job(live_api, unique_type):
    responses = run_in_threads(
        12,
        lambda i: live_api.post(
            "/api/jobs/", {"type": unique_type.name, "payload": {"page_id": 7}}
        ),
    )

    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 11 + [202], [r.text for r in responses if r.status_code >= 300]
    assert len({r.json()["id"] for r in responses}) == 1
    assert Job.objects.filter(type=unique_type.name).count() == 1


needs_postgres = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="two writers at once need PostgreSQL"
)


def in_thread(target) -> tuple[threading.Thread, dict]:
    """Run `target` in a thread of its own, on its own database connection."""
    out: dict = {}

    def body():
        try:
            out["value"] = target()
        except BaseException as exc:  # handed to the test
            out["error"] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=body)
    thread.start()
    return thread, out


def waiting_on_a_lock() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


@needs_postgres
@pytest.mark.parametrize("debounce", [None, 5])
def test_a_create_that_loses_the_race_for_the_key_returns_the_winner(transactional_db, debounce):
    """The loser's read finds nothing (the winner has not committed); its insert waits on
    the unique index, fails once the winner commits, and it finds the winner's job."""
    with job_type(
        remember, serializer=ExportPayload, unique=Unique(fields=("page_id",), debounce=debounce)
    ) as jt:
        winner_may_commit = threading.Event()

        def winner():
            with transaction.atomic():
                created = services.enqueue(jt.name, {"page_id": 1, "text": "winner"})
                winner_may_commit.wait(timeout=30)
            return created

        def loser():
            return services.enqueue(jt.name, {"page_id": 1, "text": "loser"})

        won_thread, won = in_thread(winner)
        wait_for(_inserted_uncommitted, 10, what="the winner's insert, not committed")
        lost_thread, lost = in_thread(loser)
        wait_for(waiting_on_a_lock, 10, what="the loser's insert waiting on the key")
        winner_may_commit.set()
        won_thread.join(30)
        lost_thread.join(30)

    assert "error" not in won and "error" not in lost, (won, lost)
    assert won["value"].created and not lost["value"].created
    assert lost["value"].job.id == won["value"].job.id
    assert Job.objects.filter(type=jt.name).count() == 1
    expected = "loser" if debounce else "winner"
    assert reloaded(won["value"].job).payload["text"] == expected


def _inserted_uncommitted() -> bool:
    """Whether another session holds an open transaction that wrote a row."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND state = 'idle in transaction' AND backend_xid IS NOT NULL"
        )
        return cursor.fetchone()[0] > 0


@needs_postgres
def test_many_concurrent_creates_on_their_own_connections_make_one_job(transactional_db):
    with job_type(
        remember, serializer=ExportPayload, unique=Unique(fields=("page_id",), debounce=5)
    ) as jt:

        def create_one(i: int) -> services.Enqueued:
            try:
                return services.enqueue(jt.name, {"page_id": 1, "text": str(i)})
            finally:
                connections.close_all()

        outcomes = run_in_threads(8, create_one)

    assert sum(o.created for o in outcomes) == 1
    assert len({o.job.id for o in outcomes}) == 1
    job = Job.objects.get(type=jt.name)
    assert event_kinds(job).count(EventKind.DEBOUNCED) == 7
