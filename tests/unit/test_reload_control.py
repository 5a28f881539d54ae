"""A replica's reload requests (gateway_kit.reload.install: POST /-/reload/check and POST /-/reload), in-process.

Who may ask: only a request with the reload token, behind the client keys middleware as in a replica (a client
key opens nothing). The check itself (the start-up checks in a child process) is stood in for here; the stack
tests (tests/stack/test_admin_reload.py) run the real one.
"""

from __future__ import annotations

import signal

import pytest
from fastapi import FastAPI

from unit.asgi import request
from gateway_kit import keys, reload
from gateway_kit.keys import ClientKeys, KeyStore

TOKEN = "0123456789abcdef" * 4


def replica(keys_file, token: str | None) -> ClientKeys:
    app = FastAPI()
    reload.install(app, token, "config.yaml")
    return ClientKeys(app, KeyStore(keys_file))


@pytest.fixture
def keys_file(tmp_path):
    return tmp_path / "keys.json"


@pytest.fixture
def checks(monkeypatch):
    """The check stood in for: answers a hash for config.yaml, or a refusal for refused.yaml."""
    asked = []

    def check(config: str, capture: bool = False) -> reload.Checked:
        asked.append((config, capture))
        return reload.Checked("3b9f0c2a7e41")

    monkeypatch.setattr(reload, "check", check)
    return asked


@pytest.mark.parametrize("path", [reload.CHECK_PATH, reload.RELOAD_PATH])
def test_without_a_reload_token_the_paths_are_unknown(keys_file, path):
    assert request(replica(keys_file, None), path, headers={"Authorization": f"Bearer {TOKEN}"}).status == 404


@pytest.mark.parametrize("path", [reload.CHECK_PATH, reload.RELOAD_PATH])
def test_no_token_is_a_401_and_another_token_a_403_that_say_nothing_more(keys_file, checks, path):
    client_key = keys.add(keys_file, "team-a")
    app = replica(keys_file, TOKEN)
    missing = request(app, path)
    assert missing.status == 401 and missing.json()["error"]["type"] == "unauthorized"
    for wrong in ("Bearer " + TOKEN[:-1] + "x", f"Bearer {client_key}", TOKEN, "Basic " + TOKEN):
        answer = request(app, path, headers={"Authorization": wrong})
        assert answer.status in (401, 403), wrong
        assert answer.json()["error"]["message"] in ("refused", "this request needs the reload token")
        assert TOKEN.encode() not in answer.body and client_key.encode() not in answer.body
    assert checks == []


def test_with_the_token_the_check_answers_the_hash_the_replicas_will_serve(keys_file, checks):
    answer = request(replica(keys_file, TOKEN), reload.CHECK_PATH, headers={"Authorization": f"Bearer {TOKEN}"})
    assert (answer.status, answer.json()) == (200, {"config_hash": "3b9f0c2a7e41"})
    assert checks == [("config.yaml", True)]  # GATEWAY_CONFIG, its messages kept for the answer


def test_a_refused_config_is_a_422_with_the_line_and_reason(keys_file, monkeypatch):
    said = "gateway: error: config.yaml:12: endpoint 'chat': unknown key `limt` (did you mean `limit`?)"
    monkeypatch.setattr(reload, "check", lambda config, capture=False: reload.Checked(None, said))
    answer = request(replica(keys_file, TOKEN), reload.CHECK_PATH, headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status == 422
    assert answer.json()["error"] == {"type": "config_refused", "message": said}


def test_reload_signals_this_workers_gunicorn_master_and_nothing_else(keys_file, monkeypatch):
    sent = []
    monkeypatch.setattr(reload.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    app = replica(keys_file, TOKEN)
    monkeypatch.setattr(reload, "_master", None)  # not a gunicorn worker (a test, uvicorn by hand)
    answer = request(app, reload.RELOAD_PATH, headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status == 409 and sent == []
    reload.under_master(reload.os.getppid())
    answer = request(app, reload.RELOAD_PATH, headers={"Authorization": f"Bearer {TOKEN}"})
    assert (answer.status, answer.json()) == (202, {"status": "reloading"})
    assert sent == [(reload.os.getppid(), signal.SIGHUP)]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("short-token", "is shorter than 32 characters"),
        ("your-reload-token-goes-here-0123456789", "is a placeholder"),
        (TOKEN + "\n\n", "whitespace"),
    ],
)
def test_an_unusable_token_leaves_the_paths_off_and_is_logged_without_its_value(monkeypatch, caplog, value, problem):
    monkeypatch.setenv(reload.TOKEN, value)
    assert reload.reload_token() is None
    assert problem in caplog.text and value.strip() not in caplog.text


def test_the_token_is_read_like_any_secret(monkeypatch, tmp_path):
    (tmp_path / "token").write_text(TOKEN + "\n")
    monkeypatch.delenv(reload.TOKEN, raising=False)
    monkeypatch.setenv(reload.TOKEN + "_FILE", str(tmp_path / "token"))
    assert reload.reload_token() == TOKEN


def test_an_empty_token_is_no_token_and_no_error(monkeypatch, caplog):
    """compose passes GATEWAY_RELOAD_TOKEN from .env, empty when .env has none."""
    monkeypatch.setenv(reload.TOKEN, "")
    assert reload.find_token() == (None, None)
    assert reload.reload_token() is None and caplog.text == ""
