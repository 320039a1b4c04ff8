import time

import jwt
import pytest

from connector import tokens
from connector.tokens import InvalidDeviceToken

SESSION = "S" * 32
KEYS = {"k2": "second-signing-secret-that-is-long-enough-for-hs256", "k1": "first-secret-long-enough-for-hs256-use-ok"}


@pytest.fixture(autouse=True)
def jwt_keys(settings):
    settings.CLOUD_CONNECTOR = {**settings.CLOUD_CONNECTOR, "JWT_KEYS": dict(KEYS), "JWT_LIFETIME": 300}


def test_a_token_names_its_session_and_device():
    issued = tokens.device_token_issue(session_id=SESSION, device_id=42)
    claims = tokens.device_token_verify(issued.token, session_id=SESSION)
    assert (claims.session_id, claims.device_id) == (SESSION, 42)
    assert issued.expires_in == 300


def test_the_first_key_signs_and_its_kid_is_in_the_header():
    issued = tokens.device_token_issue(session_id=SESSION, device_id=1)
    assert jwt.get_unverified_header(issued.token)["kid"] == "k2"


def test_a_token_signed_by_an_older_key_still_verifies(settings):
    settings.CLOUD_CONNECTOR = {**settings.CLOUD_CONNECTOR, "JWT_KEYS": {"k1": KEYS["k1"]}}
    old = tokens.device_token_issue(session_id=SESSION, device_id=1).token
    settings.CLOUD_CONNECTOR = {**settings.CLOUD_CONNECTOR, "JWT_KEYS": dict(KEYS)}
    assert tokens.device_token_verify(old, session_id=SESSION).device_id == 1


def test_a_token_of_a_retired_key_is_refused(settings):
    old = tokens.device_token_issue(session_id=SESSION, device_id=1).token
    settings.CLOUD_CONNECTOR = {**settings.CLOUD_CONNECTOR, "JWT_KEYS": {"k1": KEYS["k1"]}}
    with pytest.raises(InvalidDeviceToken):
        tokens.device_token_verify(old, session_id=SESSION)


def test_it_refuses_a_token_for_another_session():
    issued = tokens.device_token_issue(session_id=SESSION, device_id=1)
    with pytest.raises(InvalidDeviceToken, match="another session"):
        tokens.device_token_verify(issued.token, session_id="T" * 32)


def test_it_refuses_an_expired_token():
    issued = tokens.device_token_issue(session_id=SESSION, device_id=1, now=time.time() - 1000)
    with pytest.raises(InvalidDeviceToken, match="expired"):
        tokens.device_token_verify(issued.token, session_id=SESSION)


def test_it_refuses_a_token_signed_with_another_secret():
    forged = jwt.encode(
        {"iss": "cloud-connector", "aud": "cloud-connector/device", "sid": SESSION, "did": 1, "iat": 1, "exp": 2**40},
        "not-the-server-secret-but-long-enough-32b",
        algorithm="HS256",
        headers={"kid": "k2"},
    )
    with pytest.raises(InvalidDeviceToken):
        tokens.device_token_verify(forged, session_id=SESSION)


def test_it_refuses_an_unsigned_token():
    forged = jwt.encode({"sid": SESSION, "did": 1, "exp": 2**40}, None, algorithm="none", headers={"kid": "k2"})
    with pytest.raises(InvalidDeviceToken):
        tokens.device_token_verify(forged, session_id=SESSION)


def test_it_refuses_a_token_with_an_unknown_kid():
    forged = jwt.encode({"sid": SESSION}, KEYS["k1"], algorithm="HS256", headers={"kid": "nope"})
    with pytest.raises(InvalidDeviceToken):
        tokens.device_token_verify(forged, session_id=SESSION)


def test_it_refuses_a_correctly_signed_token_made_for_another_audience():
    other = jwt.encode(
        {"iss": "cloud-connector", "aud": "something-else", "sid": SESSION, "did": 1, "iat": 1, "exp": 2**40},
        KEYS["k2"],
        algorithm="HS256",
        headers={"kid": "k2"},
    )
    with pytest.raises(InvalidDeviceToken):
        tokens.device_token_verify(other, session_id=SESSION)


@pytest.mark.parametrize("token", [None, "", "garbage", "a.b.c"])
def test_it_refuses_absent_or_garbled_tokens(token):
    with pytest.raises(InvalidDeviceToken):
        tokens.device_token_verify(token, session_id=SESSION)
