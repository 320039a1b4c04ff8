"""The CLOUD_CONNECTOR settings object (connector/conf.py): defaults written once, values
reloaded when a test overrides the setting, typos and wrong types refused, and the
environment's values reaching it through portal/settings.py."""

from __future__ import annotations

import json
import re

import pytest
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from connector import tokens
from connector.conf import ConnectorSettings, check_connector_settings, connector_settings
from portal.terminal_config import public_ws_base
from tests.test_settings import run

KEYS = {"dev": "k" * 40}


def test_a_key_left_out_takes_its_default_from_the_settings_object(settings):
    settings.CLOUD_CONNECTOR = {"JWT_KEYS": KEYS}
    assert connector_settings.GRACE_PERIOD == 60
    assert connector_settings.JWT_LIFETIME == 300
    assert connector_settings.MAX_MESSAGE_SIZE == 1024 * 1024
    assert connector_settings.SSL_PROFILE == "INGETRUST"
    assert connector_settings.ALLOWED_ORIGINS == []
    assert connector_settings.JWT_KEYS == KEYS


def test_every_key_has_a_default_of_its_declared_type():
    defaults = ConnectorSettings()
    for name, expected in {
        "JWT_LIFETIME": int,
        "GRACE_PERIOD": int,
        "REGISTRATION_TIMEOUT": float,
        "PING_TIMEOUT": float,
        "ALLOWED_ORIGINS": list,
        "PUBLIC_WS_URL": str,
        "MAX_SESSION_SOCKETS_PER_CREDENTIAL": int,
    }.items():
        assert isinstance(getattr(defaults, name), expected), name


def test_an_override_is_read_at_once_and_undone_when_it_ends():
    with override_settings(CLOUD_CONNECTOR={**django_settings.CLOUD_CONNECTOR, "GRACE_PERIOD": 7}):
        assert connector_settings.GRACE_PERIOD == 7
    assert connector_settings.GRACE_PERIOD == 60


def test_the_settings_fixture_reloads_the_values_the_code_reads(settings):
    settings.CLOUD_CONNECTOR = {
        **settings.CLOUD_CONNECTOR,
        "JWT_LIFETIME": 42,
        "PUBLIC_WS_URL": "wss://cc.example.com/",
    }
    assert tokens.device_token_issue(session_id="s", device_id=1).expires_in == 42
    assert public_ws_base(request=None) == "wss://cc.example.com"


def test_a_misspelt_key_is_refused_with_the_key_it_resembles():
    with override_settings(CLOUD_CONNECTOR={"JWT_KEYS": KEYS, "GRACE_PERIOUD": 5}):
        refusal = "CLOUD_CONNECTOR['GRACE_PERIOUD'] is not a Cloud Connector setting; did you mean 'GRACE_PERIOD'?"
        with pytest.raises(ImproperlyConfigured, match=re.escape(refusal)):
            _ = connector_settings.GRACE_PERIOD


def test_a_misspelt_key_fails_the_system_check():
    with override_settings(CLOUD_CONNECTOR={"JWT_KEYS": KEYS, "MAX_LISTENER_PER_CREDENTIAL": 5}):
        [error] = check_connector_settings()
        assert error.id == "connector.E001"
        assert "MAX_LISTENER_PER_CREDENTIAL" in error.msg
        with pytest.raises(SystemCheckError, match="connector.E001"):
            call_command("check")
    assert check_connector_settings() == []


@pytest.mark.parametrize(
    ("key", "value", "wanted"),
    [
        ("GRACE_PERIOD", "60", "int, not str"),
        ("MAX_MESSAGE_SIZE", True, "int, not bool"),
        ("MAX_MESSAGE_SIZE", 1000.5, "int, not float"),
        ("ALLOWED_ORIGINS", "https://pos.example.com", "list, not str"),
        ("JWT_KEYS", ["dev"], "dict, not list"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused(key, value, wanted):
    with override_settings(CLOUD_CONNECTOR={"JWT_KEYS": KEYS, key: value}):
        with pytest.raises(ImproperlyConfigured, match=re.escape(f"CLOUD_CONNECTOR[{key!r}] must be {wanted}")):
            getattr(connector_settings, key)


def test_a_refused_value_is_not_written_into_the_error():
    secret = "j" * 40
    with override_settings(CLOUD_CONNECTOR={"JWT_KEYS": [("k1", secret)]}):
        with pytest.raises(ImproperlyConfigured) as refusal:
            _ = connector_settings.JWT_KEYS
    assert secret not in str(refusal.value)


def test_a_whole_number_is_a_duration_and_a_tuple_a_list():
    with override_settings(
        CLOUD_CONNECTOR={"JWT_KEYS": KEYS, "REGISTRATION_TIMEOUT": 3, "ALLOWED_ORIGINS": ("https://a.example",)}
    ):
        assert connector_settings.REGISTRATION_TIMEOUT == 3.0
        assert isinstance(connector_settings.REGISTRATION_TIMEOUT, float)
        assert connector_settings.ALLOWED_ORIGINS == ["https://a.example"]


def test_a_setting_that_is_not_a_dict_is_refused():
    with override_settings(CLOUD_CONNECTOR=[("GRACE_PERIOD", 5)]):
        with pytest.raises(ImproperlyConfigured, match="CLOUD_CONNECTOR must be a dict, not list"):
            _ = connector_settings.GRACE_PERIOD


READ = """
import json, django
django.setup()
from django.conf import settings
from connector.conf import connector_settings as cc
print(json.dumps({
    "keys": sorted(settings.CLOUD_CONNECTOR),
    "values": {name: getattr(cc, name) for name in ("GRACE_PERIOD", "ALLOWED_ORIGINS", "SSL_PROFILE", "NODE_TIMEOUT")},
}))
"""


def read_in_a_fresh_process(**variables: str) -> dict:
    process = run(["-c", READ], **variables)
    assert process.returncode == 0, process.stderr
    return json.loads(process.stdout.strip().splitlines()[-1])


def test_the_environment_sets_the_values_it_names_and_leaves_the_rest_to_the_defaults(tmp_path):
    profile = tmp_path / "ssl-profile"
    profile.write_text("OTHERTRUST\n")
    read = read_in_a_fresh_process(
        CC_GRACE_PERIOD="7",
        CC_ALLOWED_ORIGINS=" https://pos.example.com, https://till.example.com ,",
        CC_SSL_PROFILE_FILE=str(profile),
        CC_NODE_TIMEOUT="",  # set empty: the default
    )
    assert read["keys"] == ["ALLOWED_ORIGINS", "GRACE_PERIOD", "JWT_KEYS", "SSL_PROFILE"]
    assert read["values"] == {
        "GRACE_PERIOD": 7,
        "ALLOWED_ORIGINS": ["https://pos.example.com", "https://till.example.com"],
        "SSL_PROFILE": "OTHERTRUST",
        "NODE_TIMEOUT": 30,
    }


def test_with_no_environment_the_process_reads_the_defaults():
    read = read_in_a_fresh_process()
    assert read["keys"] == ["JWT_KEYS"]
    assert read["values"] == {"GRACE_PERIOD": 60, "ALLOWED_ORIGINS": [], "SSL_PROFILE": "INGETRUST", "NODE_TIMEOUT": 30}
