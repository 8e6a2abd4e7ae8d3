"""The staff API of pauses and limits: /api/controls/. Reading takes the staff flag;
pausing takes jobs.pause_jobs and changing limits jobs.change_limits. Every change is
recorded with who made it."""

import pytest
from django.contrib.auth.models import Permission

from jobs import controls, registry, services
from jobs.models import Held, Job, OperatorAction, Scope, Status
from tests.engine import job_type, reloaded, run
from tests.support import InProcessApi

pytestmark = pytest.mark.django_db


def grant(user, *codenames: str):
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


@pytest.fixture
def operator_api(staff_user):
    """Staff allowed to pause and to change limits."""
    with InProcessApi(grant(staff_user, "pause_jobs", "change_limits")) as client:
        yield client


def entry(data: dict, scope: str, name: str) -> dict:
    entries = data["queues"] if scope == "queue" else data["types"]
    return next(e for e in entries if e["name"] == name)


def test_it_lists_every_queue_and_type_with_pause_limits_and_held_jobs(staff_api, staff_user):
    def handler(ctx):
        return "done"

    with job_type(handler, limits=registry.Limits(concurrency=1)) as jt:
        controls.pause(Scope.QUEUE, "default", by=staff_user, via="api")
        job = services.enqueue(jt.name).job
        assert run(job) == "held"

        data = staff_api.get("/api/controls/").json()

    assert [q["name"] for q in data["queues"]] == [
        "default",
        "emails",
        "reports",
        "pages",
        "images",
        "maintenance",
    ]
    assert entry(data, "queue", "default") == {
        "name": "default",
        "paused": True,
        "held": {"paused": 1},
    }
    assert entry(data, "queue", "emails")["paused"] is False
    listed = entry(data, "type", jt.name)
    assert listed["queue"] == "default"
    assert listed["paused"] is False
    assert listed["overrides_limits"] is False
    assert listed["limits"]["concurrency"] == 1
    assert listed["declared_limits"]["concurrency"] == 1
    assert listed["held"] == {"paused": 1}
    assert {t["name"] for t in data["types"]} >= {"system.noop", "email.send"}


def test_pausing_and_resuming_a_type_through_the_api_holds_then_releases_its_jobs(
    operator_api, staff_user
):
    def handler(ctx):
        return "done"

    with job_type(handler) as jt:
        response = operator_api.post(f"/api/controls/type/{jt.name}/pause/")
        assert response.status_code == 200
        assert response.json()["paused"] is True
        job = services.enqueue(jt.name).job
        assert run(job) == "held"

        response = operator_api.post(f"/api/controls/type/{jt.name}/resume/")
        assert response.status_code == 200
        assert response.json()["paused"] is False
        assert reloaded(job).held == Held.NO
        assert run(job) == "succeeded"

    recorded = OperatorAction.objects.order_by("id")
    assert [(a.action, a.target_kind, a.target, a.actor, a.via) for a in recorded] == [
        ("pause", "type", jt.name, staff_user, "api"),
        ("resume", "type", jt.name, staff_user, "api"),
    ]


def test_pausing_a_queue_is_recorded_and_shown(operator_api, staff_user):
    assert operator_api.post("/api/controls/queue/emails/pause/").status_code == 200

    assert controls.is_paused(Scope.QUEUE, "emails")
    action = OperatorAction.objects.get()
    assert (action.action, action.target_kind, action.target, action.actor_name) == (
        "pause",
        "queue",
        "emails",
        staff_user.username,
    )


def test_an_unknown_queue_or_type_is_refused_naming_it(operator_api):
    response = operator_api.post("/api/controls/queue/nope/pause/")
    assert response.status_code == 400
    assert "nope" in response.json()["errors"]["queue"][0]

    response = operator_api.post("/api/controls/type/no.such/resume/")
    assert response.status_code == 400
    assert "no.such" in response.json()["errors"]["type"][0]

    response = operator_api.request("PUT", "/api/controls/type/no.such/limits/", json={})
    assert response.status_code == 400
    assert "type" in response.json()["errors"]
    assert not OperatorAction.objects.exists()


def test_limits_are_replaced_and_reset_to_the_declared_ones(operator_api, staff_user):
    def handler(ctx):
        return "done"

    with job_type(handler, limits=registry.Limits(concurrency=2, period=10)) as jt:
        response = operator_api.request(
            "PUT", f"/api/controls/type/{jt.name}/limits/", json={"rate": 5}
        )
        assert response.status_code == 200, response.json()
        body = response.json()
        assert body["overrides_limits"] is True
        assert body["limits"] == {
            "concurrency": None,
            "owner_concurrency": None,
            "rate": 5,
            "owner_rate": None,
            "period": 10.0,  # the declared period when none is given
        }
        assert body["declared_limits"]["concurrency"] == 2

        response = operator_api.request("DELETE", f"/api/controls/type/{jt.name}/limits/")
        assert response.status_code == 200
        assert response.json()["overrides_limits"] is False
        assert response.json()["limits"]["concurrency"] == 2

    recorded = list(OperatorAction.objects.order_by("id"))
    assert [(a.action, a.via, a.actor) for a in recorded] == [
        ("set_limits", "api", staff_user),
        ("reset_limits", "api", staff_user),
    ]
    assert recorded[0].detail["after"]["rate"] == 5
    assert recorded[0].detail["before"]["concurrency"] == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"owner_rate": -3}, "owner_rate"),
        ({"rate": "many"}, "rate"),
        ({"rate": 1, "period": 0}, "period"),
        ({"concurency": 3}, "concurency"),
    ],
)
def test_bad_limits_are_refused_naming_the_field_and_nothing_changes(operator_api, body, field):
    response = operator_api.request("PUT", "/api/controls/type/system.noop/limits/", json=body)

    assert response.status_code == 400
    assert field in response.json()["errors"]
    assert controls.control_for(Scope.TYPE, "system.noop") is None
    assert not OperatorAction.objects.exists()


def test_a_body_that_is_not_an_object_is_refused(operator_api):
    response = operator_api.request("PUT", "/api/controls/type/system.noop/limits/", json=[1])

    assert response.status_code == 400
    assert "non_field_errors" in response.json()["errors"]


def test_staff_without_the_permission_are_refused(staff_api, staff_user):
    assert staff_api.get("/api/controls/").status_code == 200
    assert staff_api.post("/api/controls/queue/default/pause/").status_code == 403
    assert staff_api.post("/api/controls/queue/default/resume/").status_code == 403
    put = staff_api.request("PUT", "/api/controls/type/system.noop/limits/", json={"rate": 1})
    assert put.status_code == 403
    assert "jobs.change_limits" in put.json()["detail"]

    # Each permission opens only its own door.
    grant(staff_user, "pause_jobs")
    assert staff_api.post("/api/controls/queue/default/pause/").status_code == 200
    put = staff_api.request("PUT", "/api/controls/type/system.noop/limits/", json={"rate": 1})
    assert put.status_code == 403
    assert controls.limits_as_dict(
        controls.effective_limits(registry.get("system.noop"))
    ) == controls.limits_as_dict(registry.get("system.noop").limits)


def test_users_who_are_not_staff_are_refused_even_with_the_permissions(api, user):
    grant(user, "pause_jobs", "change_limits")

    assert api.get("/api/controls/").status_code == 403
    assert api.post("/api/controls/queue/default/pause/").status_code == 403
    assert api.request("DELETE", "/api/controls/type/system.noop/limits/").status_code == 403
    assert not controls.is_paused(Scope.QUEUE, "default")


def test_anonymous_callers_get_401(anonymous_api):
    assert anonymous_api.get("/api/controls/").status_code == 401
    assert anonymous_api.post("/api/controls/queue/default/pause/").status_code == 401


def test_a_superuser_may_do_everything(db):
    from django.contrib.auth import get_user_model

    root = get_user_model().objects.create_superuser("root", "root@example.com", "x")
    with InProcessApi(root) as client:
        assert client.post("/api/controls/type/system.noop/pause/").status_code == 200
        put = client.request(
            "PUT", "/api/controls/type/system.noop/limits/", json={"concurrency": 3}
        )
        assert put.status_code == 200
    assert controls.is_paused(Scope.TYPE, "system.noop")
    assert Job.objects.filter(status=Status.QUEUED).count() == 0
