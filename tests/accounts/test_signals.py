"""accounts ← connector ← portal: accounts never imports the relay, and tells it about lost
credentials through the signals of accounts/signals.py, which connector subscribes to in
ConnectorConfig.ready. The signals are sent inside the sender's transaction, in the order
the relay must act, and a receiver's failure rolls the sender's write back."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from django.db import connection
from oauth2_provider.models import AccessToken

from accounts import oauth, signals
from accounts import services as account_services
from accounts.credentials import token_checksum
from accounts.models import Application
from accounts.scope import SYSTEM
from connector import events
from tests.factories import StoreFactory, make_access_token

ROOT = Path(__file__).resolve().parents[2]
SIGNAL_NAMES = {
    signals.credential_revoked: "credential_revoked",
    signals.secret_replaced: "secret_replaced",
    signals.token_revoked: "token_revoked",
}


def imported_modules(package: str) -> dict[str, set[str]]:
    """Every module each file of `package` imports, at any depth (function-level included)."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        if "migrations" in path.parts:
            continue
        modules = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module)
        found[str(path.relative_to(ROOT))] = modules
    return found


def reaching_above(package: str, above: tuple[str, ...]) -> dict[str, set[str]]:
    return {
        path: {module for module in modules if module.split(".")[0] in above}
        for path, modules in imported_modules(package).items()
        if any(module.split(".")[0] in above for module in modules)
    }


def test_accounts_imports_nothing_of_connector_or_portal():
    assert reaching_above("accounts", ("connector", "portal")) == {}


def test_connector_imports_nothing_of_portal():
    assert reaching_above("connector", ("portal",)) == {}


@pytest.fixture
def heard(monkeypatch) -> list[tuple]:
    """What the relay's event handlers were told, in order, and whether inside a transaction
    the test itself did not open (the service's own)."""
    told = []
    outside = len(connection.savepoint_ids)

    def recorder(name):
        return lambda **kwargs: told.append((name, kwargs, len(connection.savepoint_ids) > outside))

    for name in ("credential_revoked", "secret_replaced", "token_revoked"):
        monkeypatch.setattr(events, name, recorder(name))
    return told


@pytest.mark.parametrize(
    ("signal", "arguments"),
    [
        (signals.credential_revoked, {"application_id": 7, "reason": "credential_deleted"}),
        (signals.secret_replaced, {"previous_hash": "pbkdf2$old"}),
        (signals.token_revoked, {"application_id": 7, "token_checksum": "c0ffee"}),
    ],
    ids=["credential_revoked", "secret_replaced", "token_revoked"],
)
def test_the_relay_hears_each_accounts_signal_once(heard, signal, arguments):
    events.accounts_signals_connect()  # ConnectorConfig.ready already did: connecting again adds nothing
    signal.send(sender=Application, **arguments)
    assert heard == [(SIGNAL_NAMES[signal], arguments, False)]


@pytest.mark.django_db
def test_rotating_a_secret_tells_the_relay_the_old_hash_then_the_revocation_inside_the_transaction(heard):
    store = StoreFactory()
    pos = account_services.pos_create(store=store, name="Till", actor=SYSTEM).obj
    old_hash = pos.application.client_secret
    account_services.credential_rotate(obj=pos, actor=SYSTEM)
    assert heard == [
        ("secret_replaced", {"previous_hash": old_hash}, True),
        ("credential_revoked", {"application_id": pos.application_id, "reason": "secret_rotated"}, True),
    ]


@pytest.mark.django_db
def test_deleting_a_pos_tells_the_relay_before_the_credential_is_gone(heard):
    pos = account_services.pos_create(store=StoreFactory(), name="Till", actor=SYSTEM).obj
    account_services.pos_delete(pos=pos, actor=SYSTEM)
    assert heard == [
        ("credential_revoked", {"application_id": pos.application_id, "reason": "credential_deleted"}, True)
    ]


@pytest.mark.django_db
def test_revoking_one_token_tells_the_relay_its_checksum_inside_the_transaction(heard):
    pos = account_services.pos_create(store=StoreFactory(), name="Till", actor=SYSTEM).obj
    raw = make_access_token(pos.application)
    assert oauth.access_token_revoke(application=pos.application, raw_token=raw)
    assert heard == [
        ("token_revoked", {"application_id": pos.application_id, "token_checksum": token_checksum(raw)}, True)
    ]


@pytest.mark.django_db
def test_a_receiver_that_fails_rolls_the_revocation_back():
    pos = account_services.pos_create(store=StoreFactory(), name="Till", actor=SYSTEM).obj
    make_access_token(pos.application)
    old_hash = pos.application.client_secret

    def refuse(sender, **kwargs):
        raise RuntimeError("the relay could not end the sessions")

    signals.credential_revoked.connect(refuse, dispatch_uid="test.refuse")
    try:
        with pytest.raises(RuntimeError):
            account_services.credential_rotate(obj=pos, actor=SYSTEM)
    finally:
        signals.credential_revoked.disconnect(dispatch_uid="test.refuse")
    pos.application.refresh_from_db()
    assert pos.application.client_secret == old_hash
    assert AccessToken.objects.filter(application=pos.application).exists()
