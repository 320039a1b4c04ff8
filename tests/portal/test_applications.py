"""Cloud API applications: the seed's "Developer Application Credentials" steps."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.hashers import check_password
from django.urls import reverse
from oauth2_provider.models import AccessToken

from accounts.models import CloudApplication
from tests.factories import make_cloud_application
from tests.portal.conftest import client_for

pytestmark = pytest.mark.django_db

COMPLETE = {"services": ["retail-api"], "grant_types": ["client_credentials"], "roles": ["pos-terminal"]}


def shown_secret(body: str) -> str:
    return re.search(r'<code id="client-secret">([^<]+)</code>', body).group(1)


def test_an_aggregator_user_creates_an_application_and_sees_its_key_once(world):
    client = client_for(world.ma_admin)
    response = client.post(reverse("portal:application_create"), {"name": "Till software"})
    body = response.content.decode()
    app = CloudApplication.objects.get(name="Till software")
    assert app.merchant_aggregator == world.ma
    assert app.application.client_id in body
    assert check_password(shown_secret(body), app.application.client_secret)
    assert "it will not be shown again" in body
    assert "no-store" in response["Cache-Control"]
    assert "It cannot reach Cloud Connector until it has" in body
    detail = client.get(reverse("portal:application_detail", args=[app.pk])).content.decode()
    assert shown_secret(body) not in detail


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "This field is required."),
        ("y" * 101, "at most 100 characters"),
        ("acme pos CLOUD", "Acme Aggregation already has an application called “acme pos CLOUD”"),
    ],
)
def test_the_application_form_shows_its_errors_inline(world, name, message):
    client = client_for(world.ma_admin)
    response = client.post(reverse("portal:application_create"), {"name": name})
    assert message in response.content.decode()
    assert world.ma.applications.count() == 1


@pytest.fixture
def draft(world) -> CloudApplication:
    """An application of the aggregator as it is created: no service, grant or role yet."""
    return make_cloud_application(merchant_aggregator=world.ma, name="Draft", complete=False)


def test_the_configuration_page_has_the_seeds_sections_and_says_what_is_missing(world, draft):
    client = client_for(world.ma_admin)
    page = client.get(reverse("portal:application_detail", args=[draft.pk])).content.decode()
    sections = ("<legend>API</legend>", "Credentials &amp; Security › Credentials", "Security › Roles")
    for section in sections:
        assert section in page
    for label in ("Retail API", "Client Credentials Grant", "Point-of-sale Terminal"):
        assert label in page
    assert "This application cannot reach Cloud Connector yet." in page
    assert "the Retail API service, the Client Credentials Grant, the Point-of-sale Terminal role" in page


def test_assigning_the_service_grant_and_role_makes_the_application_ready(world, draft):
    client = client_for(world.ma_admin)
    url = reverse("portal:application_detail", args=[draft.pk])
    response = client.post(url, {"name": draft.name, "services": ["retail-api"]})
    assert response["Location"] == url
    page = client.get(url).content.decode()
    assert "the Client Credentials Grant, the Point-of-sale Terminal role" in page
    client.post(url, {"name": draft.name, **COMPLETE})
    draft.refresh_from_db()
    assert draft.missing_for_cloud_connector() == []
    assert "Ready for Cloud Connector." in client.get(url).content.decode()


def test_the_configuration_form_refuses_unknown_values_and_bad_names(world, draft):
    client = client_for(world.ma_admin)
    url = reverse("portal:application_detail", args=[draft.pk])
    response = client.post(url, {"name": "", "services": ["billing-api"]})
    body = response.content.decode()
    assert "This field is required." in body
    assert "Select a valid choice. billing-api is not one of the available choices." in body
    make_cloud_application(merchant_aggregator=world.ma, name="Second")
    assert (
        "There is already an application called “second” here" in client.post(url, {"name": "second"}).content.decode()
    )
    draft.refresh_from_db()
    assert draft.services == [] and draft.name == "Draft"


def test_removing_what_cloud_connector_needs_revokes_the_applications_tokens(world):
    app = world.app
    assert AccessToken.objects.filter(application=app.application).exists()  # the world's app_token
    client = client_for(world.ma_admin)
    client.post(reverse("portal:application_detail", args=[app.pk]), {"name": app.name, "services": ["retail-api"]})
    assert not AccessToken.objects.filter(application=app.application).exists()


def test_rotating_an_application_key_shows_the_new_key_once(world):
    client = client_for(world.ma_admin)
    url = reverse("portal:application_rotate", args=[world.app.pk])
    assert "The current key stops working at once" in client.get(url).content.decode()
    body = client.post(url).content.decode()
    world.app.application.refresh_from_db()
    assert check_password(shown_secret(body), world.app.application.client_secret)


def test_deleting_an_application_asks_first_and_revokes_its_tokens(world):
    client = client_for(world.ma_admin)
    application = world.app.application
    assert AccessToken.objects.filter(application=application).exists()  # the world's app_token
    url = reverse("portal:application_delete", args=[world.app.pk])
    assert "every token issued to it is revoked" in client.get(url).content.decode()
    assert client.post(url)["Location"] == reverse("portal:application_list")
    assert not CloudApplication.objects.filter(pk=world.app.pk).exists()
    assert not AccessToken.objects.filter(application_id=application.pk).exists()


def test_the_empty_application_list_says_what_to_do(world):
    world.app.delete()
    page = client_for(world.ma_admin).get(reverse("portal:application_list")).content.decode()
    assert "No applications yet." in page and "Create an application" in page
