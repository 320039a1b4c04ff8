"""portal/settings.py is read at import, so each case runs Django in a subprocess with an
explicit environment and reads back what it configured."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STRONG_KEY = "k" * 20 + "-production-secret-key-0123456789"
JWT_KEY = "j" * 16 + "-device-token-signing-key-0123456789"
# What production needs besides SECRET_KEY (docs/deploy.md).
PRODUCTION = {
    "DEBUG": "0",
    "SECRET_KEY": STRONG_KEY,
    "CC_JWT_KEYS": f"k1:{JWT_KEY}",
    "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
}

DUMP = """
import json, django
django.setup()
from django.conf import settings as s
from connector.conf import connector_settings as cc
print(json.dumps({
    "DEBUG": s.DEBUG,
    "ENGINE": s.DATABASES["default"]["ENGINE"],
    "DB": {k: s.DATABASES["default"].get(k) for k in ("NAME", "HOST", "PORT", "USER")},
    "LAYER": s.CHANNEL_LAYERS["default"]["BACKEND"],
    "LAYER_HOSTS": s.CHANNEL_LAYERS["default"].get("CONFIG", {}).get("hosts"),
    "ALLOWED_HOSTS": s.ALLOWED_HOSTS,
    "SECRET_KEY": s.SECRET_KEY,
    "SESSION_COOKIE_SECURE": s.SESSION_COOKIE_SECURE,
    "CSRF_COOKIE_SECURE": s.CSRF_COOKIE_SECURE,
    "SECURE_HSTS_SECONDS": s.SECURE_HSTS_SECONDS,
    "SECURE_SSL_REDIRECT": s.SECURE_SSL_REDIRECT,
    "SECURE_PROXY_SSL_HEADER": s.SECURE_PROXY_SSL_HEADER,
    "JWT_LIFETIME": cc.JWT_LIFETIME,
    "JWT_KEYS": cc.JWT_KEYS,
    "SWEEP_INTERVAL": cc.SWEEP_INTERVAL,
    "WEBHOOK_RETRY_HOURS": cc.WEBHOOK_RETRY_HOURS,
    "EMAIL_BACKEND": s.EMAIL_BACKEND,
    "THROTTLE_RATES": s.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"],
    "MIDDLEWARE": s.MIDDLEWARE,
}))
"""


def clean_env(**variables: str) -> dict[str, str]:
    """Nothing of the test process's environment (no DATABASE_URL, REDIS_URL, DEBUG...)."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        **variables,
    }


def run(args: list[str], **variables: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=clean_env(**variables), capture_output=True, text=True, timeout=120
    )


def configured(**variables: str) -> dict:
    process = run(["-c", DUMP], **variables)
    assert process.returncode == 0, process.stderr
    return json.loads(process.stdout.strip().splitlines()[-1])


def refusal(**variables: str) -> str:
    """The error that stops Django from starting."""
    process = run(["-c", DUMP], **variables)
    assert process.returncode != 0, process.stdout
    return process.stderr.strip().splitlines()[-1]


def test_the_embedded_default_boots_with_no_environment():
    settings = configured()
    assert settings["DEBUG"] is True
    assert settings["ENGINE"] == "django.db.backends.sqlite3"
    assert settings["DB"]["NAME"] == str(ROOT / "db.sqlite3")
    assert settings["LAYER"] == "channels.layers.InMemoryChannelLayer"
    assert "127.0.0.1" in settings["ALLOWED_HOSTS"]
    assert len(settings["SECRET_KEY"]) >= 32
    assert settings["SESSION_COOKIE_SECURE"] is False


def test_manage_py_check_passes_with_no_environment():
    process = run(["manage.py", "check"])
    assert process.returncode == 0, process.stderr
    assert "System check identified no issues" in process.stdout


def test_production_mode_refuses_to_start_without_a_secret_key():
    assert refusal(DEBUG="0") == "django.core.exceptions.ImproperlyConfigured: SECRET_KEY must be set when DEBUG is off"


def test_production_mode_refuses_a_weak_secret_key():
    assert "SECRET_KEY is too weak for production" in refusal(DEBUG="false", SECRET_KEY="short")
    assert "SECRET_KEY is too weak for production" in refusal(DEBUG="false", SECRET_KEY="django-insecure-" + "x" * 40)


def test_production_mode_turns_on_secure_cookies_hsts_and_the_proxy_header():
    settings = configured(**PRODUCTION)
    assert settings["DEBUG"] is False
    assert settings["SECRET_KEY"] == STRONG_KEY
    assert settings["SESSION_COOKIE_SECURE"] is True
    assert settings["CSRF_COOKIE_SECURE"] is True
    assert settings["SECURE_HSTS_SECONDS"] == 31536000
    assert settings["SECURE_SSL_REDIRECT"] is True
    assert settings["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert settings["ALLOWED_HOSTS"] == []


def test_production_mode_passes_the_deployment_checks():
    process = run(
        ["manage.py", "check", "--deploy", "--fail-level", "ERROR"],
        **PRODUCTION,
        ALLOWED_HOSTS="cc.example.com",
    )
    assert process.returncode == 0, process.stderr + process.stdout
    # Every warning of every app counts; only HSTS preloading is left to the operator, a
    # decision per domain that cannot be undone quickly.
    issues = set(re.findall(r"\(([a-z0-9_]+\.[EW]\d+)\)", process.stdout + process.stderr))
    assert issues <= {"security.W021"}


def test_the_secret_key_may_come_from_a_file(tmp_path):
    key_file = tmp_path / "secret"
    key_file.write_text(STRONG_KEY + "\n")
    production = {**PRODUCTION, "SECRET_KEY_FILE": str(key_file)}
    del production["SECRET_KEY"]
    assert configured(**production)["SECRET_KEY"] == STRONG_KEY


def test_database_url_switches_to_postgresql():
    settings = configured(DATABASE_URL="postgres://cc:pw@db.example.com:5433/cloudconnector")
    assert settings["ENGINE"] == "django.db.backends.postgresql"
    assert settings["DB"] == {"NAME": "cloudconnector", "HOST": "db.example.com", "PORT": 5433, "USER": "cc"}


def test_redis_url_switches_to_the_redis_channel_layer():
    settings = configured(REDIS_URL="redis://127.0.0.1:6379/3")
    assert settings["LAYER"] == "connector.relay.redis_layer.RedisChannelLayer"  # channels_redis's, restart-proof
    # The read timeout outlasts channels_redis's 5 s blocking pop (redis-py 8 defaults to 5 s).
    assert settings["LAYER_HOSTS"] == [
        {"address": "redis://127.0.0.1:6379/3", "socket_timeout": 15, "max_connections": 2000}
    ]


def test_allowed_hosts_is_a_comma_separated_list():
    settings = configured(**PRODUCTION, ALLOWED_HOSTS=" cc.example.com, api.example.com ,")
    assert settings["ALLOWED_HOSTS"] == ["cc.example.com", "api.example.com"]


@pytest.mark.parametrize(("value", "debug"), [("1", True), ("yes", True), ("ON", True), ("off", False), ("No", False)])
def test_debug_understands_the_usual_booleans(value, debug):
    assert configured(**{**PRODUCTION, "DEBUG": value})["DEBUG"] is debug


def test_a_bad_debug_value_is_a_clear_error():
    assert refusal(DEBUG="maybe") == "django.core.exceptions.ImproperlyConfigured: DEBUG must be a boolean, not 'maybe'"


def test_a_bad_integer_is_a_clear_error():
    assert refusal(CC_JWT_LIFETIME="soon").endswith("CC_JWT_LIFETIME must be an integer, not 'soon'")


def test_durations_may_have_a_fraction_and_nonsense_is_a_clear_error():
    settings = configured(CC_SWEEP_INTERVAL="0.5", CC_WEBHOOK_RETRY_HOURS="24.5")
    assert (settings["SWEEP_INTERVAL"], settings["WEBHOOK_RETRY_HOURS"]) == (0.5, 24.5)
    assert refusal(CC_SWEEP_INTERVAL="soon").endswith("CC_SWEEP_INTERVAL must be a number, not 'soon'")
    assert "CC_LAST_SEEN_INTERVAL must be a finite number of at least 0" in refusal(CC_LAST_SEEN_INTERVAL="nan")


# --- production refuses what only suits development (issue 10, item 13) ----------------------


@pytest.mark.parametrize(
    "key",
    [
        "x" * 20 + "0123456789abcdefghijklmnopqrs",  # 49 characters
        "ab" * 40,  # long, but two different characters
        "django-insecure-" + "0123456789abcdefghijklmnopqrstuvwxyz0123456789",
    ],
)
def test_production_mode_refuses_a_secret_key_that_fails_djangos_own_rule(key):
    error = refusal(**{**PRODUCTION, "SECRET_KEY": key})
    assert "SECRET_KEY is too weak for production: at least 50 characters" in error


def test_production_mode_refuses_to_start_without_dedicated_jwt_keys():
    production = {**PRODUCTION}
    del production["CC_JWT_KEYS"]
    assert "CC_JWT_KEYS must be set when DEBUG is off" in refusal(**production)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (JWT_KEY, "entry 1 is not kid:key"),
        (f"k1:{JWT_KEY},{JWT_KEY}", "entry 2 is not kid:key"),
        (f":{JWT_KEY}", "entry 1 is not kid:key"),
        (f"k 1:{JWT_KEY}", "entry 1 is not kid:key"),
        (f"k1:{JWT_KEY},", "entry 2 is not kid:key"),
        ("k1:short-key", "the key of 'k1' is shorter than 32 bytes"),
        (f"k1:{JWT_KEY},k1:{JWT_KEY}x", "the kid 'k1' appears twice"),
        (f"k1:{STRONG_KEY}", "the key of 'k1' is SECRET_KEY"),
    ],
)
def test_malformed_jwt_keys_are_an_error_not_dropped(keys, message):
    error = refusal(**{**PRODUCTION, "CC_JWT_KEYS": keys})
    assert message in error
    assert JWT_KEY not in error  # key material never in the log


def test_malformed_jwt_keys_are_an_error_in_development_too():
    assert "entry 1 is not kid:key" in refusal(CC_JWT_KEYS="no-colon-here")


def test_jwt_keys_are_read_in_order_with_colons_allowed_in_the_key():
    settings = configured(**{**PRODUCTION, "CC_JWT_KEYS": f" k2:{JWT_KEY}:x , k1.old:{JWT_KEY}"})
    assert list(settings["JWT_KEYS"].items()) == [("k2", f"{JWT_KEY}:x"), ("k1.old", JWT_KEY)]


def test_development_signs_device_tokens_with_the_secret_key_by_default():
    settings = configured()
    assert settings["JWT_KEYS"] == {"dev": settings["SECRET_KEY"]}


@pytest.mark.parametrize(
    "backend",
    [
        None,
        "django.core.mail.backends.console.EmailBackend",
        "django.core.mail.backends.locmem.EmailBackend",
        "django.core.mail.backends.dummy.EmailBackend",
    ],
)
def test_production_mode_refuses_an_email_backend_that_delivers_nothing(backend):
    production = {**PRODUCTION}
    if backend is None:
        del production["EMAIL_BACKEND"]
    else:
        production["EMAIL_BACKEND"] = backend
    assert "EMAIL_BACKEND must be set to a delivering backend" in refusal(**production)


def test_development_prints_mail_on_the_console():
    assert configured()["EMAIL_BACKEND"] == "django.core.mail.backends.console.EmailBackend"


def test_the_login_required_and_csp_middleware_are_installed_in_production():
    middleware = configured(**PRODUCTION)["MIDDLEWARE"]
    assert "portal.login_required.PortalLoginRequiredMiddleware" in middleware
    assert "csp.middleware.CSPMiddleware" in middleware


def test_rate_limits_are_read_from_the_environment():
    rates = configured(TOKEN_RATE_PER_ADDRESS="5/min", API_RATE_PER_CREDENTIAL="100/hour")["THROTTLE_RATES"]
    assert rates["token_address"] == "5/min"
    assert rates["api_credential"] == "100/hour"
    assert rates["token_client"] == "300/min"  # the default
    assert rates["api_address"] == "3000/min"


@pytest.mark.parametrize("rate", ["fast", "0/min", "10/fortnight", "10"])
def test_a_malformed_rate_is_a_clear_error(rate):
    assert f"TOKEN_RATE_PER_CLIENT must be a rate such as 1200/min, not {rate!r}" in refusal(TOKEN_RATE_PER_CLIENT=rate)
