"""Load a small demo world into an empty database, through the services, and print how to use it.

    python manage.py load_demo [--force] [--credentials-file PATH] [--address HOST:PORT]

Client secrets are stored hashed, so the printed block (logins, client ids and secrets,
device tsns, commands to try the relay) is also saved to `.demo-credentials.txt` in the
checkout. A later run on the same database prints the block again, rebuilt from the database
as it is now (a device activated since, a credential rotated or added) on the address the
server listens on (`make run PORT=...`), and saves it so; the secrets come from the saved
block, as long as they still open their credential.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.hashers import check_password
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from accounts import services as accounts
from accounts.models import POS, CloudApplication, Membership, ProvisioningClient, Tenant, User
from accounts.scope import Level, Principal
from connector import services as connector
from connector.models import Device
from connector.services import Unusable

DEMO_DOMAIN = "demo"
DEFAULT_ADDRESS = "127.0.0.1:8000"  # `make run`'s HOST:PORT
ACTOR = Principal(level=Level.PLATFORM, label="command:load_demo")
# (username, password, role): simple on purpose, for a development database only.
LOGINS = [
    ("admin", "admin", "platform staff (superuser): the admin at /admin/"),
    ("ma-admin", "ma-admin", "merchant aggregator administrator (Demo Aggregator)"),
    ("ma-viewer", "ma-viewer", "merchant aggregator viewer, read-only (Demo Aggregator)"),
    ("merchant-admin", "merchant-admin", "merchant administrator (Demo Coffee)"),
    ("merchant-viewer", "merchant-viewer", "merchant viewer, read-only (Demo Coffee)"),
]
DEVICES_BEFORE_ACTIVATION = [
    ("Ingenico", "Lane3000", "230000001", 0),
    ("Ingenico", "Move5000", "230000002", 0),
    ("Ingenico", "Lane3000", "230000003", 1),
    ("Ingenico", "Move5000", "230000004", 1),
]
# In store 1, so that the POS credential of the demo reaches it and meets the rule.
DEVICE_AFTER_ACTIVATION = ("Ingenico", "Lane3000", "230000005", 0)
# Secrets are letters and digits (oauthlib's generator): an "(unknown ...)" is not one.
CREDENTIAL_LINE = re.compile(r"client_id:\s*(\S+)\s+client_secret:\s*([A-Za-z0-9]+)\b")
UNKNOWN_SECRET = "(unknown: rotated or made since the demo was loaded; rotate it to get one)"
WHY_UNUSABLE = {
    Unusable.SUBSCRIPTION: "NOT usable: the tenant is not subscribed to Cloud Connector",
    Unusable.MERCHANT_AGGREGATOR: "NOT usable: Cloud Connector is off for the merchant aggregator",
    Unusable.MERCHANT: "NOT usable: Cloud Connector is off for the merchant",
    Unusable.DEVICE: "NOT active: the device's own activation is off; activate it on its portal page or in the admin",
    Unusable.DISABLED: "NOT usable: the device is disabled",
}


@dataclass(frozen=True)
class Credential:
    label: str
    client_id: str
    secret: str | None  # None: the saved block does not hold one that still opens it
    store_id: int | None = None  # a POS's store


@dataclass(frozen=True)
class DemoState:
    """The demo as the database holds it now, with the secrets that are still known."""

    logins: list[tuple[str, str, str]]
    credentials: list[Credential]
    devices: list[tuple[str, str]]  # tsn, what the relay will say of it
    usable_by_store: dict[int, list[str]]


class Command(BaseCommand):
    help = "Load demo data (tenant 'demo') into an empty database and print the logins and credentials."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--force", action="store_true", help="run even with DEBUG off")
        parser.add_argument(
            "--credentials-file",
            type=Path,
            default=Path(settings.BASE_DIR) / ".demo-credentials.txt",
            help="where the printed block is saved (default: .demo-credentials.txt in the checkout)",
        )
        parser.add_argument(
            "--address",
            default=DEFAULT_ADDRESS,
            help=f"host:port the server listens on, for the printed URLs and commands (default: {DEFAULT_ADDRESS})",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG and not options["force"]:
            raise CommandError(
                "DEBUG is off: this looks like a production database, and the demo creates a superuser "
                "with a known password. Use --force if you really mean it."
            )
        path: Path = options["credentials_file"]
        self.address = options["address"]
        if Tenant.objects.exists():
            self.already_loaded(path)
            return
        with transaction.atomic():
            tenant, secrets = self.load()
        self.publish(path, demo_state(tenant, secrets))

    def publish(self, path: Path, state: DemoState) -> None:
        """Print the block and save it, on the address the server listens on now."""
        block = render(state, address=self.address)
        save(path, block)
        self.stdout.write(block)
        self.stdout.write(f"(saved to {path})")

    def already_loaded(self, path: Path) -> None:
        tenant = Tenant.objects.filter(domain=DEMO_DOMAIN).first()
        if tenant is None:
            self.stdout.write("The database already holds tenants (no 'demo'): load_demo only fills an empty database.")
            return
        if not path.exists():
            self.stdout.write(
                "The demo is already loaded, and its secrets are stored hashed: they cannot be shown again.\n"
                "To get a new secret, log in to the admin as 'admin' (password 'admin'), select the POS or the\n"
                "application and use the action 'Rotate the client secret'. To start over, remove the database\n"
                "(db.sqlite3 by default) and run `make run` again."
            )
            return
        saved = dict(CREDENTIAL_LINE.findall(path.read_text()))
        state = demo_state(tenant, saved)
        self.publish(path, state)
        known = {credential.client_id for credential in state.credentials if credential.secret}
        stale = [client_id for client_id in saved if client_id not in known]
        if stale:
            self.stdout.write(
                f"Warning: the secret of {', '.join(stale)} no longer matches (rotated or deleted since); "
                "rotate it in the admin or the portal to get a new one."
            )

    def load(self) -> tuple[Tenant, dict[str, str]]:
        tenant = accounts.tenant_create(domain=DEMO_DOMAIN, name="Demo PPaaS client", actor=ACTOR)
        connector.subscription_create(tenant=tenant, actor=ACTOR)
        ma = accounts.merchant_aggregator_create(tenant=tenant, name="Demo Aggregator", actor=ACTOR)
        merchant = accounts.merchant_create(merchant_aggregator=ma, name="Demo Coffee", actor=ACTOR)
        stores = [accounts.store_create(merchant=merchant, name=name, actor=ACTOR) for name in ("Store 1", "Store 2")]
        for make, model, serial, store_index in DEVICES_BEFORE_ACTIVATION:
            connector.device_create(
                merchant=merchant, store=stores[store_index], make=make, model=model, serial=serial, actor=ACTOR
            )
        connector.service_activate(obj=ma, actor=ACTOR)
        connector.service_activate(obj=merchant, actor=ACTOR)
        make, model, serial, store_index = DEVICE_AFTER_ACTIVATION
        connector.device_create(
            merchant=merchant, store=stores[store_index], make=make, model=model, serial=serial, actor=ACTOR
        )
        secrets = self.add_credentials(tenant=tenant, ma=ma, store=stores[0])
        self.add_users(ma=ma, merchant=merchant)
        return tenant, secrets

    def add_credentials(self, *, tenant, ma, store) -> dict[str, str]:
        issued = [
            accounts.pos_create(store=store, name="Till 1", actor=ACTOR),
            accounts.cloud_application_create(
                merchant_aggregator=ma,
                name="Demo POS cloud",
                services=["retail-api"],
                grant_types=["client_credentials"],
                roles=["pos-terminal"],
                actor=ACTOR,
            ),
            accounts.provisioning_client_create(tenant=tenant, name="demo-provisioning", actor=ACTOR),
        ]
        return {item.client_id: item.client_secret for item in issued}

    def add_users(self, *, ma, merchant) -> None:
        admin, ma_admin, ma_viewer, merchant_admin, merchant_viewer = ((name, password) for name, password, _ in LOGINS)
        accounts.user_create(username=admin[0], password=admin[1], is_staff=True, actor=ACTOR)
        for (username, password), place, role in (
            (ma_admin, {"merchant_aggregator": ma}, Membership.Role.ADMIN),
            (ma_viewer, {"merchant_aggregator": ma}, Membership.Role.VIEWER),
            (merchant_admin, {"merchant": merchant}, Membership.Role.ADMIN),
            (merchant_viewer, {"merchant": merchant}, Membership.Role.VIEWER),
        ):
            accounts.user_create(username=username, password=password, role=role, actor=ACTOR, **place)


def demo_state(tenant: Tenant, secrets: dict[str, str]) -> DemoState:
    """What the block shows, read from the database: `secrets` (client id to secret) are kept
    where they still open their credential."""
    return DemoState(
        logins=_logins(),
        credentials=_credentials(tenant, secrets),
        devices=[(device.tsn, _device_state(device)) for device in _devices(tenant)],
        usable_by_store=_usable_by_store(tenant),
    )


def _logins() -> list[tuple[str, str, str]]:
    users = {user.username: user for user in User.objects.filter(username__in=[name for name, _, _ in LOGINS])}
    logins = []
    for username, password, role in LOGINS:
        user = users.get(username)
        note = " (deleted since)" if user is None else "" if user.is_active else " (deactivated since)"
        logins.append((username, password, role + note))
    return logins


def _known(secrets: dict[str, str], client_id: str, stored_hash: str) -> str | None:
    secret = secrets.get(client_id)
    return secret if secret and check_password(secret, stored_hash) else None


def _credentials(tenant: Tenant, secrets: dict[str, str]) -> list[Credential]:
    credentials = []
    for pos in POS.objects.filter(application__tenant=tenant).select_related("store", "application").order_by("id"):
        store, app = pos.store.name, pos.application
        credentials.append(
            Credential(
                label=f"POS '{pos.name}' of {store} (reaches the devices of {store})",
                client_id=app.client_id,
                secret=_known(secrets, app.client_id, app.client_secret),
                store_id=pos.store_id,
            )
        )
    applications = CloudApplication.objects.filter(application__tenant=tenant).select_related(
        "merchant_aggregator", "application"
    )
    for cloud in applications.order_by("id"):
        missing = cloud.missing_for_cloud_connector()
        reach = f"lacks {', '.join(missing)}" if missing else "reaches every device"
        app = cloud.application
        credentials.append(
            Credential(
                label=f"Cloud API application '{cloud.name}' of {cloud.merchant_aggregator.name} ({reach})",
                client_id=app.client_id,
                secret=_known(secrets, app.client_id, app.client_secret),
            )
        )
    for client in ProvisioningClient.objects.filter(tenant=tenant).select_related("application").order_by("id"):
        app = client.application
        credentials.append(
            Credential(
                label=f"Provisioning client '{client.name}' of the tenant (REST API, scope provisioning)",
                client_id=app.client_id,
                secret=_known(secrets, app.client_id, app.client_secret),
            )
        )
    return credentials


def _devices(tenant: Tenant):
    return connector.devices_with_activation(Device.objects.filter(tenant=tenant)).order_by("serial", "id")


def _device_state(device: Device) -> str:
    reason = connector.unusable_reason_from_flags(device)
    return "usable (MA, merchant and device active)" if reason is None else WHY_UNUSABLE[reason]


def _usable_by_store(tenant: Tenant) -> dict[int, list[str]]:
    usable: dict[int, list[str]] = {}
    for device in _devices(tenant).filter(usable=True):
        usable.setdefault(device.store_id, []).append(device.tsn)
    return usable


def render(state: DemoState, *, address: str) -> str:
    base_url, ws_url = f"http://{address}", f"ws://{address}"
    lines = [
        "=" * 78,
        "Cloud Connector demo",
        "=" * 78,
        "",
        f"Portal:    {base_url}/",
        f"Admin:     {base_url}/admin/",
        f"Tokens:    POST {base_url}/oauth2/v1/{DEMO_DOMAIN}/token   (domain: {DEMO_DOMAIN})",
        "",
        "Logins (username / password):",
        *[f"  {username} / {password}   {role}" for username, password, role in state.logins],
        "",
        "Client credentials (the secrets are stored hashed: this file is the only copy):",
    ]
    for credential in state.credentials:
        lines += [
            f"  {credential.label}",
            f"    client_id: {credential.client_id}  client_secret: {credential.secret or UNKNOWN_SECRET}",
        ]
    lines += ["", "Devices of the demo tenant (serial order):"]
    lines += [f"  {tsn}   {state_text}" for tsn, state_text in state.devices]
    lines += ["", *_relay_lines(state, base_url=base_url, ws_url=ws_url), "=" * 78, ""]
    return "\n".join(lines)


def _relay_lines(state: DemoState, *, base_url: str, ws_url: str) -> list[str]:
    """The two commands to try the relay, with a POS whose secret is known and a usable
    device of its store; or what to do when there is none."""
    for pos in (c for c in state.credentials if c.store_id is not None and c.secret):
        tsns = state.usable_by_store.get(pos.store_id)
        if tsns:
            break
    else:
        return [
            "Try the relay: no POS with a known secret reaches a usable device now. Rotate a POS key in the",
            "portal or the admin (the new key is shown once), or activate a device of its store.",
        ]
    tsn = tsns[0]
    return [
        "Try the relay, with the server running (`make run`), in two more terminals:",
        "  1. the terminal:",
        f"     .venv/bin/python manage.py simulate_device --url {ws_url} --tsn {tsn} "
        f"--client-id {pos.client_id} --client-secret {pos.secret}",
        "  2. the POS:",
        f"     .venv/bin/python manage.py pos_client --url {base_url} --domain {DEMO_DOMAIN} "
        f"--client-id {pos.client_id} --client-secret {pos.secret} --tsn {tsn} "
        """--message '{"hello": "terminal"}'""",
        "  (These use the POS credential, which reaches the devices of its store; the Cloud API",
        "  application's credentials reach every device of the merchant aggregator.)",
    ]


def save(path: Path, block: str) -> None:
    # Secrets inside: readable by the owner only.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(block)
    path.chmod(0o600)
