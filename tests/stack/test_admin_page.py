"""The admin page in a real browser (headless Chromium driven by Playwright) against a local stack of its own:
`scripts/local_stack.sh up --admin FILE` (2 replicas, client keys required, a client limit, a cached endpoint).

What a platform engineer does with it: logs in (a wrong password and a client key are refused, and so is a
6th failed login from one address), reads the same numbers analyze_costs.py gives for the same ledger, adds a
key and uses it through nginx, revokes it and sees every replica refuse it. A change without the CSRF token is
refused. Screenshots of each step go to <pytest basetemp>/admin-screenshots (the path is printed).

Chromium is Debian's (/usr/bin/chromium, installed by scripts/setup.sh --dev), driven by the playwright package
from PyPI (requirements-dev.txt); Playwright's own browser download is never used.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode

import pytest
import requests
import yaml

from conftest import REPO, SENTINEL_SECRETS, clean_env, own_stack, write_secret
from gateway_kit.cli.costs import usd
from gateway_kit.keys import add as add_client_key

pytestmark = [pytest.mark.integration, pytest.mark.stack]

CHROMIUM = "/usr/bin/chromium"
ADMIN = "http://127.0.0.1:8090"
PASSWORD = SENTINEL_SECRETS["admin-password"]
REPLICAS = ("http://127.0.10.1:8000", "http://127.0.10.2:8000")
KEYS: dict[str, str] = {}  # client -> key, made by the fixture
WAIT = 15.0  # seconds: the longest any bounded wait below waits (keys reach every replica within about 1 s)


@pytest.fixture(scope="module")
def astack(tmp_path_factory):
    state = tmp_path_factory.mktemp("admin-stack")
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for endpoint in config["endpoints"]:
        if endpoint["name"] == "chat":
            endpoint["cache"] = {"ttl": 3600}
    config["limits"] = {"client": {"calls": 1000}, "clients": {"team-a": {"calls": 100, "usd_per_day": 5}}}
    config_file = state / "admin.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    keys = state / "keys.json"
    KEYS.update({client: add_client_key(keys, client) for client in ("team-a", "team-b")})
    password = write_secret(state / "admin-password", PASSWORD + "\n")
    args = ("--replicas", "2", "--workers", "1", "--config", str(config_file), "--keys", str(keys))
    with own_stack(state, *args, "--admin", str(password)) as s:
        s.keys_file = keys
        yield s


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/setup.sh --dev installs Debian's chromium")
    with sync_playwright() as p:
        # Chromium's sandbox needs an unprivileged user namespace, which root in a container often lacks.
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"] if os.geteuid() == 0 else [])
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    directory = tmp_path_factory.getbasetemp() / "admin-screenshots"
    directory.mkdir(exist_ok=True)
    print(f"admin page screenshots: {directory}")
    return directory


@pytest.fixture
def page(browser, astack):
    context = browser.new_context()
    yield context.new_page()
    context.close()


def log_in(page, password: str = PASSWORD, who: str = "dana"):
    page.goto(f"{ADMIN}/login")
    page.fill("#who", who)
    page.fill("#password", password)
    page.click("#login")
    page.wait_for_load_state()


def ask(stack, key: str, content: str, endpoint: str = "chat") -> requests.Response:
    return requests.post(
        f"{stack.url}/gateway/{endpoint}/invocations",
        json={"messages": [{"role": "user", "content": content}]} if endpoint != "embeddings" else {"input": content},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def analyze_costs(stack, *args: str) -> dict:
    result = subprocess.run(
        [sys.executable, str(REPO / "analyze_costs.py"), "--ledger", str(stack.state_dir / "ledger"), "--json", *args],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def table(page, table_id: str) -> list[list[str]]:
    return [
        [cell.inner_text().strip() for cell in row.locator("td").all()]
        for row in page.locator(f"#{table_id} tbody tr").all()
    ]


def until(check, what: str):
    """check() until it is true, for at most WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while not (result := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {WAIT:.0f} s")
        time.sleep(0.2)
    return result


def audit(stack) -> list[dict]:
    path = stack.state_dir / "admin-audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_wrong_password_is_refused(page, shots, astack):
    log_in(page, "not-the-admin-password")
    assert page.url.endswith("/login")
    assert page.inner_text("#login-error") == "wrong password"
    assert not page.context.cookies()
    page.screenshot(path=shots / "01-wrong-password.png", full_page=True)
    assert audit(astack)[-1] | {"ts": None} == {
        "ts": None, "who": "dana", "address": "127.0.0.1", "action": "login_refused", "reason": "wrong_password",
    }  # fmt: skip


def test_a_client_key_does_not_open_the_page(page, shots, astack):
    log_in(page, KEYS["team-a"])
    assert page.url.endswith("/login")
    assert page.inner_text("#login-error") == "wrong password"
    page.screenshot(path=shots / "02-client-key.png", full_page=True)
    assert audit(astack)[-1]["reason"] == "client_key"
    assert KEYS["team-a"] not in (astack.state_dir / "admin-audit.jsonl").read_text()


def test_the_page_shows_the_numbers_analyze_costs_gives_for_the_same_ledger(page, shots, astack):
    same = f"What is {uuid.uuid4().hex}?"
    answers = [ask(astack, KEYS["team-a"], same), ask(astack, KEYS["team-a"], same)]  # the second from the cache
    answers += [
        ask(astack, KEYS["team-b"], f"Hello {uuid.uuid4().hex}"),
        ask(astack, KEYS["team-b"], "x", "embeddings"),
    ]
    assert [a.status_code for a in answers] == [200, 200, 200, 200]
    assert answers[1].headers["X-Gateway-Cache"] == "hit"
    assert ask(astack, "gwk_not-a-key-at-all", "Hi").status_code == 401
    ids = {a.headers["X-Request-ID"] for a in answers}
    until(lambda: ids <= set(_ledger_ids(astack)), "the usage records of the requests in the ledger")

    answer = None

    def keep(response):
        nonlocal answer
        if response.url == f"{ADMIN}/":
            answer = response

    page.on("response", keep)
    log_in(page)
    assert page.url == f"{ADMIN}/"
    page.screenshot(path=shots / "03-page.png", full_page=True)
    (cookie,) = page.context.cookies()
    assert cookie["name"] == "gateway_admin" and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert 0 < cookie["expires"] - time.time() <= 3600  # GATEWAY_ADMIN_SESSION_MINUTES: 60
    headers = answer.headers
    assert headers["cache-control"] == "no-store" and "default-src 'none'" in headers["content-security-policy"]
    for period, since in (("today", "today"), ("month", time.strftime("%Y-%m-01", time.gmtime()))):
        report = analyze_costs(astack, "--since", since)
        for by in ("client", "endpoint", "model"):
            expected = [
                [r["key"], f"{r['requests']:,}", f"{r['failed']:,}", f"{r['prompt_tokens']:,}",
                 f"{r['completion_tokens']:,}", f"{r['total_tokens']:,}", usd(r["cost_usd"])]
                for r in report[f"by_{by}"]
            ]  # fmt: skip
            assert table(page, f"{period}-by-{by}") == expected, (period, by)
        assert usd(report["cost"]["total_usd"]) in page.inner_text(f"#{period}-total")
    month = analyze_costs(astack, "--since", time.strftime("%Y-%m-01", time.gmtime()))
    cache = page.inner_text("#cache")
    assert f"{month['cache']['hits']:,} hits" in cache and usd(month["cache"]["saved_usd"]) in cache

    assert page.inner_text("#replicas-summary") == "2 of 2 ready"
    assert sorted(row[1] for row in table(page, "replicas")) == ["gateway-1", "gateway-2"]
    errors = {row[0]: row[1] for row in table(page, "errors")}
    assert int(errors["refused:invalid_gateway_key"]) >= 1
    limits = {(row[0], row[1]): row for row in table(page, "limits")}
    assert limits["team-a", "client_calls"][2] == "100 requests per minute"
    assert limits["team-a", "client_usd_per_day"][2] == "$5.0000 USD per day (UTC)"
    assert limits["team-b", "client_calls"][2] == "1,000 requests per minute"
    assert "unknown" not in limits["team-a", "client_calls"][3]  # read from Redis
    keys = {row[0]: row for row in table(page, "keys")}
    assert set(keys) == {"team-a", "team-b"}
    assert keys["team-a"][3].startswith(time.strftime("%Y-%m-%d", time.gmtime()))  # last use, from the ledger
    html = page.content()
    assert KEYS["team-a"] not in html and KEYS["team-b"] not in html
    assert json.loads(astack.keys_file.read_text())["keys"][0]["sha256"] not in html


def _ledger_ids(stack) -> list[str]:
    ids = []
    for path in (stack.state_dir / "ledger").glob("usage-*.jsonl"):
        ids += [json.loads(line)["request_id"] for line in path.read_text().splitlines() if line.strip()]
    return ids


def test_a_key_added_on_the_page_works_through_nginx_and_once_revoked_every_replica_refuses_it(page, shots, astack):
    log_in(page)
    page.fill("#new-client", "team-new")
    page.click("#add")
    page.wait_for_load_state()
    key = page.inner_text("#new-key").strip()
    assert key.startswith("gwk_")
    page.screenshot(path=shots / "04-key-created.png", full_page=True)
    until(lambda: ask(astack, key, "Hi").status_code == 200, "the new key accepted through nginx")
    for replica in REPLICAS:
        until(lambda r=replica: _status(r, key) == 200, f"the new key accepted by {replica}")

    page.click("#back")
    page.wait_for_load_state()
    assert key not in page.content()  # shown once, never again
    page.click("button.revoke[data-client='team-new']")
    page.wait_for_load_state()
    assert "revoked the key of client team-new" in page.inner_text("#notice")
    assert "team-new" not in {row[0] for row in table(page, "keys")}
    page.screenshot(path=shots / "05-key-revoked.png", full_page=True)
    for replica in REPLICAS:
        until(lambda r=replica: _status(r, key) == 401, f"the revoked key refused by {replica}")
    assert ask(astack, key, "Hi").status_code == 401

    actions = [(e["action"], e.get("client"), e["who"]) for e in audit(astack)]
    assert ("key_added", "team-new", "dana") in actions and ("key_revoked", "team-new", "dana") in actions
    written = (astack.state_dir / "admin-audit.jsonl").read_text() + astack.log("admin")
    assert key not in written and key[:12] in written  # the prefix names the key; the key itself is nowhere


def _status(replica: str, key: str) -> int:
    return requests.post(
        f"{replica}/gateway/chat/invocations",
        json={"messages": [{"role": "user", "content": "Hi"}]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    ).status_code


def test_a_change_without_the_csrf_token_is_refused(page, shots, astack):
    log_in(page)
    before = astack.keys_file.read_text()
    for form in ({"client": "sneaky"}, {"client": "sneaky", "csrf": "0" * 64}):
        answer = page.request.post(f"{ADMIN}/keys", form=form)  # the browser's session cookie goes with it
        assert answer.status == 403
        assert "CSRF" in answer.text()
    answer = page.request.post(f"{ADMIN}/keys/revoke", form={"client": "team-a", "prefix": KEYS["team-a"][:12]})
    assert answer.status == 403
    assert astack.keys_file.read_text() == before
    page.set_content(answer.text())
    page.screenshot(path=shots / "06-no-csrf-token.png", full_page=True)


def test_after_scaling_the_page_lists_every_replica(page, shots, astack):
    """local_stack.sh scale restarts the page with the new replica list (its sessions end)."""
    try:
        astack.scale(3)
        log_in(page)
        assert page.inner_text("#replicas-summary") == "3 of 3 ready"
        assert sorted(row[1] for row in table(page, "replicas")) == ["gateway-1", "gateway-2", "gateway-3"]
        page.screenshot(path=shots / "07-three-replicas.png", full_page=True)
    finally:
        astack.scale(2)


def test_a_sixth_failed_login_from_one_address_waits_even_with_the_right_password(astack):
    """From 127.0.0.9 (the browser's 127.0.0.1 keeps its own count)."""

    def login(password: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", 8090, timeout=10, source_address=("127.0.0.9", 0))
        body = urlencode({"who": "mallory", "password": password})
        conn.request("POST", "/login", body, {"Content-Type": "application/x-www-form-urlencoded"})
        status = conn.getresponse().status
        conn.close()
        return status

    assert [login(f"guess-{i}") for i in range(5)] == [401] * 5
    assert login(PASSWORD) == 429
    assert login("guess-6") == 429
