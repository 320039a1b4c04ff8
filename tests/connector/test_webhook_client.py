"""The client library's webhook verification (connector/clients/webhooks.py), which the
server also signs with."""

from __future__ import annotations

import hashlib
import hmac
import threading

import pytest

from connector.clients.webhooks import Deduplicator, parse_header, sign, verify

SECRET = "whsec_abc"
BODY = b'{"id":"e1","type":"device.online"}'
T = 1_790_000_000


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body():
    expected = hmac.new(SECRET.encode(), f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, BODY, T) == f"t={T},v1={expected}"


def test_a_signed_body_verifies_within_the_tolerance_only():
    header = sign(SECRET, BODY, T)
    assert verify(SECRET, header, BODY, now=T)
    assert verify(SECRET, header, BODY, now=T + 300)
    assert verify(SECRET, header, BODY, now=T - 300)  # the sender's clock ahead of ours
    assert not verify(SECRET, header, BODY, now=T + 301)  # a replay
    assert not verify(SECRET, header, BODY, tolerance=10, now=T + 11)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        f"t={T}",
        f"v1={'0' * 64}",
        f"t=abc,v1={'0' * 64}",
        f"t={T},v1=",
        f"t={T},v0={sign(SECRET, BODY, T).split('v1=')[1]}",
        f"t={T},v1={'0' * 64}",
        f"t={'9' * 40},v1={'0' * 64}",
    ],
)
def test_a_malformed_or_wrong_header_is_refused(header):
    assert not verify(SECRET, header, BODY, now=T)


def test_a_changed_body_or_another_secret_is_refused():
    header = sign(SECRET, BODY, T)
    assert not verify(SECRET, header, BODY + b" ", now=T)
    assert not verify("whsec_other", header, BODY, now=T)


def test_any_of_several_signatures_may_match_during_a_rotation():
    old, new = sign("whsec_old", BODY, T), sign("whsec_new", BODY, T)
    header = f"{old},v1={new.split('v1=')[1]}"
    assert parse_header(header)[0] == T and len(parse_header(header)[1]) == 2
    assert verify("whsec_old", header, BODY, now=T) and verify("whsec_new", header, BODY, now=T)
    assert not verify("whsec_third", header, BODY, now=T)


def test_the_deduplicator_remembers_a_bounded_number_of_ids():
    seen = Deduplicator(capacity=3)
    assert [seen.seen(i) for i in ("a", "b", "a", "c", "d")] == [False, False, True, False, False]
    assert len(seen) == 3
    assert seen.seen("a")  # refreshed by its repeat: "b" was the oldest and is forgotten
    assert not seen.seen("b")
    with pytest.raises(ValueError):
        Deduplicator(capacity=0)


def test_the_deduplicator_lets_one_of_many_threads_through():
    seen = Deduplicator()
    firsts: list[bool] = []
    threads = [threading.Thread(target=lambda: firsts.append(not seen.seen("same"))) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert firsts.count(True) == 1
