"""`manage.py bootstrap --domain <slug> [--name "<tenant name>"]` (rest-api.md, Bootstrap).

Creates the tenant if it does not exist and a new provisioning client for it on every
run, and prints exactly one JSON object on stdout, the only place the secret ever shows:
`{"domain": ..., "client_id": ..., "client_secret": ...}`.
"""

from __future__ import annotations

import json

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from accounts import services
from accounts.errors import Invalid
from accounts.models import Tenant, domain_validator
from accounts.scope import SYSTEM


class Command(BaseCommand):
    help = "Create a tenant if missing and a new provisioning client for it; print its credentials as JSON."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--domain", required=True, help="The tenant's domain slug, e.g. acme-payments.")
        parser.add_argument("--name", default="", help="The tenant's name, used when the tenant is created.")

    def handle(self, *args, domain: str, name: str, **options) -> None:
        _check_domain(domain)
        try:
            with transaction.atomic():
                tenant = Tenant.objects.filter(domain=domain).first()
                if tenant is None:
                    tenant = services.tenant_create(domain=domain, name=name, actor=SYSTEM)
                issued = services.provisioning_client_create(tenant=tenant, actor=SYSTEM)
        except Invalid as error:
            raise CommandError(_describe(error)) from None
        self.stdout.write(
            json.dumps({"domain": tenant.domain, "client_id": issued.client_id, "client_secret": issued.client_secret})
        )


def _check_domain(domain: str) -> None:
    try:
        domain_validator(domain)
    except ValidationError:
        raise CommandError(f"Invalid --domain {domain!r}: {domain_validator.message}") from None


def _describe(error: Invalid) -> str:
    return "; ".join(f"{field}: {' '.join(messages)}" for field, messages in error.errors.items())
