"""The one world of the tests: an organisation tree with named personas and credentials whose
secrets and tokens the tests know. The API, portal and relay tests all use it, through the
`world` fixture of tests/conftest.py.

    acme (Acme Payments): the home tenant; its provisioning client acts for all of it
      Acme Aggregation (ma), with the Cloud API application "Acme POS cloud" (app)
        Corner Shop (merchant)
          High Street (store): POS "Till 1" (pos), terminal A1000001 (device)
          Mill Lane (sibling_store): POS "Neighbour" (neighbour)
        Rival Shop (other_merchant)
          Market Square (other_store): POS "Rival till" (other_pos), terminal A2000001 (other_device)
      Acme Wholesale (sister_ma), with "Wholesale app" (sister_app)
        Cash and Carry (sister_merchant)
          Warehouse (sister_store): POS "Warehouse till" (sister_pos), terminal A3000001 (sister_device)
    globex (Globex): another tenant
      Globex Aggregation (far_ma), with "Globex app" (far_app)
        Globex Shop (far_merchant)
          Far Away (far_store): POS "Far till" (far_pos), terminal G0000001 (far_device)

The people, each with the password tests.factories.PASSWORD, from the top: staff "sam"
(the platform); at Acme Aggregation the admin "agnes" and the viewer "vera"; at Corner Shop
the admin "alice" and the viewer "victor"; the outsiders "mallory" (admin of Rival Shop) and
"oscar" (admin of Globex Aggregation). The machine callers: the provisioning client (tenant
level), the application (aggregator level) and the POS (store level), each with a token; the
neighbour, a POS of the same merchant outside the terminal's store, and the far POS, one of
another tenant, are outsiders to the home terminal.

Cloud Connector is off everywhere; `cloud_connector_on(world)` (the `cloud_connector_on`
marker on a test that takes `world`) subscribes acme and activates Acme Aggregation and
Corner Shop, so that the home terminal may register.
"""

from __future__ import annotations

from dataclasses import dataclass

from accounts.models import (
    POS,
    CloudApplication,
    Membership,
    Merchant,
    MerchantAggregator,
    ProvisioningClient,
    Store,
    Tenant,
    User,
)
from connector.models import Device
from tests.factories import (
    DeviceFactory,
    MerchantAggregatorFactory,
    MerchantFactory,
    StoreFactory,
    TenantFactory,
    make_access_token,
    make_cloud_application,
    make_pos,
    make_provisioning_client,
    make_user,
    switch_cloud_connector_on,
)


@dataclass
class World:
    tenant: Tenant
    provisioning: ProvisioningClient
    ma: MerchantAggregator
    app: CloudApplication
    merchant: Merchant
    store: Store
    pos: POS
    device: Device
    sibling_store: Store  # same merchant, another store
    neighbour: POS  # a POS of the sibling store: the home terminal is out of its scope
    other_merchant: Merchant  # same aggregator, another merchant
    other_store: Store
    other_pos: POS
    other_device: Device
    sister_ma: MerchantAggregator  # same tenant, another aggregator
    sister_app: CloudApplication
    sister_merchant: Merchant
    sister_store: Store
    sister_pos: POS
    sister_device: Device
    far_tenant: Tenant  # another tenant
    far_ma: MerchantAggregator
    far_app: CloudApplication
    far_merchant: Merchant
    far_store: Store
    far_pos: POS
    far_device: Device
    staff: User
    ma_admin: User
    ma_viewer: User
    merchant_admin: User
    merchant_viewer: User
    other_merchant_admin: User
    far_ma_admin: User
    # Access tokens as the token endpoint issues them: cloud-connector for the POS and the
    # applications, provisioning for the provisioning client.
    pos_token: str
    app_token: str
    neighbour_token: str
    far_pos_token: str
    provisioning_token: str

    @property
    def pos_credentials(self) -> dict[str, str]:
        """What a terminal configured for the home POS sends when it registers."""
        return {"client_id": self.pos.application.client_id, "client_secret": self.pos.client_secret}


def build_world() -> World:
    tenant = TenantFactory(domain="acme", name="Acme Payments")
    ma = MerchantAggregatorFactory(tenant=tenant, name="Acme Aggregation")
    merchant = MerchantFactory(merchant_aggregator=ma, name="Corner Shop")
    store = StoreFactory(merchant=merchant, name="High Street")
    sibling_store = StoreFactory(merchant=merchant, name="Mill Lane")
    other_merchant = MerchantFactory(merchant_aggregator=ma, name="Rival Shop")
    other_store = StoreFactory(merchant=other_merchant, name="Market Square")
    sister_ma = MerchantAggregatorFactory(tenant=tenant, name="Acme Wholesale")
    sister_merchant = MerchantFactory(merchant_aggregator=sister_ma, name="Cash and Carry")
    sister_store = StoreFactory(merchant=sister_merchant, name="Warehouse")
    far_tenant = TenantFactory(domain="globex", name="Globex")
    far_ma = MerchantAggregatorFactory(tenant=far_tenant, name="Globex Aggregation")
    far_merchant = MerchantFactory(merchant_aggregator=far_ma, name="Globex Shop")
    far_store = StoreFactory(merchant=far_merchant, name="Far Away")
    pos = make_pos(store=store, name="Till 1")
    app = make_cloud_application(merchant_aggregator=ma, name="Acme POS cloud")
    neighbour = make_pos(store=sibling_store, name="Neighbour")
    far_pos = make_pos(store=far_store, name="Far till")
    provisioning = make_provisioning_client(tenant=tenant)
    return World(
        tenant=tenant,
        provisioning=provisioning,
        ma=ma,
        app=app,
        merchant=merchant,
        store=store,
        pos=pos,
        device=DeviceFactory(store=store, serial="A1000001"),
        sibling_store=sibling_store,
        neighbour=neighbour,
        other_merchant=other_merchant,
        other_store=other_store,
        other_pos=make_pos(store=other_store, name="Rival till"),
        other_device=DeviceFactory(store=other_store, serial="A2000001"),
        sister_ma=sister_ma,
        sister_app=make_cloud_application(merchant_aggregator=sister_ma, name="Wholesale app"),
        sister_merchant=sister_merchant,
        sister_store=sister_store,
        sister_pos=make_pos(store=sister_store, name="Warehouse till"),
        sister_device=DeviceFactory(store=sister_store, serial="A3000001"),
        far_tenant=far_tenant,
        far_ma=far_ma,
        far_app=make_cloud_application(merchant_aggregator=far_ma, name="Globex app"),
        far_merchant=far_merchant,
        far_store=far_store,
        far_pos=far_pos,
        far_device=DeviceFactory(store=far_store, serial="G0000001"),
        staff=make_user(username="sam", is_staff=True),
        ma_admin=make_user(username="agnes", merchant_aggregator=ma),
        ma_viewer=make_user(username="vera", merchant_aggregator=ma, role=Membership.Role.VIEWER),
        merchant_admin=make_user(username="alice", merchant=merchant),
        merchant_viewer=make_user(username="victor", merchant=merchant, role=Membership.Role.VIEWER),
        other_merchant_admin=make_user(username="mallory", merchant=other_merchant),
        far_ma_admin=make_user(username="oscar", merchant_aggregator=far_ma),
        pos_token=make_access_token(pos),
        app_token=make_access_token(app),
        neighbour_token=make_access_token(neighbour),
        far_pos_token=make_access_token(far_pos),
        provisioning_token=make_access_token(provisioning),
    )


def cloud_connector_on(world: World) -> World:
    """Subscribe acme to Cloud Connector and activate Acme Aggregation and Corner Shop: the
    terminals of Corner Shop may then register (Rival Shop's stays off: its merchant is not
    activated)."""
    switch_cloud_connector_on(world.merchant)
    world.device.refresh_from_db()
    return world
