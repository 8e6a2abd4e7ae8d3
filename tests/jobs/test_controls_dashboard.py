"""Pauses and limits where operators look: the dashboard's Controls section (with its
switches and limits form), its audit section, /metrics and /health/."""

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from jobs import controls, registry, services
from jobs.models import Held, Job, OperatorAction, Scope, WorkerHeartbeat
from tests.engine import job_type, run

pytestmark = pytest.mark.django_db

TOKEN = "scrape-me"


def signed_in(user, *codenames: str) -> Client:
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def entry(client: Client, scope: str, name: str) -> dict:
    controls_data = client.get("/dashboard/data/").json()["controls"]
    entries = controls_data["queues"] if scope == "queue" else controls_data["types"]
    return next(e for e in entries if e["name"] == name)


def test_pausing_and_resuming_a_queue_from_the_dashboard_is_shown_and_recorded(staff_user):
    client = signed_in(staff_user, "pause_jobs")

    response = client.post("/dashboard/controls/queue/emails/pause/")
    assert response.status_code == 302
    assert entry(client, "queue", "emails")["paused"] is True
    page = client.get("/dashboard/").content.decode()
    assert 'data-control="queue:emails"' in page
    assert 'aria-label="Resume queue emails"' in page

    response = client.post(
        "/dashboard/controls/queue/emails/resume/", headers={"X-Requested-With": "fetch"}
    )
    assert response.json() == {"detail": "Queue emails resumed."}
    assert entry(client, "queue", "emails")["paused"] is False
    assert [(a.action, a.via, a.actor) for a in OperatorAction.objects.order_by("id")] == [
        ("pause", "dashboard", staff_user),
        ("resume", "dashboard", staff_user),
    ]
    audit_rows = client.get("/dashboard/data/").json()["audit"]
    assert [(r["action"], r["target"], r["actor"]) for r in audit_rows] == [
        ("resume", "emails", "carol"),
        ("pause", "emails", "carol"),
    ]


def test_the_limits_form_sets_and_resets_a_types_limits(staff_user):
    client = signed_in(staff_user, "change_limits")

    client.post(
        "/dashboard/controls/type/system.noop/limits/",
        {
            "concurrency": "3",
            "owner_concurrency": "",
            "rate": "10",
            "owner_rate": "",
            "period": "30",
        },
    )
    shown = entry(client, "type", "system.noop")
    assert shown["overrides_limits"] is True
    assert shown["limits"] == {
        "concurrency": 3,
        "owner_concurrency": None,
        "rate": 10,
        "owner_rate": None,
        "period": 30.0,
    }

    client.post("/dashboard/controls/type/system.noop/limits/", {"reset": "1"})
    assert entry(client, "type", "system.noop")["overrides_limits"] is False
    assert [a.action for a in OperatorAction.objects.order_by("id")] == [
        "set_limits",
        "reset_limits",
    ]
    assert {a.via for a in OperatorAction.objects.all()} == {"dashboard"}


def test_bad_limits_from_the_dashboard_are_refused_naming_the_field(staff_user):
    client = signed_in(staff_user, "change_limits", "pause_jobs")

    for form, field in (({"concurrency": "0"}, "concurrency"), ({"rate": "lots"}, "rate")):
        response = client.post(
            "/dashboard/controls/type/system.noop/limits/",
            form,
            headers={"X-Requested-With": "fetch"},
        )
        assert response.status_code == 400
        assert field in response.json()["errors"]
    response = client.post("/dashboard/controls/queue/nope/pause/", follow=True)
    assert "Unknown queue" in response.content.decode()
    assert not OperatorAction.objects.exists()
    assert controls.control_for(Scope.TYPE, "system.noop") is None


def test_dashboard_controls_need_their_permissions(staff_user, user):
    onlooker = signed_in(staff_user)
    assert onlooker.get("/dashboard/data/").json()["controls"]["queues"]
    assert onlooker.post("/dashboard/controls/queue/emails/pause/").status_code == 403
    assert (
        onlooker.post("/dashboard/controls/type/system.noop/limits/", {"rate": "1"}).status_code
        == 403
    )
    page = onlooker.get("/dashboard/").content.decode()
    assert "Pause queue emails" not in page
    assert "Edit limits" not in page

    outsider = signed_in(user, "pause_jobs")
    assert outsider.post("/dashboard/controls/queue/emails/pause/").status_code == 403
    assert not controls.is_paused(Scope.QUEUE, "emails")


def scrape(client: Client, settings) -> dict[tuple[str, tuple], float]:
    settings.METRICS_TOKEN = TOKEN
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def test_metrics_show_pauses_and_held_jobs(client, settings, staff_user):
    def handler(ctx):
        return "done"

    with job_type(handler, limits=registry.Limits(concurrency=1)) as jt:
        controls.pause(Scope.QUEUE, "emails", by=staff_user, via="api")
        Job.objects.create(type=jt.name, status="running")
        waiting = services.enqueue(jt.name).job
        assert run(waiting) == "held"
        assert Job.objects.get(id=waiting.id).held == Held.CONCURRENCY

        samples = scrape(client, settings)

    assert samples[("jobsite_paused", (("name", "emails"), ("scope", "queue")))] == 1
    assert samples[("jobsite_paused", (("name", "default"), ("scope", "queue")))] == 0
    assert samples[("jobsite_paused", (("name", "system.noop"), ("scope", "type")))] == 0
    assert samples[("jobsite_jobs_held", (("reason", "concurrency"), ("type", jt.name)))] == 1
    assert not any(
        name == "jobsite_jobs_held" and dict(labels)["type"] != jt.name for name, labels in samples
    )


def test_health_lists_what_is_paused_without_turning_unhealthy(client, settings, staff_user):
    settings.HEALTH_TOKEN = TOKEN
    now = timezone.now()
    WorkerHeartbeat.objects.create(
        hostname="w1@box", pid=1, queues=settings.JOBS_QUEUES, started_at=now, seen_at=now
    )
    controls.pause(Scope.QUEUE, "emails", by=staff_user, via="api")
    controls.pause(Scope.TYPE, "system.noop", by=staff_user, via="api")

    response = client.get("/health/", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")

    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["status"] == "ok"
    assert body["paused"] == {"queues": ["emails"], "types": ["system.noop"]}
    anonymous = Client().get("/health/").json()
    assert anonymous == {"status": "ok"}
