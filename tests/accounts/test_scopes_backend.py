"""CredentialScopes: a credential's scopes follow from what it is."""

from __future__ import annotations

import pytest
from django.conf import settings
from oauth2_provider.generators import generate_client_id
from oauth2_provider.scopes import get_scopes_backend

from accounts import services
from accounts.credentials import SCOPE_CLOUD_CONNECTOR, SCOPE_PROVISIONING
from accounts.models import Application
from accounts.oauth import CredentialScopes, credential_refusal, credential_scopes
from accounts.scope import SYSTEM
from tests.factories import TenantFactory, make_cloud_application, make_pos

pytestmark = pytest.mark.django_db


def both(application) -> tuple[list[str], list[str]]:
    backend = CredentialScopes()
    return backend.get_available_scopes(application=application), backend.get_default_scopes(application=application)


def test_it_is_the_configured_scopes_backend():
    assert isinstance(get_scopes_backend(), CredentialScopes)


def test_all_scopes_are_the_two_of_the_contract():
    assert CredentialScopes().get_all_scopes() == settings.OAUTH2_PROVIDER["SCOPES"]
    assert set(CredentialScopes().get_all_scopes()) == {SCOPE_CLOUD_CONNECTOR, SCOPE_PROVISIONING}


def test_a_pos_has_cloud_connector_by_default_and_nothing_else():
    assert both(make_pos().application) == ([SCOPE_CLOUD_CONNECTOR], [SCOPE_CLOUD_CONNECTOR])


def test_a_complete_cloud_api_application_has_cloud_connector():
    assert both(make_cloud_application().application) == ([SCOPE_CLOUD_CONNECTOR], [SCOPE_CLOUD_CONNECTOR])


@pytest.mark.parametrize("field", ["services", "grant_types", "roles"])
def test_a_cloud_api_application_lacking_one_requirement_has_no_scope(field):
    app = make_cloud_application()
    services.cloud_application_update(app=app, actor=SYSTEM, **{field: []})
    assert both(app.application) == ([], [])
    assert "lacks" in credential_refusal(application=app.application, domain=app.merchant_aggregator.tenant.domain)


def test_a_provisioning_client_has_provisioning():
    issued = services.provisioning_client_create(tenant=TenantFactory(), actor=SYSTEM)
    assert both(issued.obj.application) == ([SCOPE_PROVISIONING], [SCOPE_PROVISIONING])


def test_no_application_has_no_scope():
    assert both(None) == ([], [])


@pytest.mark.parametrize("kind", [Application.Kind.POS, Application.Kind.CLOUD_API, Application.Kind.PROVISIONING])
def test_an_application_whose_owner_is_missing_has_no_scope_and_is_refused(kind):
    tenant = TenantFactory()
    orphan = Application.objects.create(
        tenant=tenant,
        kind=kind,
        name="orphan",
        client_id=generate_client_id(),
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_CLIENT_CREDENTIALS,
    )
    assert both(orphan) == ([], [])
    assert credential_refusal(application=orphan, domain=tenant.domain) == "The credential is not usable."


def test_the_kind_decides_not_a_similar_owner():
    # A POS credential whose application claims another kind gets nothing from the POS.
    pos = make_pos()
    Application.objects.filter(pk=pos.application_id).update(kind=Application.Kind.PROVISIONING)
    pos.application.refresh_from_db()
    assert credential_scopes(pos.application) == []


def test_the_refusal_names_the_domain_mismatch_first():
    pos = make_pos()
    assert credential_refusal(application=pos.application, domain="elsewhere") == (
        "The client is not registered in this domain."
    )
    assert credential_refusal(application=pos.application, domain=None) is not None
    assert credential_refusal(application=pos.application, domain=pos.application.tenant.domain) is None
