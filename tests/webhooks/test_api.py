"""The webhooks API: registering endpoints, their secret, who sees and changes what."""

import pytest
from django.contrib.auth.models import Permission
from django.test import override_settings

from jobs.models import Job, OperatorAction
from webhooks.models import Event, WebhookDelivery, WebhookEndpoint
from webhooks.services import DELIVER

PUBLIC_URL = "https://93.184.215.14/hooks"


def register(api, **fields):
    return api.post("/api/webhooks/", json={"url": PUBLIC_URL, **fields})


def test_registering_answers_the_secret_once(api, user):
    created = register(api, events=["job.failed"], description="Alerts")

    assert created.status_code == 201, created.text
    body = created.json()
    endpoint = WebhookEndpoint.objects.get(id=body["id"])
    assert body["secret"] == endpoint.secret and body["secret"].startswith("whsec_")
    assert (endpoint.owner, endpoint.events, endpoint.active) == (user, ["job.failed"], True)
    shown = api.get(f"/api/webhooks/{endpoint.id}/").json()
    assert "secret" not in shown
    assert all("secret" not in e for e in api.get("/api/webhooks/").json()["results"])


def test_an_endpoint_subscribes_to_every_event_unless_told(api):
    body = register(api).json()

    assert body["events"] == [e.value for e in Event]


def test_rotating_the_secret_shows_the_new_one(api):
    endpoint = register(api).json()

    rotated = api.post(f"/api/webhooks/{endpoint['id']}/rotate-secret/")

    assert rotated.status_code == 200
    assert rotated.json()["secret"] != endpoint["secret"]
    assert WebhookEndpoint.objects.get(id=endpoint["id"]).secret == rotated.json()["secret"]


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hooks",
        "https://10.1.2.3/hooks",
        "https://[::1]/hooks",
        "https://localhost/hooks",
        "http://93.184.215.14/hooks",
        "not a url",
    ],
)
def test_urls_that_may_not_be_called_are_refused_naming_url(api, url):
    refused = register(api, url=url)

    assert refused.status_code == 400
    assert list(refused.json()["errors"]) == ["url"]
    assert not WebhookEndpoint.objects.exists()


def test_unknown_events_are_refused_naming_events(api):
    refused = register(api, events=["job.succeeded", "job.exploded"])

    assert refused.status_code == 400
    assert list(refused.json()["errors"]) == ["events"]


@override_settings(WEBHOOKS_ALLOW_HTTP=True, WEBHOOKS_ALLOWED_PRIVATE_NETWORKS=["127.0.0.0/8"])
def test_private_networks_the_operator_allows_are_accepted(api):
    assert register(api, url="http://127.0.0.1:9/hooks").status_code == 201
    assert register(api, url="http://10.0.0.1/hooks").status_code == 400


def test_changing_the_url_checks_it_again(api):
    endpoint = register(api).json()

    refused = api.request(
        "PATCH", f"/api/webhooks/{endpoint['id']}/", json={"url": "https://127.0.0.1/"}
    )
    changed = api.request(
        "PATCH",
        f"/api/webhooks/{endpoint['id']}/",
        json={"active": False, "events": ["job.failed"]},
    )

    assert refused.status_code == 400 and list(refused.json()["errors"]) == ["url"]
    assert changed.status_code == 200
    stored = WebhookEndpoint.objects.get(id=endpoint["id"])
    assert (stored.url, stored.active, stored.events) == (PUBLIC_URL, False, ["job.failed"])


@override_settings(WEBHOOKS_MAX_ENDPOINTS_PER_USER=2)
def test_a_user_has_at_most_the_cap_of_endpoints(api, other_api):
    assert [register(api).status_code for _ in range(2)] == [201, 201]

    refused = register(api)

    assert refused.status_code == 409
    assert refused.json()["code"] == "too_many_endpoints"
    assert WebhookEndpoint.objects.count() == 2
    assert register(other_api).status_code == 201


def test_deleting_an_endpoint(api):
    endpoint = register(api).json()

    assert api.delete(f"/api/webhooks/{endpoint['id']}/").status_code == 204
    assert not WebhookEndpoint.objects.exists()


def test_other_users_endpoints_and_deliveries_are_not_found(api, other_api, user):
    endpoint = register(api).json()
    delivery = api.post(f"/api/webhooks/{endpoint['id']}/test/").json()
    base = f"/api/webhooks/{endpoint['id']}/"

    answers = [
        other_api.get(base).status_code,
        other_api.request("PATCH", base, json={"active": False}).status_code,
        other_api.delete(base).status_code,
        other_api.post(base + "rotate-secret/").status_code,
        other_api.get(base + "deliveries/").status_code,
        other_api.post(base + "test/").status_code,
        other_api.get(f"/api/webhooks/deliveries/{delivery['id']}/").status_code,
        other_api.post(f"/api/webhooks/deliveries/{delivery['id']}/replay/").status_code,
    ]

    assert answers == [404] * 8
    assert other_api.get("/api/webhooks/").json()["results"] == []
    assert WebhookEndpoint.objects.get(id=endpoint["id"]).active
    assert WebhookDelivery.objects.count() == 1


def test_staff_see_every_endpoint_but_change_only_their_own(api, staff_api):
    endpoint = register(api).json()
    base = f"/api/webhooks/{endpoint['id']}/"

    assert staff_api.get(base).status_code == 200
    assert [e["id"] for e in staff_api.get("/api/webhooks/").json()["results"]] == [endpoint["id"]]
    assert staff_api.post(base + "rotate-secret/").status_code == 403
    assert staff_api.request("PATCH", base, json={"active": False}).status_code == 403
    assert staff_api.delete(base).status_code == 403
    assert staff_api.post(base + "test/").status_code == 403
    assert WebhookEndpoint.objects.get(id=endpoint["id"]).secret == endpoint["secret"]
    assert not WebhookDelivery.objects.exists()


def test_staff_replay_another_users_delivery_with_the_permission_audited(
    api, staff_api, staff_user
):
    endpoint = register(api).json()
    original = api.post(f"/api/webhooks/{endpoint['id']}/test/").json()
    replay = f"/api/webhooks/deliveries/{original['id']}/replay/"

    refused = staff_api.post(replay)

    assert refused.status_code == 403
    assert "webhooks.replay_webhookdelivery" in refused.json()["detail"]
    assert WebhookDelivery.objects.count() == 1
    assert not OperatorAction.objects.exists()

    staff_user.user_permissions.add(Permission.objects.get(codename="replay_webhookdelivery"))
    replayed = staff_api.post(replay)

    assert replayed.status_code == 202
    again = WebhookDelivery.objects.get(id=replayed.json()["id"])
    assert (str(again.replay_of_id), str(again.endpoint_id)) == (original["id"], endpoint["id"])
    action = OperatorAction.objects.get()
    assert (action.actor, action.action, action.target_kind, action.target, action.via) == (
        staff_user,
        "replay",
        "webhook_delivery",
        original["id"],
        "api",
    )
    assert action.detail == {"replay": str(again.id)}


def test_an_owners_replay_is_audited_too(api, user):
    endpoint = register(api).json()
    original = api.post(f"/api/webhooks/{endpoint['id']}/test/").json()

    replayed = api.post(f"/api/webhooks/deliveries/{original['id']}/replay/").json()

    action = OperatorAction.objects.get()
    assert (action.actor, action.target, action.via, action.detail) == (
        user,
        original["id"],
        "api",
        {"replay": replayed["id"]},
    )


def test_strangers_are_refused(anonymous_api, api):
    endpoint = register(api).json()

    assert anonymous_api.get("/api/webhooks/").status_code == 401
    assert anonymous_api.post("/api/webhooks/", json={"url": PUBLIC_URL}).status_code == 401
    assert anonymous_api.get(f"/api/webhooks/{endpoint['id']}/").status_code == 401


def test_delivery_jobs_cannot_be_created_through_the_jobs_api(api, staff_api):
    for client in (api, staff_api):
        refused = client.post(
            "/api/jobs/", json={"type": DELIVER, "payload": {"delivery_id": str(Job().id)}}
        )
        assert refused.status_code == 400
        assert list(refused.json()["errors"]) == ["type"]
    assert not Job.objects.filter(type=DELIVER).exists()


def test_a_ping_is_a_delivery_sent_by_a_job(api):
    endpoint = register(api, events=["job.failed"]).json()

    sent = api.post(f"/api/webhooks/{endpoint['id']}/test/")

    assert sent.status_code == 202
    delivery = WebhookDelivery.objects.get(id=sent.json()["id"])
    assert (delivery.event, delivery.status, delivery.payload["event"]) == (
        "ping",
        "pending",
        "ping",
    )
    job = Job.objects.get(id=delivery.job_id)
    assert (job.type, job.payload, job.owner) == (DELIVER, {"delivery_id": str(delivery.id)}, None)
    listed = api.get(f"/api/webhooks/{endpoint['id']}/deliveries/").json()["results"]
    assert [d["id"] for d in listed] == [str(delivery.id)]


def test_a_replay_is_a_new_delivery_of_the_same_body(api):
    endpoint = register(api).json()
    original = WebhookDelivery.objects.get(
        id=api.post(f"/api/webhooks/{endpoint['id']}/test/").json()["id"]
    )

    replayed = api.post(f"/api/webhooks/deliveries/{original.id}/replay/")

    assert replayed.status_code == 202
    again = WebhookDelivery.objects.get(id=replayed.json()["id"])
    assert again.id != original.id and again.job_id != original.job_id
    assert (again.replay_of, again.payload, again.event) == (original, original.payload, "ping")
    assert Job.objects.get(id=again.job_id).payload == {"delivery_id": str(again.id)}
    detail = api.get(f"/api/webhooks/deliveries/{again.id}/").json()
    assert detail["replay_of"] == str(original.id)
    assert detail["payload"] == original.payload and detail["log"] == []
