"""The admin: endpoints without their secret; deliveries read only, replayed by those
with the permission, each replay in the audit log."""

import pytest
from django.contrib.auth.models import Permission

from jobs.models import Job, OperatorAction
from webhooks import services
from webhooks.models import WebhookDelivery, WebhookEndpoint


@pytest.fixture
def delivery(user):
    endpoint = WebhookEndpoint.objects.create(owner=user, url="https://93.184.215.14/hooks")
    return services.ping(endpoint)


def replay_action(client, delivery):
    return client.post(
        "/admin/webhooks/webhookdelivery/",
        {"action": "replay_deliveries", "_selected_action": [str(delivery.id)]},
    )


def test_the_endpoint_page_never_shows_the_secret(admin_client, delivery):
    page = admin_client.get(f"/admin/webhooks/webhookendpoint/{delivery.endpoint_id}/change/")

    assert page.status_code == 200
    assert delivery.endpoint.secret not in page.content.decode()


def test_a_replay_from_the_admin_is_a_new_delivery_and_is_audited(
    admin_client, admin_user, delivery
):
    assert replay_action(admin_client, delivery).status_code == 302

    again = WebhookDelivery.objects.get(replay_of=delivery)
    assert Job.objects.get(id=again.job_id).payload == {"delivery_id": str(again.id)}
    action = OperatorAction.objects.get()
    assert (action.actor, action.action, action.target_kind, action.target, action.via) == (
        admin_user,
        "replay",
        "webhook_delivery",
        str(delivery.id),
        "admin",
    )
    assert action.detail == {"replay": str(again.id)}


def test_replaying_takes_the_permission(client, staff_user, delivery):
    staff_user.user_permissions.add(Permission.objects.get(codename="view_webhookdelivery"))
    client.force_login(staff_user)

    assert client.get(f"/admin/webhooks/webhookdelivery/{delivery.id}/change/").status_code == 200
    replay_action(client, delivery)
    assert not WebhookDelivery.objects.filter(replay_of=delivery).exists()

    staff_user.user_permissions.add(Permission.objects.get(codename="replay_webhookdelivery"))
    replay_action(client, delivery)
    assert WebhookDelivery.objects.filter(replay_of=delivery).count() == 1
