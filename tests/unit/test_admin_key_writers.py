"""The admin page's key writer for Kubernetes (gateway_kit.admin.key_writers.SecretKeys) against a fake API server
(tests/fake_kube_api.py: HTTPS, a bearer token, a conditional PUT), and the keys file writer beside it."""

from __future__ import annotations

import json

import pytest
from fake_kube_api import certificate, running_kube_api

from gateway_kit import keys
from gateway_kit.admin.key_writers import ATTEMPTS, KeysFile, SecretKeys, chosen

NAME = "gw-mlflow-gateway-client-keys"


@pytest.fixture
def api(tmp_path):
    with running_kube_api(tmp_path / "api", "ai", NAME, '{"keys": []}') as api:
        yield api


def writer(api, **environ) -> SecretKeys:
    host, port = api.url.removeprefix("https://").split(":")
    env = {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port, **environ}
    return SecretKeys.in_cluster(NAME, env, account=api.account)


def test_an_added_key_is_in_the_secrets_keys_json_as_the_replicas_read_it(api, tmp_path):
    w = writer(api)
    key = w.add("team-new")
    assert api.calls == [("GET", 200), ("PUT", 200)]
    assert key.startswith("gwk_") and key not in api.keys_text()  # only the hash is stored
    mounted = tmp_path / "keys.json"  # as the kubelet writes the Secret's keys.json into every replica
    mounted.write_text(api.keys_text())
    assert keys.KeyStore(mounted).client_of(key) == "team-new"
    assert [e["client"] for e in w.entries()] == ["team-new"]


def test_a_write_that_meets_another_writer_reads_again_and_keeps_both_changes(api):
    api.interfere = 2  # the first two PUTs carry a resourceVersion someone else has moved on from
    w = writer(api)
    key = w.add("team-new")
    clients = sorted(e["client"] for e in api.keys())
    assert clients == ["other-writer", "other-writer", "team-new"]
    assert keys.digest(key) in {e["sha256"] for e in api.keys()}
    assert [c for c in api.calls if c[0] == "PUT"] == [("PUT", 409), ("PUT", 409), ("PUT", 200)]


def test_a_secret_that_keeps_changing_is_left_as_the_other_writer_left_it(api):
    api.interfere = ATTEMPTS
    with pytest.raises(keys.KeysFileError, match=f"changed {ATTEMPTS} times .* nothing was changed"):
        writer(api).add("team-new")
    assert {e["client"] for e in api.keys()} == {"other-writer"}


def test_revoke_removes_one_key_by_prefix_and_reports_none_found_without_writing(api):
    w = writer(api)
    first, second = w.add("team-a"), w.add("team-a")
    assert w.revoke("team-a", first[: keys.SHOWN]) == 1
    assert [e["prefix"] for e in api.keys()] == [second[: keys.SHOWN]]
    puts = len([c for c in api.calls if c[0] == "PUT"])
    assert w.revoke("team-a", first[: keys.SHOWN]) == 0
    assert len([c for c in api.calls if c[0] == "PUT"]) == puts  # nothing to change: no write


def test_other_data_of_the_secret_is_kept(api):
    api.data["README"] = "aGVsbG8="
    writer(api).add("team-a")
    assert api.data["README"] == "aGVsbG8="


def test_a_missing_secret_says_how_to_create_it(tmp_path):
    with running_kube_api(tmp_path / "api", "ai", NAME, None) as api:
        with pytest.raises(keys.KeysFileError) as e:
            writer(api).entries()
    assert f"the Secret ai/{NAME} does not exist" in str(e.value)
    assert f"kubectl -n ai create secret generic {NAME} --from-literal=keys.json=" in str(e.value)


def test_a_refused_token_names_the_role(api):
    (api.account / "token").write_text("someone-elses-token")
    with pytest.raises(keys.KeysFileError, match=r"refused the page's service account \(HTTP 401\).*Role"):
        writer(api).entries()


def test_a_secret_that_is_not_a_keys_file_is_an_error_worded_for_the_user(api):
    api.data["keys.json"] = "bm90IGpzb24="  # "not json"
    with pytest.raises(keys.KeysFileError, match=f"the Secret ai/{NAME}, keys.json: not a gateway keys file"):
        writer(api).entries()


def test_an_untrusted_api_server_is_not_written_to(api, tmp_path):
    (tmp_path / "other").mkdir()
    other_ca, _ = certificate(tmp_path / "other")  # another server's certificate: not this one's CA
    (api.account / "ca.crt").write_bytes(other_ca.read_bytes())
    with pytest.raises(keys.KeysFileError, match="did not answer"):
        writer(api).add("team-a")
    assert api.keys() == []


def test_outside_a_pod_the_writer_says_what_is_missing(tmp_path):
    with pytest.raises(keys.KeysFileError, match="no service account at"):
        SecretKeys.in_cluster(NAME, {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, account=tmp_path / "none")
    (tmp_path / "sa").mkdir()
    (tmp_path / "sa" / "namespace").write_text("ai")
    with pytest.raises(keys.KeysFileError, match="KUBERNETES_SERVICE_HOST is not set"):
        SecretKeys.in_cluster(NAME, {}, account=tmp_path / "sa")


def test_without_a_secret_name_the_page_writes_the_keys_file(tmp_path):
    path = tmp_path / "keys.json"
    w = chosen("", path, {})
    assert isinstance(w, KeysFile)
    key = w.add("team-a")
    assert keys.KeyStore(path).client_of(key) == "team-a"
    assert w.revoke("team-a") == 1 and json.loads(path.read_text())["keys"] == []
