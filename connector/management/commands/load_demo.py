"""Load a small demo world into an empty database, through the services, and print how to use it.

    python manage.py load_demo [--force] [--credentials-file PATH]

Client secrets are stored hashed, so the printed block (logins, client ids and secrets,
device tsns, commands to try the relay) is also saved to `.demo-credentials.txt` in the
checkout; a later run on the same database prints that file again instead of loading twice.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.hashers import check_password
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from accounts import services as accounts
from accounts.models import Application, Membership, Tenant
from accounts.scope import Level, Principal
from connector import services as connector

DEMO_DOMAIN = "demo"
DEFAULT_ADDRESS = "127.0.0.1:8000"  # `make run`'s HOST:PORT; the saved block always uses it
BASE_URL = f"http://{DEFAULT_ADDRESS}"
WS_URL = f"ws://{DEFAULT_ADDRESS}"
ACTOR = Principal(level=Level.PLATFORM, label="command:load_demo")
# (username, password, role): simple on purpose, for a development database only.
LOGINS = [
    ("admin", "admin", "platform staff (superuser): the admin at /admin/"),
    ("ma-admin", "ma-admin", "merchant aggregator administrator (Demo Aggregator)"),
    ("merchant-admin", "merchant-admin", "merchant administrator (Demo Coffee)"),
]
DEVICES_BEFORE_ACTIVATION = [
    ("Ingenico", "Lane3000", "230000001", 0),
    ("Ingenico", "Move5000", "230000002", 0),
    ("Ingenico", "Lane3000", "230000003", 1),
    ("Ingenico", "Move5000", "230000004", 1),
]
# In store 1, so that the POS credential of the demo reaches it and meets the rule.
DEVICE_AFTER_ACTIVATION = ("Ingenico", "Lane3000", "230000005", 0)
CREDENTIAL_LINE = re.compile(r"client_id:\s*(\S+)\s+client_secret:\s*(\S+)")


@dataclass
class Demo:
    credentials: list[tuple[str, accounts.IssuedSecret]] = field(default_factory=list)
    usable_tsns: list[str] = field(default_factory=list)
    inactive_tsns: list[str] = field(default_factory=list)


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
            demo = self.load()
        block = render(demo)
        save(path, block)
        self.show(block)
        self.stdout.write(f"(saved to {path})")

    def show(self, block: str) -> None:
        """The block with its URLs on the address the server listens on (`make run HOST=...
        PORT=...`); saved, it keeps the default address, so a later run can map it again."""
        self.stdout.write(block.replace(f"://{DEFAULT_ADDRESS}", f"://{self.address}"))

    def already_loaded(self, path: Path) -> None:
        if not Tenant.objects.filter(domain=DEMO_DOMAIN).exists():
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
        self.show(path.read_text())
        stale = stale_client_ids(path.read_text())
        if stale:
            self.stdout.write(
                f"Warning: the secret of {', '.join(stale)} no longer matches (rotated or deleted since); "
                "rotate it in the admin to get a new one."
            )

    def load(self) -> Demo:
        demo = Demo()
        tenant = accounts.tenant_create(domain=DEMO_DOMAIN, name="Demo PPaaS client", actor=ACTOR)
        connector.subscription_create(tenant=tenant, actor=ACTOR)
        ma = accounts.merchant_aggregator_create(tenant=tenant, name="Demo Aggregator", actor=ACTOR)
        merchant = accounts.merchant_create(merchant_aggregator=ma, name="Demo Coffee", actor=ACTOR)
        stores = [accounts.store_create(merchant=merchant, name=name, actor=ACTOR) for name in ("Store 1", "Store 2")]
        for make, model, serial, store_index in DEVICES_BEFORE_ACTIVATION:
            device = connector.device_create(
                merchant=merchant, store=stores[store_index], make=make, model=model, serial=serial, actor=ACTOR
            )
            demo.usable_tsns.append(device.tsn)
        connector.service_activate(obj=ma, actor=ACTOR)
        connector.service_activate(obj=merchant, actor=ACTOR)
        make, model, serial, store_index = DEVICE_AFTER_ACTIVATION
        later = connector.device_create(
            merchant=merchant, store=stores[store_index], make=make, model=model, serial=serial, actor=ACTOR
        )
        demo.inactive_tsns.append(later.tsn)
        self.add_credentials(demo, tenant=tenant, ma=ma, store=stores[0])
        self.add_users(ma=ma, merchant=merchant)
        return demo

    def add_credentials(self, demo: Demo, *, tenant, ma, store) -> None:
        pos = accounts.pos_create(store=store, name="Till 1", actor=ACTOR)
        demo.credentials.append(("POS 'Till 1' of Store 1 (reaches the devices of Store 1)", pos))
        app = accounts.cloud_application_create(
            merchant_aggregator=ma,
            name="Demo POS cloud",
            services=["retail-api"],
            grant_types=["client_credentials"],
            roles=["pos-terminal"],
            actor=ACTOR,
        )
        demo.credentials.append(("Cloud API application of Demo Aggregator (reaches every device)", app))
        client = accounts.provisioning_client_create(tenant=tenant, name="demo-provisioning", actor=ACTOR)
        demo.credentials.append(("Provisioning client of the tenant (REST API, scope provisioning)", client))

    def add_users(self, *, ma, merchant) -> None:
        (admin_name, admin_password, _), (ma_name, ma_password, _), (m_name, m_password, _) = LOGINS
        accounts.user_create(username=admin_name, password=admin_password, is_staff=True, actor=ACTOR)
        accounts.user_create(
            username=ma_name, password=ma_password, merchant_aggregator=ma, role=Membership.Role.ADMIN, actor=ACTOR
        )
        accounts.user_create(
            username=m_name, password=m_password, merchant=merchant, role=Membership.Role.ADMIN, actor=ACTOR
        )


def render(demo: Demo) -> str:
    _, pos = demo.credentials[0]
    tsn = demo.usable_tsns[0]
    lines = [
        "=" * 78,
        "Cloud Connector demo",
        "=" * 78,
        "",
        f"Portal:    {BASE_URL}/",
        f"Admin:     {BASE_URL}/admin/",
        f"Tokens:    POST {BASE_URL}/oauth2/v1/{DEMO_DOMAIN}/token   (domain: {DEMO_DOMAIN})",
        "",
        "Logins (username / password):",
        *[f"  {username} / {password}   {role}" for username, password, role in LOGINS],
        "",
        "Client credentials (the secrets are stored hashed: this file is the only copy):",
    ]
    for label, issued in demo.credentials:
        lines += [f"  {label}", f"    client_id: {issued.client_id}  client_secret: {issued.client_secret}"]
    lines += [
        "",
        "Devices (Ingenico, merchant Demo Coffee):",
        *[f"  {tsn_}   usable (MA, merchant and device active)" for tsn_ in demo.usable_tsns],
        *[
            f"  {tsn_}   NOT active: created after the merchant was activated; activate it in the admin"
            for tsn_ in demo.inactive_tsns
        ],
        "",
        "Try the relay, with the server running (`make run`), in two more terminals:",
        "  1. the terminal:",
        f"     .venv/bin/python manage.py simulate_device --url {WS_URL} --tsn {tsn} "
        f"--client-id {pos.client_id} --client-secret {pos.client_secret}",
        "  2. the POS:",
        f"     .venv/bin/python manage.py pos_client --url {BASE_URL} --domain {DEMO_DOMAIN} "
        f"--client-id {pos.client_id} --client-secret {pos.client_secret} --tsn {tsn} "
        """--message '{"hello": "terminal"}'""",
        "  (These use the POS credential, which reaches the devices of Store 1; the Cloud API",
        "  application's credentials reach every device of the merchant aggregator.)",
        "=" * 78,
        "",
    ]
    return "\n".join(lines)


def save(path: Path, block: str) -> None:
    # Secrets inside: readable by the owner only.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(block)
    path.chmod(0o600)


def stale_client_ids(block: str) -> list[str]:
    """The client ids of the saved block whose secret no longer opens them."""
    stale = []
    for client_id, secret in CREDENTIAL_LINE.findall(block):
        stored = Application.objects.filter(client_id=client_id).values_list("client_secret", flat=True).first()
        if stored is None or not check_password(secret, stored):
            stale.append(client_id)
    return stale
