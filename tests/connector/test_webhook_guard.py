"""The webhooks' SSRF guard: the URL check of endpoints (`validate_url`, no DNS) and the
address check of deliveries (`vetted_addresses`)."""

from __future__ import annotations

import ipaddress

import pytest
from django.core.exceptions import ValidationError

from connector.webhooks import guard
from connector.webhooks.guard import AddressNotAllowed, validate_url, vetted_addresses
from connector.webhooks.secrets import SECRET_PREFIX, new_secret

PRIVATE_HOSTS = [
    "127.0.0.1",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.10",
    "169.254.169.254",  # the cloud's metadata service
    "100.64.0.1",  # shared address space (carrier NAT)
    "0.0.0.0",
    "224.0.0.1",
    "240.0.0.1",
    "[::1]",
    "[::]",
    "[fe80::1]",
    "[fec0::1]",  # site-local: deprecated, still routed inside some networks (found by review)
    "[fc00::1]",
    "[ff02::1]",
    "[::ffff:127.0.0.1]",  # IPv4-mapped
    "[::ffff:a9fe:a9fe]",
    "[64:ff9b::a9fe:a9fe]",  # NAT64 of 169.254.169.254
    "[2002:7f00:1::]",  # 6to4 of 127.0.0.1
    "localhost",
    "LocalHost",
    "api.localhost",
]


@pytest.fixture
def production(settings) -> None:
    settings.DEBUG = False
    settings.CLOUD_CONNECTOR = {**settings.CLOUD_CONNECTOR, "WEBHOOK_ALLOW_PRIVATE": False}


def refusal(url: str) -> str:
    with pytest.raises(ValidationError) as caught:
        validate_url(url)
    [message] = caught.value.messages
    return message


@pytest.mark.parametrize("host", PRIVATE_HOSTS)
def test_it_refuses_a_private_host_in_production(production, host):
    assert "private" in refusal(f"https://{host}/hook")


@pytest.mark.parametrize("host", PRIVATE_HOSTS)
def test_it_allows_a_private_host_with_debug(settings, host):
    settings.DEBUG = True
    validate_url(f"http://{host}:8080/hook")


def test_private_receivers_may_be_allowed_without_debug_but_still_over_https(settings):
    settings.DEBUG = False
    settings.CLOUD_CONNECTOR = {**settings.CLOUD_CONNECTOR, "WEBHOOK_ALLOW_PRIVATE": True}
    validate_url("https://10.0.0.5/hook")
    assert "https" in refusal("http://10.0.0.5/hook")


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://hooks.example.com/", "must use https"),
        ("ftp://hooks.example.com/", "starts with https"),
        ("javascript:alert(1)", "valid URL"),
        ("not a url", "valid URL"),
        ("", "Enter a URL"),
        ("https://", "valid URL"),
        ("https://user:pass@hooks.example.com/", "user name or password"),
        ("https://token@hooks.example.com/", "user name or password"),
        ("https://hooks.example.com:99999/", "valid URL"),
        ("https://hooks example.com/", "valid URL"),
        ("https://hooks.example.com/" + "a" * 2000, "at most 2000"),
    ],
)
def test_it_refuses_what_is_not_a_webhook_url_with_a_clear_message(production, url, words):
    assert words in refusal(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/cc?x=1",
        "https://8.8.8.8/",
        "https://[2001:4860:4860::8888]:8443/in",
        "HTTPS://Example.COM",
    ],
)
def test_it_accepts_a_public_https_url(production, url):
    validate_url(url)


def test_odd_spellings_of_loopback_are_read_as_the_c_library_reads_them():
    for spelling in ("127.1", "0x7f.0.0.1", "2130706433", "0177.0.0.1"):
        assert guard.address_literal(spelling) == ipaddress.ip_address("127.0.0.1")
    assert guard.address_literal("hooks.example.com") is None


def test_at_delivery_every_resolved_address_must_be_public(production, monkeypatch):
    answers = {
        "public.example": ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"],
        "mixed.example": ["93.184.215.14", "10.0.0.7"],
        "inside.example": ["192.168.0.2"],
    }
    monkeypatch.setattr(guard, "resolve", lambda host, port: [ipaddress.ip_address(a) for a in answers[host]])
    assert [str(a) for a in vetted_addresses("public.example", 443)] == answers["public.example"]
    for host in ("mixed.example", "inside.example", "localhost"):
        with pytest.raises(AddressNotAllowed, match="address not allowed"):
            vetted_addresses(host, 443)


def test_a_host_that_does_not_resolve_is_a_delivery_error_not_a_crash(production):
    with pytest.raises(AddressNotAllowed, match="cannot resolve"):
        vetted_addresses("no-such-host.invalid", 443)


def test_new_secrets_are_long_random_and_recognisable():
    secrets = {new_secret() for _ in range(100)}
    assert len(secrets) == 100
    assert all(secret.startswith(SECRET_PREFIX) and len(secret) >= len(SECRET_PREFIX) + 43 for secret in secrets)
