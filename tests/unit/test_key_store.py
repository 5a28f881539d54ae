"""Client keys as units: the store a worker keeps, when it rereads the file, and the 401s (injected clock)."""

from __future__ import annotations

import json
import os

import pytest

from gateway_kit import keys
from gateway_kit.keys import ClientKeys, KeyStore
from unit.asgi import Echo, request


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def keys_file(tmp_path):
    return tmp_path / "keys" / "keys.json"


def test_a_new_key_is_known_and_only_its_hash_is_stored(keys_file):
    key = keys.add(keys_file, "team-a")
    assert key.startswith("gwk_") and len(key) == 4 + 43
    assert KeyStore(keys_file).client_of(key) == "team-a"
    stored = keys_file.read_text()
    assert key not in stored
    (entry,) = json.loads(stored)["keys"]
    assert entry["prefix"] == key[:12] and entry["sha256"] == keys.digest(key)


def test_an_added_or_revoked_key_is_seen_after_at_most_one_check_interval(keys_file):
    clock = Clock()
    old = keys.add(keys_file, "team-a")
    store = KeyStore(keys_file, clock=clock)
    new = keys.add(keys_file, "team-b")
    assert keys.revoke(keys_file, "team-a") == 1
    assert store.client_of(new) is None and store.client_of(old) == "team-a"  # not looked again yet
    clock.now += 0.99
    assert store.client_of(new) is None
    clock.now += 0.02
    assert store.client_of(new) == "team-b"
    assert store.client_of(old) is None


def test_revoking_one_key_by_prefix_keeps_the_clients_other_keys(keys_file):
    first, second = keys.add(keys_file, "team-a"), keys.add(keys_file, "team-a")
    assert keys.revoke(keys_file, "team-a", prefix=first[:12]) == 1
    store = KeyStore(keys_file)
    assert store.client_of(first) is None and store.client_of(second) == "team-a"
    assert keys.revoke(keys_file, "nobody") == 0


def test_a_broken_keys_file_keeps_the_keys_loaded_before(keys_file, caplog):
    clock = Clock()
    key = keys.add(keys_file, "team-a")
    store = KeyStore(keys_file, clock=clock)
    keys_file.write_text("{not json")
    os.utime(keys_file, ns=(1, 1))  # a different stamp, whatever the file system's time resolution
    clock.now += 2
    assert store.client_of(key) == "team-a"
    assert "not a gateway keys file" in caplog.text and "keeping the 1 key(s) loaded before" in caplog.text


def test_a_missing_keys_file_refuses_every_key(keys_file, caplog):
    assert KeyStore(keys_file).client_of("gwk_anything") is None
    assert "does not exist" in caplog.text


# ---------------------------------------------------------------- the middleware


def test_a_request_without_a_key_is_a_401_saying_how_to_send_one(keys_file):
    inner = Echo()
    answer = request(ClientKeys(inner, KeyStore(keys_file)), "/v1/chat/completions", {"model": "chat"})
    assert answer.status == 401
    assert answer.headers["www-authenticate"] == 'Bearer realm="gateway"'
    error = answer.json()["error"]
    assert error["type"] == "gateway_key_required" and "Authorization: Bearer <key>" in error["message"]
    assert inner.scopes == []


def test_an_unknown_key_is_a_401_that_never_repeats_the_key(keys_file):
    answer = request(
        ClientKeys(Echo(), KeyStore(keys_file)),
        "/v1/chat/completions",
        {},
        headers={"Authorization": "Bearer sk-proj-not-a-gateway-key"},
    )
    assert answer.status == 401
    assert answer.json()["error"]["type"] == "invalid_gateway_key"
    assert b"sk-proj-not-a-gateway-key" not in answer.body


@pytest.mark.parametrize("header", ["Authorization", "x-api-key"])
def test_a_known_key_goes_on_as_the_client_name_and_no_credential_goes_further(keys_file, header):
    key = keys.add(keys_file, "team-a")
    inner = Echo()
    value = f"Bearer {key}" if header == "Authorization" else key
    answer = request(
        ClientKeys(inner, KeyStore(keys_file)),
        "/gateway/chat/invocations",
        {},
        headers={header: value, "X-Gateway-Client": "someone-else"},
    )
    assert answer.status == 200
    assert inner.header("x-gateway-client") == "team-a"
    assert inner.header("authorization") is None and inner.header("x-api-key") is None


@pytest.mark.parametrize("path", ["/health", "/ready", "/metrics"])
def test_probes_and_the_metrics_scrape_need_no_key(keys_file, path):
    assert request(ClientKeys(Echo(), KeyStore(keys_file)), path, method="GET").status == 200


def test_auth_off_still_strips_credentials():
    inner = Echo()
    request(ClientKeys(inner, None), "/v1/chat/completions", {}, headers={"Authorization": "Bearer sk-x"})
    assert inner.header("authorization") is None
