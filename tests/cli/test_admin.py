"""The admin page as a command: it refuses to start without a password of its own (`--check`), and its spend
figures against analyze_costs.py run as a subprocess on the same ledger, on days chosen
to catch a wrong cut: last month's last second (in this month's first file too), yesterday, today, a duplicate
request in two replicas' files, a cache hit and a stored miss, a refusal, an unpriced model. The page itself, in a
browser against the local stack, is tests/stack/test_admin_page.py."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from conftest import REPO, SENTINEL_SECRETS, clean_env, write_secret
from gateway_kit.admin import figures
from gateway_kit.keys import add as add_client_key
from gateway_kit.usage import UsageRecord, ledger_file_name

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
COMPARED = ("by_client", "by_endpoint", "by_model", "cost", "tokens", "cache")


def rec(ts: str, rid: str, client: str | None = "team-a", **fields) -> UsageRecord:
    base = dict(
        route="/gateway/chat/invocations",
        endpoint="chat",
        provider="openai",
        model="gpt-4o-mini-2024-07-18",
        status=200,
        prompt_tokens=1000,
        completion_tokens=200,
        total_tokens=1200,
        replica="gw-1",
        price_source="genai-prices 0.2.3",
    )
    return UsageRecord(ts=ts, request_id=rid, client=client, **{**base, **fields})


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    files = {
        ("gw-1", "2026-10-31"): [rec("2026-10-31T10:00:00.000Z", "oct")],
        ("gw-1", "2026-11-01"): [
            rec("2026-10-31T23:59:59.900Z", "straddles"),  # arrived last month, written this month
            rec("2026-11-01T00:00:00.000Z", "first", "team-b", endpoint="embeddings", completion_tokens=0),
        ],
        ("gw-1", "2026-11-28"): [
            rec("2026-11-28T11:00:00.000Z", "old-error", status=502, error="upstream_unreachable"),
            rec("2026-11-28T13:00:00.000Z", "y-error", status=502, error="upstream_unreachable"),
        ],
        ("gw-1", "2026-11-29"): [
            rec("2026-11-29T08:00:00.000Z", "miss", cache="miss", cost_usd=0.00027),
            rec("2026-11-29T08:01:00.000Z", "hit", cache="hit", cost_usd=0.0, saved_usd=0.00027),
            rec("2026-11-29T09:00:00.000Z", "refused", None, status=401, error="refused:invalid_gateway_key",
                provider=None, model=None, prompt_tokens=0, completion_tokens=0, total_tokens=0, cost_usd=0.0,
                price_source="no tokens"),
            rec("2026-11-29T10:00:00.000Z", "dup", "team-b", model="no-such-model", price_source="unknown"),
        ],
        ("gw-2", "2026-11-29"): [rec("2026-11-29T10:00:00.000Z", "dup", "team-b", model="no-such-model")],
    }  # fmt: skip
    directory = tmp_path / "ledger"
    directory.mkdir()
    for (replica, day), records in files.items():
        text = "".join(r.to_json() + "\n" for r in records)
        (directory / ledger_file_name(replica, day)).write_text(text)
    return directory


def analyze_costs(ledger: Path, since: str) -> dict:
    result = subprocess.run(
        [sys.executable, str(REPO / "analyze_costs.py"), "--ledger", str(ledger), "--since", since, "--json"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def assert_same_as_analyze_costs(ledger: Path) -> figures.Usage:
    usage = figures.usage(ledger, str(REPO / "pricing.yaml"), NOW)
    today, month = analyze_costs(ledger, "2026-11-29"), analyze_costs(ledger, "2026-11-01")
    for name in COMPARED:
        assert usage.today[name] == today[name], name
        assert usage.month[name] == month[name], name
    return usage


def test_today_and_this_month_are_what_analyze_costs_gives_since_today_and_since_the_first(ledger):
    usage = assert_same_as_analyze_costs(ledger)
    assert usage.today["requests"]["total"] == 4 and usage.month["requests"]["total"] == 7  # "dup" once


def test_files_kept_from_the_last_page_load_give_the_same_figures_and_a_new_record_counts(ledger):
    """Without the request in two files, the page merges the scans it kept of each file (costs.merged)."""
    (ledger / ledger_file_name("gw-2", "2026-11-29")).unlink()
    first = assert_same_as_analyze_costs(ledger)
    again = assert_same_as_analyze_costs(ledger)  # every file unchanged: all from the kept scans
    assert again.month == first.month
    with open(ledger / ledger_file_name("gw-1", "2026-11-29"), "a") as f:
        f.write(rec("2026-11-29T11:00:00.000Z", "late", "team-c").to_json() + "\n")
    after = assert_same_as_analyze_costs(ledger)
    assert after.today["requests"]["total"] == first.today["requests"]["total"] + 1
    assert after.last_use["team-c"] == "2026-11-29T11:00:00.000Z"


def test_last_use_cache_ratio_and_errors_of_the_last_24_hours_come_from_the_same_records(ledger):
    usage = figures.usage(ledger, str(REPO / "pricing.yaml"), NOW)
    assert usage.last_use == {"team-a": "2026-11-29T08:01:00.000Z", "team-b": "2026-11-29T10:00:00.000Z"}
    assert (usage.cache_hits, usage.cache_misses, usage.hit_ratio) == (1, 1, 0.5)
    assert usage.errors == [
        {"class": "refused:invalid_gateway_key", "count": 1, "last": "2026-11-29T09:00:00.000Z"},
        {"class": "upstream_unreachable", "count": 1, "last": "2026-11-28T13:00:00.000Z"},
    ]


def test_only_this_months_files_are_read(ledger):
    names = sorted(i.path.name for i in figures.month_inputs(ledger, NOW))
    assert names == [
        "usage-gw-1-2026-11-01.jsonl",
        "usage-gw-1-2026-11-28.jsonl",
        "usage-gw-1-2026-11-29.jsonl",
        "usage-gw-2-2026-11-29.jsonl",
    ]


def admin_check(
    tmp_path: Path, password: str | None, keys: Path | None = None, reload_token: str | None = None
) -> subprocess.CompletedProcess:
    env = {"GATEWAY_ADMIN_AUDIT_LOG": str(tmp_path / "audit.jsonl"), "GATEWAY_SECRETS_DIR": str(tmp_path)}
    if reload_token is not None:
        env["GATEWAY_RELOAD_TOKEN_FILE"] = str(write_secret(tmp_path / "reload-token", reload_token + "\n"))
    if password is not None:
        env["GATEWAY_ADMIN_PASSWORD_FILE"] = str(write_secret(tmp_path / "admin-password", password + "\n"))
    if keys is not None:
        env["GATEWAY_KEYS_FILE"] = str(keys)
    return subprocess.run(
        [sys.executable, "-m", "gateway_kit.admin", "--check"],
        capture_output=True,
        text=True,
        env=clean_env(**env),
        timeout=60,
        cwd=REPO,
    )


def test_the_admin_page_starts_with_a_password_of_its_own(tmp_path):
    result = admin_check(tmp_path, SENTINEL_SECRETS["admin-password"])
    assert result.returncode == 0, result.stderr
    assert "would serve http://127.0.0.1:8090" in result.stderr


@pytest.mark.parametrize(
    ("password", "said"),
    [
        (None, "GATEWAY_ADMIN_PASSWORD is not set"),
        ("too-short", "is shorter than 12 characters"),
        ("changeme-please-now", "is a placeholder"),
    ],
)
def test_the_admin_page_does_not_start_without_a_usable_password(tmp_path, password, said):
    result = admin_check(tmp_path, password)
    assert result.returncode == 78
    assert said in result.stderr
    assert not password or password not in result.stderr


def test_the_admin_page_does_not_start_when_its_password_is_a_client_key(tmp_path):
    keys = tmp_path / "keys.json"
    client_key = add_client_key(keys, "team-a")
    result = admin_check(tmp_path, client_key, keys)
    assert result.returncode == 78
    assert "client key" in result.stderr and client_key not in result.stderr


def test_the_admin_page_does_not_start_with_a_short_reload_token(tmp_path):
    result = admin_check(tmp_path, SENTINEL_SECRETS["admin-password"], reload_token="too-short-a-token")
    assert result.returncode == 78
    assert "GATEWAY_RELOAD_TOKEN (from the file" in result.stderr and "is shorter than 32" in result.stderr
    assert "too-short-a-token" not in result.stderr


def test_the_admin_page_does_not_start_when_its_reload_token_is_a_client_key(tmp_path):
    keys = tmp_path / "keys.json"
    client_key = add_client_key(keys, "team-a")
    result = admin_check(tmp_path, SENTINEL_SECRETS["admin-password"], keys, reload_token=client_key)
    assert result.returncode == 78
    assert "the reload token must be a secret of its own" in result.stderr and client_key not in result.stderr


def test_an_empty_reload_token_is_none(tmp_path):
    """compose passes GATEWAY_RELOAD_TOKEN from .env, empty when .env has none: no Reload button, no refusal."""
    assert admin_check(tmp_path, SENTINEL_SECRETS["admin-password"], reload_token="").returncode == 0
