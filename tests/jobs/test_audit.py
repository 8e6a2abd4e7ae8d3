"""Who did what: every retry and cancel through the API, the dashboard, the admin and the
reports pages is recorded with the acting user and the door, in the audit log and on the
job's timeline; staff read the log at /api/audit/ and in the admin."""

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from jobs import audit, controls, services
from jobs.models import EventKind, Job, JobEvent, OperatorAction, Scope, Status
from reports.models import Report

pytestmark = pytest.mark.django_db


def failed(owner=None) -> Job:
    job = services.enqueue("system.noop", owner=owner).job
    Job.objects.filter(id=job.id).update(status=Status.FAILED, error="Boom")
    job.refresh_from_db()
    return job


def recorded() -> list[tuple]:
    return [
        (a.actor_name, a.action, a.target_kind, a.target, a.via)
        for a in OperatorAction.objects.order_by("id")
    ]


def timeline_note(job: Job, kind: str) -> str:
    return JobEvent.objects.filter(job=job, kind=kind).latest("id").message


def test_a_retry_and_a_cancel_through_the_api_are_recorded_with_the_user(api, user):
    job = failed(owner=user)
    assert api.post(f"/api/jobs/{job.id}/retry/").status_code == 202
    assert api.post(f"/api/jobs/{job.id}/cancel/").status_code == 200

    assert recorded() == [
        ("alice", "retry", "job", str(job.id), "api"),
        ("alice", "cancel", "job", str(job.id), "api"),
    ]
    assert timeline_note(job, EventKind.RETRIED) == "Manual retry by alice (api)"
    assert timeline_note(job, EventKind.CANCELLED) == "by alice (api)"
    assert OperatorAction.objects.filter(action="cancel").get().detail["outcome"] == "cancelled"


def test_a_refused_retry_or_cancel_records_nothing(api, user):
    job = services.enqueue("system.noop", owner=user).job
    Job.objects.filter(id=job.id).update(status=Status.SUCCEEDED)

    assert api.post(f"/api/jobs/{job.id}/retry/").status_code == 409
    assert api.post(f"/api/jobs/{job.id}/cancel/").status_code == 409
    assert recorded() == []


def test_asking_a_running_job_to_stop_is_recorded_as_such(staff_user):
    job = services.enqueue("system.noop").job
    Job.objects.filter(id=job.id).update(status=Status.RUNNING)

    services.cancel(job, by=staff_user, via=audit.Via.COMMAND)
    services.cancel(job, by=staff_user, via=audit.Via.COMMAND)  # already asked: nothing new

    assert recorded() == [("carol", "cancel", "job", str(job.id), "command")]
    assert OperatorAction.objects.get().detail["outcome"] == "cancel_requested"
    assert timeline_note(job, EventKind.CANCEL_REQUESTED) == "by carol (command)"


def test_code_that_names_no_door_is_not_an_operator_action():
    job = failed()
    services.retry(job)
    services.cancel(job)

    assert recorded() == []
    assert timeline_note(job, EventKind.RETRIED) == "Manual retry"


def test_retries_from_the_dashboard_are_recorded_one_row_per_job(staff_user):
    staff_user.user_permissions.add(Permission.objects.get(codename="retry_job"))
    client = Client()
    client.force_login(staff_user)
    one, two, three = failed(), failed(), failed()

    client.post(f"/dashboard/jobs/{one.id}/retry/")
    client.post("/dashboard/retry-failed/", {"job": [str(two.id), str(three.id)]})

    assert sorted(recorded()) == sorted(
        ("carol", "retry", "job", str(job.id), "dashboard") for job in (one, two, three)
    )
    assert timeline_note(two, EventKind.RETRIED) == "Manual retry by carol (dashboard)"


def test_retry_and_cancel_actions_in_the_admin_are_recorded(admin_client, admin_user):
    retried, cancelled = failed(), services.enqueue("system.noop").job

    admin_client.post(
        "/admin/jobs/job/", {"action": "retry_jobs", "_selected_action": [str(retried.id)]}
    )
    admin_client.post(
        "/admin/jobs/job/", {"action": "cancel_jobs", "_selected_action": [str(cancelled.id)]}
    )

    assert recorded() == [
        ("admin", "retry", "job", str(retried.id), "admin"),
        ("admin", "cancel", "job", str(cancelled.id), "admin"),
    ]


def test_report_retries_and_cancels_are_recorded_for_the_api_and_the_pages(api, client, user):
    report = Report.objects.create(owner=user, kind="job_activity", title="Activity")
    report.job = failed(owner=user)
    report.save()

    assert api.post(f"/api/reports/{report.id}/retry/").status_code == 202
    client.force_login(user)
    client.post(f"/reports/{report.id}/cancel/")

    assert recorded() == [
        ("alice", "retry", "job", str(report.job.id), "api"),
        ("alice", "cancel", "job", str(report.job.id), "web"),
    ]


def test_staff_read_the_log_newest_first_and_filter_it(staff_api, staff_user, other_user):
    job = failed()
    services.retry(job, by=staff_user, via="dashboard")
    controls.pause(Scope.QUEUE, "emails", by=staff_user, via="api")
    controls.pause(Scope.QUEUE, "reports", by=other_user, via="admin")

    body = staff_api.get("/api/audit/").json()
    assert [(e["action"], e["target"]) for e in body["results"]] == [
        ("pause", "reports"),
        ("pause", "emails"),
        ("retry", str(job.id)),
    ]
    first = body["results"][-1]
    assert first["actor"] == "carol"
    assert first["via"] == "dashboard"
    assert first["target_kind"] == "job"

    def targets(**params) -> list[str]:
        response = staff_api.get("/api/audit/", params=params)
        assert response.status_code == 200
        return [e["target"] for e in response.json()["results"]]

    assert targets(target_kind="job") == [str(job.id)]
    assert targets(target=str(job.id)) == [str(job.id)]
    assert targets(actor="bob") == ["reports"]
    assert targets(action="pause", via="api") == ["emails"]


def test_the_log_is_paginated(staff_api, staff_user):
    for name in ("default", "emails", "reports"):
        controls.pause(Scope.QUEUE, name, by=staff_user, via="api")

    page = staff_api.get("/api/audit/", params={"page_size": 2}).json()
    assert [e["target"] for e in page["results"]] == ["reports", "emails"]
    rest = staff_api.get(page["next"].removeprefix("http://testserver")).json()
    assert [e["target"] for e in rest["results"]] == ["default"]


def test_the_log_is_for_staff_only(api, user, anonymous_api):
    user.user_permissions.add(Permission.objects.get(codename="view_operatoraction"))

    assert api.get("/api/audit/").status_code == 403
    assert anonymous_api.get("/api/audit/").status_code == 401


def test_the_admin_shows_the_log_read_only(admin_client, staff_user):
    controls.pause(Scope.QUEUE, "emails", by=staff_user, via="api")
    action = OperatorAction.objects.get()

    listing = admin_client.get("/admin/jobs/operatoraction/")
    assert listing.status_code == 200
    assert "emails" in listing.content.decode()
    assert admin_client.get("/admin/jobs/operatoraction/add/").status_code == 403
    page = admin_client.get(f"/admin/jobs/operatoraction/{action.id}/change/")
    assert page.status_code == 200
    assert b'name="_save"' not in page.content
    admin_client.post(f"/admin/jobs/operatoraction/{action.id}/delete/", {"post": "yes"})
    assert OperatorAction.objects.filter(id=action.id).exists()


def test_pause_and_limits_in_the_admin_go_through_the_controls(admin_client, admin_user):
    response = admin_client.post(
        "/admin/jobs/control/add/",
        {
            "scope": "type",
            "name": "system.noop",
            "paused": "on",
            "overrides_limits": "on",
            "concurrency": "2",
            "period": "",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert controls.is_paused(Scope.TYPE, "system.noop")
    control = controls.control_for(Scope.TYPE, "system.noop")
    assert control.concurrency == 2
    assert control.period == 60.0  # the declared period
    assert [(a.action, a.via) for a in OperatorAction.objects.order_by("id")] == [
        ("pause", "admin"),
        ("set_limits", "admin"),
    ]

    admin_client.post(
        "/admin/jobs/control/",
        {"action": "resume_selected", "_selected_action": [str(control.id)]},
    )
    assert not controls.is_paused(Scope.TYPE, "system.noop")
    assert OperatorAction.objects.first().action == "resume"


def test_the_admin_refuses_bad_limits_and_unknown_names(admin_client):
    response = admin_client.post(
        "/admin/jobs/control/add/",
        {"scope": "type", "name": "system.noop", "overrides_limits": "on", "concurrency": "0"},
    )
    assert response.status_code == 200
    assert "concurrency" in response.context["adminform"].form.errors
    response = admin_client.post("/admin/jobs/control/add/", {"scope": "queue", "name": "nope"})
    assert "name" in response.context["adminform"].form.errors
    assert not OperatorAction.objects.exists()


def test_staff_need_the_pause_permission_for_the_controls_admin(staff_user):
    client = Client()
    client.force_login(staff_user)
    assert client.get("/admin/jobs/control/").status_code == 403

    staff_user.user_permissions.add(Permission.objects.get(codename="pause_jobs"))
    assert client.get("/admin/jobs/control/").status_code == 200
    client.post("/admin/jobs/control/add/", {"scope": "queue", "name": "emails", "paused": "on"})
    assert controls.is_paused(Scope.QUEUE, "emails")


def test_changing_a_controls_limits_in_the_admin_sets_them_through_the_controls(
    admin_client, admin_user
):
    control = controls.pause(Scope.TYPE, "system.noop", by=admin_user, via="api")
    page = admin_client.get(f"/admin/jobs/control/{control.id}/change/")
    assert page.status_code == 200
    listing = admin_client.get("/admin/jobs/control/").content.decode()
    assert "system.noop" in listing

    response = admin_client.post(
        f"/admin/jobs/control/{control.id}/change/",
        {"paused": "on", "overrides_limits": "on", "rate": "5", "period": "10"},
    )

    assert response.status_code == 302
    control.refresh_from_db()
    assert (control.paused, control.rate, control.period) == (True, 5, 10.0)
    assert [a.action for a in OperatorAction.objects.order_by("id")] == ["pause", "set_limits"]
    assert "rate 5 per 10 s" in admin_client.get("/admin/jobs/control/").content.decode()

    admin_client.post(f"/admin/jobs/control/{control.id}/change/", {"paused": "on"})
    control.refresh_from_db()
    assert control.overrides_limits is False
    assert OperatorAction.objects.first().action == "reset_limits"
