"""The admin page's Reload in a real browser (headless Chromium, as tests/stack/test_admin_page.py) against a local
stack of its own: `scripts/local_stack.sh up --admin FILE` makes a reload token that the replicas and the page
share (2 replicas x 1 worker, client keys required, a limit for one client).

What a platform engineer does: edits config.yaml in place, presses Reload config, and sees every replica serve
the new config's hash (on the page and in /ready) and the new limit enforced through nginx, with no failed request
under a light load meanwhile; a typo is refused on the page with its line and reason while every replica keeps
its config. A reload without the CSRF token is refused, and nginx never passes the reload requests on.
Screenshots go to <pytest basetemp>/admin-screenshots.
"""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import time

import pytest
import requests
import yaml

from conftest import REPO, clean_env, own_stack, write_secret
from gateway_kit.keys import add as add_client_key
from stack.test_admin_page import ADMIN, PASSWORD, REPLICAS, ask, audit, browser, log_in, shots, table  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.stack]

ROLL_MS = 300_000  # the longest the browser waits for the answer to Reload: each replica starts new workers
KEYS: dict[str, str] = {}


def write_config(path, calls: int, typo: bool = False) -> None:
    """The repository's config.yaml with a limit of `calls` a minute for team-r (and a typo), written in place."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["limits"] = {"clients": {"team-r": {"calls": calls}}}
    if typo:
        next(e for e in config["endpoints"] if e["name"] == "chat")["limt"] = {"calls": 1, "renewal_period": "minute"}
    path.write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.fixture(scope="module")
def rstack(tmp_path_factory):
    state = tmp_path_factory.mktemp("admin-reload-stack")
    config = state / "config.yaml"
    write_config(config, 1000)
    keys = state / "keys.json"
    KEYS.update({client: add_client_key(keys, client) for client in ("team-r", "load")})  # load: no limit of its own
    password = write_secret(state / "admin-password", PASSWORD + "\n")
    args = ("--replicas", "2", "--workers", "1", "--config", str(config), "--keys", str(keys))
    with own_stack(state, *args, "--admin", str(password)) as s:
        s.config, s.keys_file = config, keys
        s.token = (state / "reload-token").read_text().strip()
        yield s


@pytest.fixture
def page(browser, rstack):  # noqa: F811
    context = browser.new_context()
    p = context.new_page()
    p.set_default_timeout(ROLL_MS)
    yield p
    context.close()


def served(url: str) -> str:
    return requests.get(f"{url}/ready", timeout=10).json()["config_hash"]


def press_reload(page) -> None:
    page.goto(f"{ADMIN}/")
    page.click("#reload-config")
    page.wait_for_load_state()


def test_nginx_never_passes_the_reload_requests_on(rstack):
    """Sent as written (http.client: no client-side normalisation of the path)."""
    for path in ("/-/reload", "/-/reload/check", "//-/reload", "/%2D/reload", "/v1/../-/reload"):
        conn = http.client.HTTPConnection("127.0.0.1", 5000, timeout=10)
        conn.request("POST", path, b"", {"Authorization": f"Bearer {rstack.token}"})
        answer = conn.getresponse()
        body = json.loads(answer.read())
        conn.close()
        assert (answer.status, body["error"]["type"]) == (404, "not_found"), path


def test_a_client_key_opens_no_reload_request_on_a_replica(rstack):
    answer = requests.post(f"{REPLICAS[0]}/-/reload", headers={"Authorization": f"Bearer {KEYS['team-r']}"}, timeout=10)
    assert answer.status_code == 403 and answer.json()["error"]["message"] == "refused"
    assert requests.post(f"{REPLICAS[0]}/-/reload/check", timeout=10).status_code == 401


def test_a_reload_without_the_csrf_token_is_refused(page, rstack):
    before, reloads = [served(url) for url in REPLICAS], [e for e in audit(rstack) if e["action"] == "config_reload"]
    log_in(page)
    for form in ({}, {"csrf": "0" * 64}):
        answer = page.request.post(f"{ADMIN}/reload", form=form)  # the browser's session cookie goes with it
        assert answer.status == 403 and "CSRF" in answer.text()
    assert requests.post(f"{ADMIN}/reload", data={}, timeout=10).status_code == 401  # no session at all
    assert [served(url) for url in REPLICAS] == before
    assert [e for e in audit(rstack) if e["action"] == "config_reload"] == reloads


def test_a_typo_is_refused_on_the_page_with_its_line_and_every_replica_keeps_its_config(page, shots, rstack):  # noqa: F811
    before = [served(url) for url in REPLICAS]
    write_config(rstack.config, 1000, typo=True)
    line = next(n for n, text in enumerate(rstack.config.read_text().splitlines(), 1) if "limt:" in text)
    try:
        log_in(page)
        press_reload(page)
        page.screenshot(path=shots / "11-reload-refused.png", full_page=True)
        assert "was refused: nothing was reloaded" in page.inner_text("#reload-result")
        said = page.inner_text("#reload-refused")
        assert f"{rstack.config}:{line}: endpoint 'chat': unknown key `limt` (did you mean `limit`?)" in said
        assert [served(url) for url in REPLICAS] == before
        assert audit(rstack)[-1] | {"ts": None, "problem": None} == {
            "ts": None, "who": "dana", "address": "127.0.0.1", "action": "config_reload", "result": "refused",
            "config": str(rstack.config), "config_hash": None, "problem": None, "replicas": {},
        }  # fmt: skip
    finally:
        write_config(rstack.config, 1000)


def test_a_changed_limit_reloaded_from_the_page_reaches_every_replica_under_load(page, shots, rstack, tmp_path):  # noqa: F811
    old = [served(url) for url in REPLICAS]
    (tmp_path / "cases.json").write_text(
        json.dumps({"cases": [{"name": "chat", "endpoint": "chat", "messages": [{"role": "user", "content": "hi"}]}]})
    )
    load = subprocess.Popen(
        [sys.executable, str(REPO / "evaluate_gateway.py"), "--url", rstack.url, "--test-file",
         str(tmp_path / "cases.json"), "--rate", "4", "--duration", "600", "--timeout", "60", "--no-progress",
         "--output", str(tmp_path / "load.json")],
        env={**clean_env(), "GATEWAY_API_KEY": KEYS["load"]},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        time.sleep(3)
        write_config(rstack.config, 2)
        log_in(page)
        press_reload(page)
        page.screenshot(path=shots / "12-reloaded.png", full_page=True)
        time.sleep(2)
    finally:
        load.send_signal(signal.SIGINT)  # evaluate_gateway.py saves what finished
        out, err = load.communicate(timeout=120)
    result = page.inner_text("#reload-result")
    assert result.startswith("every replica serves config "), result
    new = result.rsplit(" ", 1)[1]
    assert new not in old
    assert [row[1] for row in table(page, "reload-replicas")] == ["ok", "ok"]
    assert [served(url) for url in REPLICAS] == [new, new]

    page.click("#back")
    page.wait_for_load_state()
    assert {row[4] for row in table(page, "replicas")} == {new}  # each replica's config column
    limits = {(row[0], row[1]): row for row in table(page, "limits")}
    assert limits["team-r", "client_calls"][2] == "2 requests per minute"
    assert [ask(rstack, KEYS["team-r"], "Hi").status_code for _ in range(3)] == [200, 200, 429]

    entry = audit(rstack)[-1]
    assert (entry["action"], entry["who"], entry["result"], entry["config_hash"]) == (
        "config_reload", "dana", "reloaded", new,
    )  # fmt: skip
    assert sorted(entry["replicas"]) == ["127.0.10.1:8000", "127.0.10.2:8000"]
    results = json.loads((tmp_path / "load.json").read_text())["requests"]
    failed = [r for r in results if r["outcome"] != "pass"]
    print(f"reload from the admin page under load (4/s through nginx): {len(results)} requests, {len(failed)} failed")
    assert results and not failed, [(r["seq"], r.get("error")) for r in failed[:5]]
    written = (rstack.state_dir / "admin-audit.jsonl").read_text() + rstack.log("admin")
    written += "".join(rstack.log(f"replica-{i}") for i in (1, 2))
    assert rstack.token not in written and rstack.token not in page.content()
