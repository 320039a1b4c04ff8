"""`webhook-endpoints/` (v1.1 §16): who may read and write which endpoint, the URL and event
type rules, the secret shown once and rotated, the delivery log and its manual retry.

The personas of tests/world.py: the aggregator's admin (agnes) and viewer (vera), the
merchant's admin (alice) and viewer (victor), the tenant's provisioning client, and the
outsiders: mallory (admin of Rival Shop, same aggregator) and oscar (admin of Globex's
aggregator, another tenant)."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from accounts.models import AuditEntry
from accounts.scope import SYSTEM
from connector import webhook_endpoints
from connector.models import Event, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from tests.api.conftest import API, bearer_client, session_client
from tests.world import World

pytestmark = pytest.mark.django_db

URL = f"{API}/webhook-endpoints/"
HOOK = "https://hooks.example.com/cloud-connector"
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
ALL_TYPES = [
    "device.online",
    "device.offline",
    "session.claimed",
    "session.released",
    "session.taken_over",
    "session.ended",
    "device.activation_changed",
]


def endpoint_of(*, merchant=None, merchant_aggregator=None, url: str = HOOK, events=None) -> WebhookEndpoint:
    return webhook_endpoints.webhook_endpoint_create(
        url=url,
        events=events or ["device.online", "device.offline"],
        merchant=merchant,
        merchant_aggregator=merchant_aggregator,
        actor=SYSTEM,
    )


@pytest.fixture
def hooks(world: World) -> dict[str, WebhookEndpoint]:
    """One endpoint at every place of the world that can have one."""
    return {
        "ma": endpoint_of(merchant_aggregator=world.ma, url="https://hooks.example.com/ma"),
        "merchant": endpoint_of(merchant=world.merchant, url="https://hooks.example.com/merchant"),
        "other_merchant": endpoint_of(merchant=world.other_merchant, url="https://hooks.example.com/rival"),
        "sister_ma": endpoint_of(merchant_aggregator=world.sister_ma, url="https://hooks.example.com/sister"),
        "far": endpoint_of(merchant=world.far_merchant, url="https://hooks.example.com/far"),
    }


def listed_urls(client) -> set[str]:
    response = client.get(URL)
    assert response.status_code == 200, response.content
    return {item["url"] for item in response.json()["results"]}


def create(client, **body):
    return client.post(URL, {"url": HOOK, "events": ["device.online"], **body}, format="json")


# --- who sees which ----------------------------------------------------------------------------


def test_each_caller_lists_exactly_the_endpoints_in_its_scope(world: World, hooks, callers):
    acme = {"ma", "merchant", "other_merchant", "sister_ma"}
    expected = {
        "provisioning": acme,
        "staff": acme | {"far"},
        "ma_admin": {"ma", "merchant", "other_merchant"},
        "ma_viewer": {"ma", "merchant", "other_merchant"},
        "merchant_admin": {"merchant"},
        "merchant_viewer": {"merchant"},
    }
    for name, client in callers.items():
        assert listed_urls(client) == {hooks[key].url for key in expected[name]}, name


def test_a_merchant_does_not_see_its_aggregators_endpoint(world: World, hooks, merchant_admin):
    assert merchant_admin.get(f"{URL}{hooks['ma'].pk}/").status_code == 404
    assert merchant_admin.get(f"{URL}{hooks['merchant'].pk}/").status_code == 200


@pytest.mark.parametrize("outsider", ["other_merchant_admin", "far_ma_admin"])
def test_an_outsider_gets_404_for_every_operation_on_an_endpoint(world: World, hooks, outsider):
    client = session_client(getattr(world, outsider))
    endpoint = hooks["merchant"]
    delivery = delivery_for(endpoint, world)
    target = f"{URL}{endpoint.pk}/"
    answers = [
        client.get(target),
        client.patch(target, {"enabled": False}, format="json"),
        client.put(target, {"url": HOOK, "events": ["device.online"]}, format="json"),
        client.delete(target),
        client.post(f"{target}rotate-secret/"),
        client.get(f"{target}deliveries/"),
        client.post(f"{target}deliveries/{delivery.pk}/retry/"),
    ]
    assert [answer.status_code for answer in answers] == [404] * len(answers)
    endpoint.refresh_from_db()
    assert endpoint.enabled and endpoint.url == "https://hooks.example.com/merchant"
    assert WebhookEndpoint.objects.filter(pk=endpoint.pk).exists()


def test_another_tenants_provisioning_client_sees_nothing_of_acme(world: World, hooks):
    from tests.factories import make_access_token, make_provisioning_client

    globex = bearer_client(make_access_token(make_provisioning_client(tenant=world.far_tenant)))
    assert listed_urls(globex) == {hooks["far"].url}
    assert globex.get(f"{URL}{hooks['ma'].pk}/").status_code == 404
    assert create(globex, merchant=world.merchant.pk).status_code == 400


# --- who writes --------------------------------------------------------------------------------


def test_an_aggregator_admin_creates_endpoints_for_the_aggregator_and_its_merchants(world: World, ma_admin):
    for scope in ({"merchant_aggregator": world.ma.pk}, {"merchant": world.other_merchant.pk}):
        response = create(ma_admin, **scope)
        assert response.status_code == 201, response.content
        body = response.json()
        endpoint = WebhookEndpoint.objects.get(pk=body["id"])
        assert endpoint.tenant == world.tenant
        assert body["merchant_aggregator"] == scope.get("merchant_aggregator")
        assert body["merchant"] == scope.get("merchant")


def test_a_merchant_admin_creates_endpoints_only_for_its_merchant(world: World, merchant_admin):
    assert create(merchant_admin, merchant=world.merchant.pk).status_code == 201
    for scope, field in (
        ({"merchant_aggregator": world.ma.pk}, "merchant_aggregator"),
        ({"merchant": world.other_merchant.pk}, "merchant"),
        ({"merchant": world.far_merchant.pk}, "merchant"),
    ):
        response = create(merchant_admin, **scope)
        assert response.status_code == 400, scope
        assert "does not exist" in response.json()[field][0]
    assert WebhookEndpoint.objects.count() == 1


def test_the_provisioning_client_creates_at_either_level_in_its_tenant_only(world: World, provisioning):
    assert create(provisioning, merchant_aggregator=world.sister_ma.pk).status_code == 201
    assert create(provisioning, merchant=world.merchant.pk).status_code == 201
    response = create(provisioning, merchant_aggregator=world.far_ma.pk)
    assert response.status_code == 400
    assert "merchant_aggregator" in response.json()


@pytest.mark.parametrize("viewer", ["ma_viewer", "merchant_viewer"])
def test_a_read_only_role_reads_but_writes_nothing(world: World, hooks, viewer, request):
    client = request.getfixturevalue(viewer)
    endpoint = hooks["merchant"]
    delivery = delivery_for(endpoint, world)
    target = f"{URL}{endpoint.pk}/"
    assert client.get(target).status_code == 200
    assert client.get(f"{target}deliveries/").status_code == 200
    answers = [
        create(client, merchant=world.merchant.pk),
        client.patch(target, {"enabled": False}, format="json"),
        client.delete(target),
        client.post(f"{target}rotate-secret/"),
        client.post(f"{target}deliveries/{delivery.pk}/retry/"),
    ]
    assert [answer.status_code for answer in answers] == [403] * len(answers)
    assert answers[0].json() == {"detail": "Your role is read-only; it may not change anything."}
    assert WebhookEndpoint.objects.count() == len(hooks)
    assert not DBTaskResult.objects.exists()


def test_the_merchant_admin_changes_and_deletes_its_endpoint(world: World, hooks, merchant_admin):
    target = f"{URL}{hooks['merchant'].pk}/"
    response = merchant_admin.patch(
        target, {"enabled": False, "events": ["session.claimed", "session.ended"]}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["enabled"] is False
    assert response.json()["events"] == ["session.claimed", "session.ended"]
    response = merchant_admin.put(target, {"url": "https://other.example.com/in", "events": ALL_TYPES}, format="json")
    assert response.status_code == 200, response.content
    endpoint = WebhookEndpoint.objects.get(pk=hooks["merchant"].pk)
    assert (endpoint.url, endpoint.events, endpoint.enabled) == ("https://other.example.com/in", ALL_TYPES, True)
    assert merchant_admin.delete(target).status_code == 204
    assert not WebhookEndpoint.objects.filter(pk=endpoint.pk).exists()
    assert merchant_admin.get(target).status_code == 404


def test_the_scope_of_an_endpoint_cannot_be_changed(world: World, hooks, ma_admin):
    target = f"{URL}{hooks['merchant'].pk}/"
    response = ma_admin.patch(target, {"merchant": world.other_merchant.pk}, format="json")
    assert response.status_code == 400
    assert response.json() == {"merchant": ["This field cannot be changed."]}
    response = ma_admin.patch(target, {"merchant_aggregator": world.ma.pk}, format="json")
    assert response.json() == {"merchant_aggregator": ["This field cannot be changed."]}
    # Repeating the scope it has is fine.
    assert ma_admin.patch(target, {"merchant": world.merchant.pk}, format="json").status_code == 200


def test_writes_are_audited_without_the_secret(world: World, merchant_admin):
    body = create(merchant_admin, merchant=world.merchant.pk).json()
    merchant_admin.post(f"{URL}{body['id']}/rotate-secret/")
    entries = AuditEntry.objects.filter(object_type="webhookendpoint").order_by("id")
    assert [entry.action for entry in entries] == ["webhook_endpoint.create", "webhook_endpoint.rotate_secret"]
    assert entries[0].actor == "user:alice"
    assert entries[0].tenant_id == world.tenant.pk
    assert "whsec_" not in str(list(entries.values()))


# --- the secret ---------------------------------------------------------------------------------


def test_the_secret_is_shown_on_create_and_never_again(world: World, merchant_admin):
    created = create(merchant_admin, merchant=world.merchant.pk).json()
    assert created["secret"].startswith("whsec_") and len(created["secret"]) > 30
    assert WebhookEndpoint.objects.get(pk=created["id"]).secret == created["secret"]
    target = f"{URL}{created['id']}/"
    assert merchant_admin.get(target).json()["secret"] is None
    assert [item["secret"] for item in merchant_admin.get(URL).json()["results"]] == [None]
    assert merchant_admin.patch(target, {"enabled": False}, format="json").json()["secret"] is None


def test_rotating_gives_a_new_secret_that_replaces_the_old_one_at_once(world: World, hooks, ma_admin):
    endpoint = hooks["merchant"]
    old = endpoint.secret
    response = ma_admin.post(f"{URL}{endpoint.pk}/rotate-secret/")
    assert response.status_code == 200
    new = response.json()["secret"]
    assert new.startswith("whsec_") and new != old
    endpoint.refresh_from_db()
    assert endpoint.secret == new
    assert ma_admin.get(f"{URL}{endpoint.pk}/").json()["secret"] is None
    again = ma_admin.post(f"{URL}{endpoint.pk}/rotate-secret/").json()["secret"]
    assert again not in (old, new)


def test_unknown_keys_are_ignored_and_cannot_set_the_secret_or_tenant(world: World, merchant_admin):
    response = create(merchant_admin, merchant=world.merchant.pk, secret="whsec_mine", tenant="globex", id=999)
    assert response.status_code == 201
    endpoint = WebhookEndpoint.objects.get(pk=response.json()["id"])
    assert endpoint.secret != "whsec_mine" and endpoint.secret == response.json()["secret"]
    assert endpoint.tenant == world.tenant and endpoint.pk != 999


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "Enter a valid URL."),
        ("hooks.example.com/in", "Enter a valid URL."),
        ("ftp://hooks.example.com/in", "https://"),
        ("http://hooks.example.com/in", "must use https://"),
        ("https://user:pw@hooks.example.com/in", "user name or password"),
        ("https://10.0.0.8/in", "private"),
        ("https://127.0.0.1:8443/in", "private"),
        ("https://[::1]/in", "private"),
        ("https://169.254.169.254/latest/meta-data", "private"),
        ("https://localhost/in", "private"),
        ("", "blank"),
        ("https://hooks.example.com/" + "a" * 2000, "2000 characters"),
    ],
)
def test_a_url_that_cannot_be_used_is_a_field_error(world: World, provisioning, url, message):
    response = create(provisioning, merchant=world.merchant.pk, url=url)
    assert response.status_code == 400, response.content
    assert list(response.json()) == ["url"]
    assert message in " ".join(response.json()["url"])
    assert not WebhookEndpoint.objects.exists()


def test_http_and_private_addresses_are_accepted_in_debug(world: World, provisioning, settings):
    settings.DEBUG = True
    for url in ("http://hooks.example.com/in", "http://127.0.0.1:9000/in", "https://10.0.0.8/in"):
        assert create(provisioning, merchant=world.merchant.pk, url=url).status_code == 201, url


def test_private_addresses_are_accepted_when_the_setting_allows_them(world: World, provisioning, settings):
    settings.CLOUD_CONNECTOR = {**getattr(settings, "CLOUD_CONNECTOR", {}), "WEBHOOK_ALLOW_PRIVATE": True}
    assert create(provisioning, merchant=world.merchant.pk, url="https://10.0.0.8/in").status_code == 201
    # ...but http:// stays refused outside DEBUG.
    assert create(provisioning, merchant=world.merchant.pk, url="http://10.0.0.8/in").status_code == 400


@pytest.mark.parametrize(
    ("events", "message"),
    [
        (["device.online", "device.exploded"], '"device.exploded" is not a valid choice.'),
        (["device.replaced"], '"device.replaced" is not a valid choice.'),
        ([], "This list may not be empty."),
        (["device.online", "device.online"], "Each event type may be given only once."),
        ("device.online", 'Expected a list of items but got type "str".'),
        ({"device.online": True}, 'Expected a list of items but got type "dict".'),
        (7, 'Expected a list of items but got type "int".'),
        (None, "This field may not be null."),
        ([["device.online"]], "not a valid choice"),
        (["device.online"] * 10_000, "no more than 7 elements"),
    ],
)
def test_bad_events_are_a_field_error_naming_the_problem(world: World, provisioning, events, message):
    response = create(provisioning, merchant=world.merchant.pk, events=events)
    assert response.status_code == 400, response.content
    assert list(response.json()) == ["events"]
    assert message in " ".join(response.json()["events"])


def test_missing_fields_are_field_errors(world: World, provisioning):
    response = provisioning.post(URL, {"merchant": world.merchant.pk}, format="json")
    assert response.status_code == 400
    assert response.json() == {"url": ["This field is required."], "events": ["This field is required."]}


@pytest.mark.parametrize(
    ("scope", "message"),
    [
        ({}, webhook_endpoints.ONE_SCOPE),
        ({"merchant": None, "merchant_aggregator": None}, webhook_endpoints.ONE_SCOPE),
        ("both", webhook_endpoints.BOTH_SCOPES),
    ],
)
def test_exactly_one_scope_is_required(world: World, provisioning, scope, message):
    if scope == "both":
        scope = {"merchant": world.merchant.pk, "merchant_aggregator": world.ma.pk}
    response = create(provisioning, **scope)
    assert response.status_code == 400
    assert response.json() == {"non_field_errors": [message]}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": 42}, "url"),
        ({"url": ["https://hooks.example.com"]}, "url"),
        ({"enabled": "yes"}, "enabled"),
        ({"enabled": 1}, "enabled"),
        ({"merchant": "1"}, "merchant"),
        ({"merchant": 2**63}, "merchant"),
        ({"merchant": True}, "merchant"),
    ],
)
def test_wrong_types_are_field_errors(world: World, provisioning, body, field):
    response = create(provisioning, **{"merchant": world.merchant.pk, **body})
    assert response.status_code == 400, response.content
    assert field in response.json()


def test_a_bad_change_is_a_field_error_and_changes_nothing(world: World, hooks, provisioning):
    target = f"{URL}{hooks['merchant'].pk}/"
    for body, field in (
        ({"url": "https://192.168.1.1/in"}, "url"),
        ({"events": ["nope"]}, "events"),
        ({"events": []}, "events"),
        ({"enabled": None}, "enabled"),
    ):
        response = provisioning.patch(target, body, format="json")
        assert response.status_code == 400, body
        assert field in response.json(), body
    endpoint = WebhookEndpoint.objects.get(pk=hooks["merchant"].pk)
    assert (endpoint.url, endpoint.events, endpoint.enabled) == (
        "https://hooks.example.com/merchant",
        ["device.online", "device.offline"],
        True,
    )


def test_a_body_that_is_not_an_object_is_a_400(world: World, provisioning):
    assert provisioning.post(URL, ["device.online"], format="json").status_code == 400
    assert provisioning.post(URL, "nonsense", content_type="application/json").status_code == 400


def test_list_filters_by_scope_and_refuse_bad_values(world: World, hooks, provisioning):
    response = provisioning.get(URL, {"merchant_aggregator": world.ma.pk})
    assert [item["url"] for item in response.json()["results"]] == [hooks["ma"].url]
    response = provisioning.get(URL, {"merchant": world.other_merchant.pk})
    assert [item["url"] for item in response.json()["results"]] == [hooks["other_merchant"].url]
    assert provisioning.get(URL, {"merchant": "x"}).status_code == 400
    assert provisioning.get(URL, {"enabled": "maybe"}).status_code == 400


# --- deliveries ---------------------------------------------------------------------------------


def delivery_for(endpoint: WebhookEndpoint, world: World, *, minutes_ago: int = 0, **fields) -> WebhookDelivery:
    """A delivery row as the outbox makes it, of a new event of the home terminal."""
    device = world.device
    moment = timezone.now() - timedelta(minutes=minutes_ago)
    seq = Event.objects.filter(device=device).count() + 1
    event = Event.objects.create(
        device=device,
        type=fields.pop("type", "device.online"),
        seq=seq,
        occurred_at=moment,
        data={"tsn": device.tsn},
    )
    return WebhookDelivery.objects.create(endpoint=endpoint, event=event, created_at=moment, **fields)


def test_the_delivery_log_lists_newest_first_with_every_attempt(world: World, hooks, merchant_viewer):
    endpoint = hooks["merchant"]
    now = timezone.now()
    old = delivery_for(
        endpoint,
        world,
        minutes_ago=30,
        status=WebhookDelivery.Status.DELIVERED,
        attempts=2,
        response_code=200,
        duration_ms=35,
        last_attempt_at=now - timedelta(minutes=29),
    )
    WebhookAttempt.objects.create(
        delivery=old, attempted_at=now - timedelta(minutes=30), response_code=500, duration_ms=12, error="HTTP 500"
    )
    WebhookAttempt.objects.create(
        delivery=old, attempted_at=now - timedelta(minutes=29), response_code=200, duration_ms=35, succeeded=True
    )
    new = delivery_for(
        endpoint,
        world,
        minutes_ago=1,
        type="device.offline",
        status=WebhookDelivery.Status.RETRYING,
        attempts=1,
        error="timed out",
        duration_ms=10_000,
        last_attempt_at=now,
        next_attempt_at=now + timedelta(seconds=20),
    )
    WebhookAttempt.objects.create(delivery=new, attempted_at=now, duration_ms=10_000, error="timed out")
    delivery_for(hooks["other_merchant"], world)  # another endpoint's: not listed

    response = merchant_viewer.get(f"{URL}{endpoint.pk}/deliveries/")
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2 and body["next"] is None
    first, second = body["results"]
    assert [first["id"], second["id"]] == [new.pk, old.pk]
    assert first["event_id"] == str(new.event_id)
    assert first["event_type"] == "device.offline"
    assert (first["status"], first["attempts"], first["response_code"], first["error"]) == (
        "retrying",
        1,
        None,
        "timed out",
    )
    assert TIME.match(first["next_attempt_at"]) and TIME.match(first["created_at"])
    assert TIME.match(first["last_attempt_at"])
    assert first["attempt_log"] == [
        {
            "attempted_at": first["last_attempt_at"],
            "response_code": None,
            "duration_ms": 10_000,
            "error": "timed out",
            "succeeded": False,
            "manual": False,
        }
    ]
    assert second["status"] == "delivered" and second["next_attempt_at"] is None
    assert [(a["response_code"], a["succeeded"]) for a in second["attempt_log"]] == [(200, True), (500, False)]


def test_the_delivery_log_filters_by_status_and_pages(world: World, hooks, provisioning):
    endpoint = hooks["merchant"]
    for minutes in range(5):
        delivery_for(endpoint, world, minutes_ago=minutes, status=WebhookDelivery.Status.FAILED)
    delivery_for(endpoint, world, minutes_ago=10, status=WebhookDelivery.Status.DELIVERED)
    target = f"{URL}{endpoint.pk}/deliveries/"
    assert provisioning.get(target, {"status": "failed"}).json()["count"] == 5
    assert [d["status"] for d in provisioning.get(target, {"status": "delivered"}).json()["results"]] == ["delivered"]
    page = provisioning.get(target, {"page_size": 2}).json()
    assert page["count"] == 6 and len(page["results"]) == 2 and page["next"]
    for bad in ({"status": "lost"}, {"status": ""}, {"page_size": "0"}):
        response = provisioning.get(target, bad)
        assert response.status_code == 400, bad
        assert list(response.json()) == list(bad)


def test_retry_queues_the_delivery_again_now(world: World, hooks, merchant_admin):
    endpoint = hooks["merchant"]
    delivery = delivery_for(
        endpoint, world, minutes_ago=60 * 30, status=WebhookDelivery.Status.FAILED, attempts=12, error="HTTP 503"
    )
    before = timezone.now()
    response = merchant_admin.post(f"{URL}{endpoint.pk}/deliveries/{delivery.pk}/retry/")
    assert response.status_code == 202, response.content
    assert response.json()["id"] == delivery.pk
    assert response.json()["status"] == "retrying"
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.RETRYING
    assert delivery.next_attempt_at >= before
    task = DBTaskResult.objects.get()
    assert task.queue_name == "webhooks"
    assert task.status == "READY"
    assert delivery.pk in task.args_kwargs["args"][0]
    assert AuditEntry.objects.filter(action="webhook_endpoint.retry").count() == 1


def test_retry_of_another_endpoints_delivery_is_a_404(world: World, hooks, ma_admin):
    theirs = delivery_for(hooks["other_merchant"], world)
    endpoint = hooks["merchant"]
    for delivery_id in (theirs.pk, 999_999, 2**63, 0):
        response = ma_admin.post(f"{URL}{endpoint.pk}/deliveries/{delivery_id}/retry/")
        assert response.status_code == 404, delivery_id
        assert "detail" in response.json()
    assert not DBTaskResult.objects.exists()
    theirs.refresh_from_db()
    assert theirs.status == WebhookDelivery.Status.PENDING


def test_deleting_an_endpoint_deletes_its_delivery_log(world: World, hooks, provisioning):
    delivery = delivery_for(hooks["merchant"], world)
    assert provisioning.delete(f"{URL}{hooks['merchant'].pk}/").status_code == 204
    assert not WebhookDelivery.objects.filter(pk=delivery.pk).exists()
    assert Event.objects.filter(pk=delivery.event_id).exists()


def test_an_id_out_of_range_or_unknown_is_a_404(world: World, provisioning):
    for pk in ("9223372036854775808", "0", "123456"):
        assert provisioning.get(f"{URL}{pk}/").status_code == 404
        assert provisioning.get(f"{URL}{pk}/deliveries/").status_code == 404
    assert provisioning.post(f"{URL}1/deliveries/{uuid.uuid4()}/retry/").status_code == 404


# --- the services' own guard ---------------------------------------------------------------------


def test_the_service_refuses_an_aggregator_endpoint_to_a_merchants_people(world: World, hooks):
    from accounts.errors import NotAllowed
    from accounts.scope import principal_for_user

    alice = principal_for_user(world.merchant_admin)
    with pytest.raises(NotAllowed):
        webhook_endpoints.webhook_endpoint_create(
            url=HOOK, events=["device.online"], merchant_aggregator=world.ma, actor=alice
        )
    for write in (
        lambda: webhook_endpoints.webhook_endpoint_update(endpoint=hooks["ma"], enabled=False, actor=alice),
        lambda: webhook_endpoints.webhook_endpoint_rotate_secret(endpoint=hooks["ma"], actor=alice),
        lambda: webhook_endpoints.webhook_endpoint_delete(endpoint=hooks["ma"], actor=alice),
    ):
        with pytest.raises(NotAllowed):
            write()
    hooks["ma"].refresh_from_db()
    assert hooks["ma"].enabled


def test_re_enabling_an_endpoint_clears_the_pause_its_failures_left(world: World, hooks, provisioning):
    endpoint = hooks["merchant"]
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
        enabled=False, failures=6, paused_until=timezone.now() + timedelta(minutes=5)
    )
    assert provisioning.patch(f"{URL}{endpoint.pk}/", {"enabled": True}, format="json").status_code == 200
    endpoint.refresh_from_db()
    assert (endpoint.enabled, endpoint.failures, endpoint.paused_until) == (True, 0, None)


def test_a_scope_holds_at_most_so_many_endpoints(world: World, merchant_admin):
    from connector.webhook_endpoints import MAX_ENDPOINTS_PER_SCOPE

    for index in range(MAX_ENDPOINTS_PER_SCOPE):
        WebhookEndpoint.objects.create(
            tenant=world.tenant, merchant=world.merchant, url=f"https://hooks.example.com/{index}", secret="s"
        )
    refused = merchant_admin.post(
        f"{API}/webhook-endpoints/",
        {"url": "https://hooks.example.com/one-more", "events": ["device.online"], "merchant": world.merchant.pk},
        format="json",
    )
    assert refused.status_code == 400
    assert "At most" in str(refused.json())
