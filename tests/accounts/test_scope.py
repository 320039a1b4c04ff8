"""The scope matrix: what each kind of caller reaches through the selectors of accounts.scope.

The tree is built once, a matrix rather than the shared world of tests/world.py: two tenants,
each with two merchant aggregators, each with two merchants, each with two stores; every
store has a POS, a device and a live session, every aggregator a Cloud API application,
every tenant a provisioning client. Objects are named by their path, e.g. `t1.a2.m1.s2`. A
caller stands on one node (`t1.a1.m1` for a user of that merchant) and reaches exactly the
nodes above it and everything beneath it; Cloud API applications only from the aggregator
level up. Every other object is out of scope, and must not be there at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from django.db import transaction
from django.test import override_settings
from django.utils import timezone

from accounts import scope
from accounts.models import Application, Membership
from accounts.scope import SYSTEM, Level, Principal
from accounts.services import provisioning_client_create
from connector import selectors
from connector.models import DeviceSession
from tests.factories import (
    FAST_HASHERS,
    DeviceFactory,
    MerchantAggregatorFactory,
    MerchantFactory,
    StoreFactory,
    TenantFactory,
    make_cloud_application,
    make_pos,
    make_user,
)

HOME_MA = "t1.a1"
HOME_MERCHANT = "t1.a1.m1"
HOME_STORE = "t1.a1.m1.s1"


@dataclass
class Tree:
    ids: dict[str, dict[str, int]] = field(default_factory=dict)  # kind -> path -> id
    objects: dict[str, object] = field(default_factory=dict)
    principals: dict[str, Principal] = field(default_factory=dict)

    def add(self, kind: str, path: str, obj) -> None:
        self.ids.setdefault(kind, {})[path] = obj.pk
        self.objects[f"{kind}:{path}"] = obj


def build_tree(tree: Tree) -> None:
    for t in ("t1", "t2"):
        tenant = TenantFactory(domain=f"scope-{t}")
        tree.add("tenants", t, tenant)
        for a in ("a1", "a2"):
            ma = MerchantAggregatorFactory(tenant=tenant, name=f"{t}.{a}")
            tree.add("merchant_aggregators", f"{t}.{a}", ma)
            tree.add("cloud_applications", f"{t}.{a}", make_cloud_application(merchant_aggregator=ma))
            for m in ("m1", "m2"):
                merchant = MerchantFactory(merchant_aggregator=ma, name=f"{t}.{a}.{m}")
                tree.add("merchants", f"{t}.{a}.{m}", merchant)
                for s in ("s1", "s2"):
                    build_store(tree, merchant, f"{t}.{a}.{m}.{s}")


def build_store(tree: Tree, merchant, path: str) -> None:
    store = StoreFactory(merchant=merchant, name=path)
    tree.add("stores", path, store)
    tree.add("pos", path, make_pos(store=store, name=path))
    device = DeviceFactory(store=store)
    tree.add("devices", path, device)
    session = DeviceSession.objects.create(
        id=f"session-{path}",
        device=device,
        state=DeviceSession.State.ONLINE,
        jwt_expires_at=timezone.now() + timedelta(minutes=5),
    )
    tree.add("device_sessions", path, session)


def build_callers(tree: Tree) -> None:
    o = tree.objects
    ma, merchant = o[f"merchant_aggregators:{HOME_MA}"], o[f"merchants:{HOME_MERCHANT}"]
    p = tree.principals
    p["store POS"] = scope.principal_for_pos(o[f"pos:{HOME_STORE}"])
    p["MA application"] = scope.principal_for_cloud_application(o[f"cloud_applications:{HOME_MA}"])
    p["MA admin"] = scope.principal_for_user(make_user(username="ma-admin", merchant_aggregator=ma))
    p["MA viewer"] = scope.principal_for_user(
        make_user(username="ma-viewer", merchant_aggregator=ma, role=Membership.Role.VIEWER)
    )
    p["merchant admin"] = scope.principal_for_user(make_user(username="m-admin", merchant=merchant))
    p["merchant viewer"] = scope.principal_for_user(
        make_user(username="m-viewer", merchant=merchant, role=Membership.Role.VIEWER)
    )
    p["staff"] = scope.principal_for_user(make_user(username="staff", is_staff=True))
    client = provisioning_client_create(tenant=o["tenants:t1"], actor=SYSTEM).obj
    p["provisioning client"] = scope.principal_for_provisioning_client(client)
    lost = make_user(username="no-place", merchant=merchant)
    lost.membership.delete()
    lost.refresh_from_db()
    p["user without membership"] = scope.principal_for_user(lost)
    gone = make_user(username="gone", merchant_aggregator=ma)
    gone.is_active = False
    gone.save()
    p["inactive user"] = scope.principal_for_user(gone)
    gone_staff = make_user(username="gone-staff", is_staff=True)
    gone_staff.is_active = False
    gone_staff.save()
    p["inactive staff"] = scope.principal_for_user(gone_staff)


@pytest.fixture(scope="module")
def tree(django_db_setup, django_db_blocker) -> Tree:
    # Built once for the module in a transaction that is rolled back at its end; each test
    # runs in a savepoint inside it. The hasher only makes the ~30 credentials quick.
    fast = override_settings(PASSWORD_HASHERS=FAST_HASHERS)
    with django_db_blocker.unblock(), fast, transaction.atomic():
        built = Tree()
        build_tree(built)
        build_callers(built)
        yield built
        transaction.set_rollback(True)


# Where each caller stands (None: nowhere) and whether it reaches Cloud API applications.
CALLERS: dict[str, tuple[str | None, bool]] = {
    "store POS": (HOME_STORE, False),
    "MA application": (HOME_MA, True),
    "MA admin": (HOME_MA, True),
    "MA viewer": (HOME_MA, True),
    "merchant admin": (HOME_MERCHANT, False),
    "merchant viewer": (HOME_MERCHANT, False),
    "staff": ("", True),
    "provisioning client": ("t1", True),
    "user without membership": (None, False),
    "inactive user": (None, False),
    "inactive staff": (None, False),
}

SELECTORS = {
    "tenants": scope.tenants_in_scope,
    "merchant_aggregators": scope.merchant_aggregators_in_scope,
    "merchants": scope.merchants_in_scope,
    "stores": scope.stores_in_scope,
    "pos": scope.pos_in_scope,
    "cloud_applications": scope.cloud_applications_in_scope,
    "devices": selectors.devices_in_scope,
    "device_sessions": selectors.device_sessions_in_scope,
}


def related(node: str, path: str) -> bool:
    """Is `path` the node itself, above it, or beneath it?"""
    if node == "":
        return True
    return path == node or path.startswith(f"{node}.") or node.startswith(f"{path}.")


def expected_paths(tree: Tree, caller: str, kind: str) -> set[str]:
    node, reaches_applications = CALLERS[caller]
    if node is None or (kind == "cloud_applications" and not reaches_applications):
        return set()
    return {path for path in tree.ids[kind] if related(node, path)}


@pytest.mark.django_db
@pytest.mark.parametrize("kind", list(SELECTORS))
@pytest.mark.parametrize("caller", list(CALLERS))
def test_each_caller_reaches_exactly_its_part_of_the_tree(tree, caller, kind):
    principal = tree.principals[caller]
    reached = set(SELECTORS[kind](principal=principal).values_list("pk", flat=True))
    paths = {path for path, pk in tree.ids[kind].items() if pk in reached}
    assert paths == expected_paths(tree, caller, kind)
    # Nothing else either: no object outside the tree (none exist) and no duplicate rows.
    assert len(reached) == SELECTORS[kind](principal=principal).count()


@pytest.mark.django_db
def test_the_expected_reach_is_what_the_scenario_says(tree):
    """The table above, spelled out for the home store's POS and the merchant user."""
    assert expected_paths(tree, "store POS", "devices") == {HOME_STORE}
    assert expected_paths(tree, "store POS", "merchants") == {HOME_MERCHANT}
    assert expected_paths(tree, "store POS", "tenants") == {"t1"}
    assert expected_paths(tree, "merchant admin", "stores") == {"t1.a1.m1.s1", "t1.a1.m1.s2"}
    assert expected_paths(tree, "merchant admin", "merchant_aggregators") == {HOME_MA}
    assert len(expected_paths(tree, "MA admin", "devices")) == 4
    assert len(expected_paths(tree, "provisioning client", "devices")) == 8
    assert len(expected_paths(tree, "staff", "devices")) == 16


OUTSIDERS = [
    ("store POS", "devices", "t1.a1.m1.s2"),
    ("store POS", "pos", "t1.a1.m1.s2"),
    ("store POS", "cloud_applications", "t1.a1"),
    ("merchant admin", "devices", "t1.a1.m2.s1"),
    ("merchant viewer", "merchants", "t1.a1.m2"),
    ("merchant admin", "cloud_applications", "t1.a1"),
    ("MA admin", "devices", "t1.a2.m1.s1"),
    ("MA application", "device_sessions", "t1.a2.m1.s1"),
    ("MA application", "cloud_applications", "t1.a2"),
    ("MA viewer", "merchant_aggregators", "t1.a2"),
    ("provisioning client", "devices", "t2.a1.m1.s1"),
    ("provisioning client", "tenants", "t2"),
    ("provisioning client", "pos", "t2.a2.m2.s2"),
    ("user without membership", "devices", HOME_STORE),
    ("inactive user", "devices", HOME_STORE),
    ("inactive staff", "tenants", "t1"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("caller", "kind", "path"), OUTSIDERS)
def test_an_object_outside_the_scope_is_not_found_by_id(tree, caller, kind, path):
    principal = tree.principals[caller]
    assert not SELECTORS[kind](principal=principal).filter(pk=tree.ids[kind][path]).exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("caller", "can_write", "level"),
    [
        ("store POS", False, Level.STORE),
        ("MA application", False, Level.MERCHANT_AGGREGATOR),
        ("MA admin", True, Level.MERCHANT_AGGREGATOR),
        ("MA viewer", False, Level.MERCHANT_AGGREGATOR),
        ("merchant admin", True, Level.MERCHANT),
        ("merchant viewer", False, Level.MERCHANT),
        ("staff", True, Level.PLATFORM),
        ("provisioning client", True, Level.TENANT),
        ("user without membership", False, Level.NOTHING),
        ("inactive user", False, Level.NOTHING),
        ("inactive staff", False, Level.NOTHING),
    ],
)
def test_each_caller_has_its_level_and_write_right(tree, caller, can_write, level):
    principal = tree.principals[caller]
    assert principal.level == level
    assert principal.can_write is can_write


@pytest.mark.django_db
def test_a_credential_has_the_same_principal_whatever_way_it_is_looked_up(tree):
    pos = tree.objects[f"pos:{HOME_STORE}"]
    app = tree.objects[f"cloud_applications:{HOME_MA}"]
    assert scope.principal_for_application(pos.application) == tree.principals["store POS"]
    assert scope.principal_for_application(app.application) == tree.principals["MA application"]
    assert tree.principals["store POS"].label == f"pos:{pos.application.client_id}"


def test_a_credential_read_as_one_row_has_the_principal_it_has_as_objects(tree):
    o = tree.objects
    pos, app = o[f"pos:{HOME_STORE}"], o[f"cloud_applications:{HOME_MA}"]
    client = provisioning_client_create(tenant=o["tenants:t1"], actor=SYSTEM).obj
    expected = {pos.application: True, app.application: True, client.application: False}
    for application, reaches_terminals in expected.items():
        row = application_row_of(application)
        assert scope.principal_from_application_row(row) == scope.principal_for_application(application)
        assert scope.row_reaches_terminals(row) is reaches_terminals


def test_an_application_without_its_role_does_not_reach_terminals_read_as_one_row():
    app = make_cloud_application(complete=False)
    assert not scope.row_reaches_terminals(application_row_of(app.application))


def application_row_of(application) -> dict:
    values = Application.objects.filter(pk=application.pk).values(**scope.application_row_paths()).get()
    return scope.application_row(values)
