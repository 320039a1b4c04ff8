"""The write table (accounts.permissions.WRITE_LEVEL) and the four places that ask it: the
services, the REST API's permission, the portal (its views and templates) and the admin.

For every level a principal can stand at, with a role that may write, each place allows
exactly what the table allows, for every kind of object it writes; a read-only role writes
nowhere; and a change to the table moves all four at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.template import Context, Template
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone

from accounts import services as account_services
from accounts.admin_base import ServiceModelAdmin
from accounts.errors import NotAllowed
from accounts.models import (
    POS,
    CloudApplication,
    Merchant,
    MerchantAggregator,
    ProvisioningClient,
    Store,
    Tenant,
    User,
)
from accounts.permissions import WRITE_LEVEL, Kind, activation_kind
from accounts.scope import SYSTEM, Level, Principal
from connector import certificates, webhook_endpoints
from connector import services as connector_services
from connector.api import views as api_views
from connector.api import webhooks as api_webhooks
from connector.api.permissions import ProvisioningAccess
from connector.api.urls import router, session_router
from connector.models import Activation, Device, DeviceSession, Subscription, WebhookEndpoint
from portal.views import base as portal_base
from tests.factories import (
    DeviceFactory,
    MerchantAggregatorFactory,
    MerchantFactory,
    StoreFactory,
    TenantFactory,
    make_user,
)

pytestmark = pytest.mark.django_db

PASSWORD = "a long enough passphrase 42"
LEVELS = list(Level)


def allowed(level: Level, kind: Kind) -> bool:
    """What the table says, read straight from it."""
    return level <= WRITE_LEVEL[kind]


@dataclass
class Tree:
    """One branch of the organisation tree, with something of every kind in it."""

    tenant: Tenant
    ma: MerchantAggregator
    merchant: Merchant
    store: Store
    pos: POS
    app: CloudApplication
    provisioning: ProvisioningClient
    device: Device
    session: DeviceSession

    def writer(self, level: Level, *, can_write: bool = True) -> Principal:
        """A principal at `level` on this branch: the ids of its nodes down to that level."""
        reach = {
            "tenant_id": (Level.TENANT, self.tenant.pk),
            "merchant_aggregator_id": (Level.MERCHANT_AGGREGATOR, self.ma.pk),
            "merchant_id": (Level.MERCHANT, self.merchant.pk),
            "store_id": (Level.STORE, self.store.pk),
        }
        ids = {name: pk for name, (node, pk) in reach.items() if node <= level < Level.NOTHING}
        return Principal(level=level, label=f"test:{level.name.lower()}", can_write=can_write, **ids)


@pytest.fixture
def tree() -> Tree:
    tenant = TenantFactory()
    ma = MerchantAggregatorFactory(tenant=tenant)
    merchant = MerchantFactory(merchant_aggregator=ma)
    store = StoreFactory(merchant=merchant)
    device = DeviceFactory(store=store)
    return Tree(
        tenant=tenant,
        ma=ma,
        merchant=merchant,
        store=store,
        pos=account_services.pos_create(store=store, name="Till", actor=SYSTEM).obj,
        app=account_services.cloud_application_create(merchant_aggregator=ma, name="App", actor=SYSTEM).obj,
        provisioning=account_services.provisioning_client_create(tenant=tenant, actor=SYSTEM).obj,
        device=device,
        session=DeviceSession.objects.create(
            id="write-table", device=device, jwt_expires_at=timezone.now() + timedelta(minutes=5)
        ),
    )


def webhook_endpoint(t: Tree) -> WebhookEndpoint:
    """An endpoint of the branch's merchant, made the first time a test needs one."""
    endpoint, _ = WebhookEndpoint.objects.get_or_create(
        tenant=t.tenant,
        merchant=t.merchant,
        defaults={"url": "https://hooks.example.com/cc", "events": ["device.online"], "secret": "whsec_test"},
    )
    return endpoint


# --- the services ---------------------------------------------------------------------------

# One service call that writes each kind.
SERVICE_WRITES: dict[Kind, Callable[[Tree, Principal], object]] = {
    Kind.TENANT: lambda t, actor: account_services.tenant_create(domain="newco", name="New Co", actor=actor),
    Kind.MERCHANT_AGGREGATOR: lambda t, actor: account_services.merchant_aggregator_create(
        tenant=t.tenant, name="New aggregator", actor=actor
    ),
    Kind.MERCHANT: lambda t, actor: account_services.merchant_create(
        merchant_aggregator=t.ma, name="New merchant", actor=actor
    ),
    Kind.STORE: lambda t, actor: account_services.store_create(merchant=t.merchant, name="New store", actor=actor),
    Kind.POS: lambda t, actor: account_services.pos_create(store=t.store, name="New till", actor=actor),
    Kind.CLOUD_APPLICATION: lambda t, actor: account_services.cloud_application_create(
        merchant_aggregator=t.ma, name="New app", actor=actor
    ),
    Kind.PROVISIONING_CLIENT: lambda t, actor: account_services.provisioning_client_create(
        tenant=t.tenant, name="second", actor=actor
    ),
    Kind.USER: lambda t, actor: account_services.user_create(
        username="newcomer", password=PASSWORD, merchant=t.merchant, actor=actor
    ),
    Kind.STAFF_USER: lambda t, actor: account_services.user_create(
        username="newstaff", password=PASSWORD, is_staff=True, actor=actor
    ),
    Kind.SUBSCRIPTION: lambda t, actor: connector_services.subscription_create(tenant=t.tenant, actor=actor),
    Kind.DEVICE: lambda t, actor: connector_services.device_create(
        merchant=t.merchant, store=t.store, make="Ingenico", model="Lane3000", serial="WT0001", actor=actor
    ),
    Kind.DEVICE_SESSION: lambda t, actor: connector_services.device_session_end(session=t.session, actor=actor),
    Kind.MERCHANT_AGGREGATOR_ACTIVATION: lambda t, actor: connector_services.service_activate(obj=t.ma, actor=actor),
    Kind.MERCHANT_ACTIVATION: lambda t, actor: connector_services.service_activate(obj=t.merchant, actor=actor),
    Kind.DEVICE_ACTIVATION: lambda t, actor: connector_services.service_activate(obj=t.device, actor=actor),
    Kind.WEBHOOK_ENDPOINT: lambda t, actor: webhook_endpoints.webhook_endpoint_create(
        merchant=t.merchant, url="https://hooks.example.com/new", events=["device.offline"], actor=actor
    ),
    Kind.DEVICE_CERTIFICATE: lambda t, actor: certificates.device_require_mtls_set(
        device=t.device, require=True, actor=actor
    ),
}


def test_every_kind_in_the_table_has_a_service_that_writes_it():
    assert set(SERVICE_WRITES) == set(Kind) == set(WRITE_LEVEL)


@pytest.mark.parametrize("level", LEVELS, ids=lambda level: level.name.lower())
@pytest.mark.parametrize("kind", list(Kind))
def test_the_services_allow_exactly_what_the_table_allows(tree, kind, level):
    write = SERVICE_WRITES[kind]
    if allowed(level, kind):
        write(tree, tree.writer(level))
    else:
        with pytest.raises(NotAllowed):
            write(tree, tree.writer(level))


@pytest.mark.parametrize("kind", list(Kind))
def test_the_services_refuse_a_read_only_role_every_write(tree, kind):
    with pytest.raises(NotAllowed):
        SERVICE_WRITES[kind](tree, tree.writer(Level.PLATFORM, can_write=False))


# --- the REST API ---------------------------------------------------------------------------

# What each write action of the API writes.
API_WRITES: dict[tuple[type, str], Kind] = {
    **{(api_views.SubscriptionViewSet, action): Kind.SUBSCRIPTION for action in ("create", "destroy")},
    **{
        (viewset, action): kind
        for viewset, kind in (
            (api_views.MerchantAggregatorViewSet, Kind.MERCHANT_AGGREGATOR),
            (api_views.MerchantViewSet, Kind.MERCHANT),
            (api_views.StoreViewSet, Kind.STORE),
            (api_views.PosViewSet, Kind.POS),
            (api_views.ApplicationViewSet, Kind.CLOUD_APPLICATION),
            (api_views.DeviceViewSet, Kind.DEVICE),
        )
        for action in ("create", "update", "partial_update", "destroy")
    },
    (api_views.PosViewSet, "rotate_secret"): Kind.POS,
    (api_views.ApplicationViewSet, "rotate_secret"): Kind.CLOUD_APPLICATION,
    **{
        (viewset, action): kind
        for viewset, kind in (
            (api_views.MerchantAggregatorViewSet, Kind.MERCHANT_AGGREGATOR_ACTIVATION),
            (api_views.MerchantViewSet, Kind.MERCHANT_ACTIVATION),
            (api_views.DeviceViewSet, Kind.DEVICE_ACTIVATION),
        )
        for action in ("cloud_connector", "cloud_connector_deactivate")
    },
    (api_views.DeviceSessionViewSet, "destroy"): Kind.DEVICE_SESSION,
    (api_views.DeviceViewSet, "certificates_enrol"): Kind.DEVICE_CERTIFICATE,
    (api_views.DeviceViewSet, "certificate"): Kind.DEVICE_CERTIFICATE,
    **{
        (api_webhooks.WebhookEndpointViewSet, action): Kind.WEBHOOK_ENDPOINT
        for action in ("create", "update", "partial_update", "destroy", "rotate_secret", "retry")
    },
}


def _routed_write_actions() -> set[tuple[type, str]]:
    """Every action of the routed viewsets that is not a read."""
    found = set()
    for _prefix, viewset, _basename in router.registry + session_router.registry:
        found |= {
            (viewset, name) for name in ("create", "update", "partial_update", "destroy") if hasattr(viewset, name)
        }
        for extra in viewset.get_extra_actions():
            found |= {(viewset, name) for method, name in extra.mapping.items() if method not in ("get", "head")}
    return found


def test_every_write_the_api_routes_is_checked_here():
    assert _routed_write_actions() == set(API_WRITES)


def api_allows(viewset: type, action: str, principal: Principal) -> bool:
    view = viewset()
    view.action, view.detail = action, action != "create"
    request = SimpleNamespace(
        method="POST", user=SimpleNamespace(is_authenticated=True), auth=None, _cloud_connector_principal=principal
    )
    permission = ProvisioningAccess()
    if view.detail:
        return permission.has_permission(request, view) and permission.has_object_permission(request, view, None)
    return permission.has_permission(request, view)


@pytest.mark.parametrize("level", LEVELS, ids=lambda level: level.name.lower())
@pytest.mark.parametrize(("viewset", "action"), list(API_WRITES), ids=lambda v: getattr(v, "__name__", v))
def test_the_api_allows_exactly_what_the_table_allows(tree, viewset, action, level):
    assert api_allows(viewset, action, tree.writer(level)) is allowed(level, API_WRITES[viewset, action])


@pytest.mark.parametrize(("viewset", "action"), list(API_WRITES), ids=lambda v: getattr(v, "__name__", v))
def test_the_api_refuses_a_read_only_role_every_write(tree, viewset, action):
    assert api_allows(viewset, action, tree.writer(Level.PLATFORM, can_write=False)) is False


# --- the portal -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PortalWrite:
    url_name: str
    args: Callable[[Tree], list]
    kind: Kind
    # The deepest level that sees the page at all (beneath it, the page is a 404).
    seen_down_to: Level = Level.STORE


PORTAL_WRITES = [
    PortalWrite("portal:store_create", lambda t: [], Kind.STORE),
    PortalWrite("portal:store_rename", lambda t: [t.store.pk], Kind.STORE),
    PortalWrite("portal:store_delete", lambda t: [t.store.pk], Kind.STORE),
    PortalWrite("portal:pos_create", lambda t: [t.store.pk], Kind.POS),
    PortalWrite("portal:pos_rename", lambda t: [t.pos.pk], Kind.POS),
    PortalWrite("portal:pos_rotate", lambda t: [t.pos.pk], Kind.POS),
    PortalWrite("portal:pos_delete", lambda t: [t.pos.pk], Kind.POS),
    PortalWrite("portal:application_create", lambda t: [], Kind.CLOUD_APPLICATION, Level.MERCHANT_AGGREGATOR),
    PortalWrite("portal:application_rotate", lambda t: [t.app.pk], Kind.CLOUD_APPLICATION, Level.MERCHANT_AGGREGATOR),
    PortalWrite("portal:application_delete", lambda t: [t.app.pk], Kind.CLOUD_APPLICATION, Level.MERCHANT_AGGREGATOR),
    PortalWrite("portal:device_session_end", lambda t: [t.device.pk], Kind.DEVICE_SESSION),
    PortalWrite("portal:device_switch", lambda t: [t.device.pk, "activate"], Kind.DEVICE_ACTIVATION),
    PortalWrite("portal:certificate_enrol", lambda t: [t.device.pk], Kind.DEVICE_CERTIFICATE),
    PortalWrite("portal:require_mtls", lambda t: [t.device.pk, "on"], Kind.DEVICE_CERTIFICATE),
    PortalWrite("portal:merchant_switch", lambda t: [t.merchant.pk, "activate"], Kind.MERCHANT_ACTIVATION),
    PortalWrite("portal:aggregator_switch", lambda t: [t.ma.pk, "activate"], Kind.MERCHANT_AGGREGATOR_ACTIVATION),
    PortalWrite("portal:webhook_create", lambda t: [], Kind.WEBHOOK_ENDPOINT, Level.MERCHANT),
    PortalWrite("portal:webhook_edit", lambda t: [webhook_endpoint(t).pk], Kind.WEBHOOK_ENDPOINT, Level.MERCHANT),
    PortalWrite("portal:webhook_rotate", lambda t: [webhook_endpoint(t).pk], Kind.WEBHOOK_ENDPOINT, Level.MERCHANT),
    PortalWrite("portal:webhook_delete", lambda t: [webhook_endpoint(t).pk], Kind.WEBHOOK_ENDPOINT, Level.MERCHANT),
]


@pytest.fixture
def signed_in(client, monkeypatch):
    """A signed-in client whose portal principal is the one `act_as` sets."""
    client.force_login(make_user(username="portal-user", is_staff=True))
    acting: dict[str, Principal] = {}
    monkeypatch.setattr(portal_base, "principal_for_user", lambda user: acting["principal"])

    def act_as(principal: Principal):
        acting["principal"] = principal
        return client

    return act_as


@pytest.mark.parametrize(
    ("write", "level"),
    [(write, level) for write in PORTAL_WRITES for level in LEVELS if level <= write.seen_down_to],
    ids=lambda v: v.url_name if isinstance(v, PortalWrite) else v.name.lower(),
)
def test_the_portal_pages_that_write_allow_exactly_what_the_table_allows(tree, signed_in, write, level):
    response = signed_in(tree.writer(level)).get(reverse(write.url_name, args=write.args(tree)))
    if allowed(level, write.kind):
        assert response.status_code == 200
    else:
        assert response.status_code == 403


@pytest.mark.parametrize("write", PORTAL_WRITES, ids=lambda write: write.url_name)
def test_the_portal_pages_that_write_refuse_a_read_only_role(tree, signed_in, write):
    response = signed_in(tree.writer(Level.PLATFORM, can_write=False)).get(
        reverse(write.url_name, args=write.args(tree))
    )
    assert response.status_code == 403


@pytest.mark.parametrize("level", LEVELS, ids=lambda level: level.name.lower())
@pytest.mark.parametrize("kind", list(Kind))
def test_the_portals_write_check_and_template_filter_follow_the_table(tree, kind, level):
    request = RequestFactory().get("/")
    request._portal_principal = tree.writer(level)
    template = Template("{% load portal_tags %}{% if principal|may_write:kind %}offered{% endif %}")
    offered = template.render(Context({"principal": request._portal_principal, "kind": kind.value})) == "offered"
    if allowed(level, kind):
        assert portal_base.require_write(request, kind) == request._portal_principal
        assert offered
    else:
        with pytest.raises(PermissionDenied):
            portal_base.require_write(request, kind)
        assert not offered


# --- the admin ------------------------------------------------------------------------------

# What each service-backed admin adds, changes and deletes; and what each of its actions writes.
ADMIN_KINDS = {
    Tenant: Kind.TENANT,
    MerchantAggregator: Kind.MERCHANT_AGGREGATOR,
    Merchant: Kind.MERCHANT,
    Store: Kind.STORE,
    POS: Kind.POS,
    CloudApplication: Kind.CLOUD_APPLICATION,
    ProvisioningClient: Kind.PROVISIONING_CLIENT,
    User: Kind.USER,
    Subscription: Kind.SUBSCRIPTION,
    Device: Kind.DEVICE,
    DeviceSession: Kind.DEVICE_SESSION,
}
ADMIN_ACTIONS = {
    (Tenant, "subscribe"): Kind.SUBSCRIPTION,
    (Tenant, "unsubscribe"): Kind.SUBSCRIPTION,
    (MerchantAggregator, "activate_cloud_connector"): Kind.MERCHANT_AGGREGATOR_ACTIVATION,
    (MerchantAggregator, "deactivate_cloud_connector"): Kind.MERCHANT_AGGREGATOR_ACTIVATION,
    (Merchant, "activate_cloud_connector"): Kind.MERCHANT_ACTIVATION,
    (Merchant, "deactivate_cloud_connector"): Kind.MERCHANT_ACTIVATION,
    (Device, "enable_devices"): Kind.DEVICE,
    (Device, "disable_devices"): Kind.DEVICE,
    (Device, "activate_cloud_connector"): Kind.DEVICE_ACTIVATION,
    (Device, "deactivate_cloud_connector"): Kind.DEVICE_ACTIVATION,
    (POS, "rotate_secret"): Kind.POS,
    (CloudApplication, "rotate_secret"): Kind.CLOUD_APPLICATION,
    (ProvisioningClient, "rotate_secret"): Kind.PROVISIONING_CLIENT,
    (DeviceSession, "end_sessions"): Kind.DEVICE_SESSION,
}


def _service_admins() -> dict[type, ServiceModelAdmin]:
    return {
        model: model_admin
        for model, model_admin in admin.site._registry.items()
        if isinstance(model_admin, ServiceModelAdmin)
    }


def test_every_service_backed_admin_and_action_is_checked_here():
    assert set(_service_admins()) == set(ADMIN_KINDS) | {Activation}
    declared = {
        (model, name) for model, model_admin in _service_admins().items() for name in (model_admin.actions or [])
    }
    assert declared == set(ADMIN_ACTIONS)


@pytest.fixture
def staff_request():
    request = RequestFactory().get("/admin/")
    request.user = make_user(username="ops", is_staff=True)
    return request


def acting(monkeypatch, model_admin: ServiceModelAdmin, principal: Principal) -> None:
    monkeypatch.setattr(model_admin, "principal", lambda request: principal)


@pytest.mark.parametrize("level", LEVELS, ids=lambda level: level.name.lower())
@pytest.mark.parametrize("model", list(ADMIN_KINDS), ids=lambda model: model.__name__)
def test_the_admin_adds_changes_and_deletes_exactly_what_the_table_allows(
    tree, staff_request, monkeypatch, model, level
):
    model_admin = admin.site._registry[model]
    acting(monkeypatch, model_admin, tree.writer(level))
    may = allowed(level, ADMIN_KINDS[model])
    assert model_admin.has_add_permission(staff_request) is (may and model_admin._implements("create_through_service"))
    assert model_admin.has_change_permission(staff_request) is (
        may and model_admin._implements("update_through_service")
    )
    assert model_admin.has_delete_permission(staff_request) is (
        may and model_admin._implements("delete_through_service")
    )


@pytest.mark.parametrize("level", LEVELS, ids=lambda level: level.name.lower())
@pytest.mark.parametrize(("model", "action"), list(ADMIN_ACTIONS), ids=lambda v: getattr(v, "__name__", v))
def test_the_admin_offers_exactly_the_actions_the_table_allows(tree, staff_request, monkeypatch, model, action, level):
    model_admin = admin.site._registry[model]
    acting(monkeypatch, model_admin, tree.writer(level))
    assert (action in model_admin.get_actions(staff_request)) is allowed(level, ADMIN_ACTIONS[model, action])


@pytest.mark.parametrize("level", LEVELS, ids=lambda level: level.name.lower())
@pytest.mark.parametrize("target", ["ma", "merchant", "device"])
def test_the_admin_deletes_an_activation_row_exactly_when_the_table_allows_switching_its_level(
    tree, staff_request, monkeypatch, target, level
):
    obj = getattr(tree, target)
    connector_services.service_activate(obj=obj, actor=SYSTEM)
    row = Activation.objects.get(**{connector_services.activation_level(obj): obj})
    model_admin = admin.site._registry[Activation]
    acting(monkeypatch, model_admin, tree.writer(level))
    kind = activation_kind(connector_services.activation_level(obj))
    assert model_admin.has_delete_permission(staff_request, row) is allowed(level, kind)


@pytest.mark.parametrize("model", list(ADMIN_KINDS), ids=lambda model: model.__name__)
def test_the_admin_writes_nothing_for_a_read_only_role(tree, staff_request, monkeypatch, model):
    model_admin = admin.site._registry[model]
    acting(monkeypatch, model_admin, tree.writer(Level.PLATFORM, can_write=False))
    assert not model_admin.has_add_permission(staff_request)
    assert not model_admin.has_change_permission(staff_request)
    assert not model_admin.has_delete_permission(staff_request)
    assert not set(model_admin.get_actions(staff_request)) & {name for (m, name) in ADMIN_ACTIONS if m is model}


# --- one table, four readers ----------------------------------------------------------------


def every_answer_for(kind: Kind, principal: Principal, *, tree: Tree, portal, staff_request, monkeypatch) -> dict:
    """Whether each place that writes `kind` lets `principal` do it, by name."""
    answers = {}
    try:
        SERVICE_WRITES[kind](tree, principal)
        answers["service"] = True
    except NotAllowed:
        answers["service"] = False
    for (viewset, action), written in API_WRITES.items():
        if written == kind:
            answers[f"api {viewset.__name__}.{action}"] = api_allows(viewset, action, principal)
    request = RequestFactory().get("/")
    request._portal_principal = principal
    try:
        answers["portal require_write"] = portal_base.require_write(request, kind) == principal
    except PermissionDenied:
        answers["portal require_write"] = False
    template = Template("{% load portal_tags %}{% if principal|may_write:kind %}offered{% endif %}")
    answers["portal template"] = template.render(Context({"principal": principal, "kind": kind.value})) == "offered"
    for write in PORTAL_WRITES:
        if write.kind == kind and principal.level <= write.seen_down_to:
            status = portal(principal).get(reverse(write.url_name, args=write.args(tree))).status_code
            answers[f"portal {write.url_name}"] = {200: True, 403: False}[status]
    for model, model_admin in _service_admins().items():
        acting(monkeypatch, model_admin, principal)
        if ADMIN_KINDS.get(model) == kind:
            answers[f"admin {model.__name__} add/change/delete"] = any(
                (
                    model_admin.has_add_permission(staff_request),
                    model_admin.has_change_permission(staff_request),
                    model_admin.has_delete_permission(staff_request),
                )
            )
        for (action_model, action), written in ADMIN_ACTIONS.items():
            if action_model is model and written == kind:
                answers[f"admin {model.__name__}.{action}"] = action in model_admin.get_actions(staff_request)
    return answers


@pytest.mark.parametrize("kind", list(Kind))
def test_moving_a_kind_in_the_table_moves_every_place_that_writes_it(tree, signed_in, staff_request, monkeypatch, kind):
    """Stricter by one level where it can be (the level that could write no longer may), or
    else looser (the level beneath, that could not, now may)."""
    level = WRITE_LEVEL[kind]
    moved, probe = (Level(level - 1), level) if level > Level.PLATFORM else (Level(level + 1), Level(level + 1))
    monkeypatch.setitem(WRITE_LEVEL, kind, moved)
    answers = every_answer_for(
        kind, tree.writer(probe), tree=tree, portal=signed_in, staff_request=staff_request, monkeypatch=monkeypatch
    )
    assert {"service", "portal require_write", "portal template"} <= set(answers)
    assert answers == dict.fromkeys(answers, moved >= probe)
