"""The replica's middleware stack (gateway_kit.app.middlewares): built from one list, outermost first, and the
very stack docs/architecture.md draws, with each feature on and off. Nothing is started: the order comes from
the settings and the config alone."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from gateway_kit.app import middleware_order
from gateway_kit.settings import Settings

REPO = Path(__file__).resolve().parents[2]
CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())
CALL_LIMIT = {**CONFIG, "limits": {"client": {"calls": 60, "renewal_period": "minute"}}}
TOKEN_LIMIT = {**CONFIG, "limits": {"client": {"tokens_per_minute": 1000}}}
ALL = {**CALL_LIMIT, "endpoints": [{**CONFIG["endpoints"][0], "cache": {"ttl": 60}}, *CONFIG["endpoints"][1:]]}


def drawn() -> list[str]:
    """The middleware names in docs/architecture.md's picture of a request's path, top (outermost) first."""
    doc = (REPO / "docs" / "architecture.md").read_text()
    section = doc.split("## A request's path through a replica", 1)[1].split("\n## ", 1)[0]
    picture = section.split("```", 2)[1]
    return re.findall(r"^ ├─ (\S+(?: \S+)*)  ", picture, flags=re.MULTILINE)


def built(config: dict, **env: str) -> list[str]:
    settings = Settings.from_env({"GATEWAY_LEDGER_DIR": "off", "GATEWAY_REDIS_URL": "redis://127.0.0.1:1/0", **env})
    return middleware_order(settings, config)


def test_the_picture_names_every_middleware_once():
    names = drawn()
    assert names[:3] == ["request id", "client keys", "dialects"] and len(names) == len(set(names)) == 8


@pytest.mark.parametrize(
    ("config", "env", "off"),
    [
        pytest.param(ALL, {}, set(), id="defaults, config.yaml with limits and a cache: all of them"),
        pytest.param(CONFIG, {}, {"limits", "cache"}, id="defaults, config.yaml as shipped"),
        pytest.param(CALL_LIMIT, {}, {"cache"}, id="no endpoint has cache:"),
        pytest.param(ALL, {"GATEWAY_REDIS_URL": ""}, {"cache"}, id="cache: without Redis caches nothing"),
        pytest.param(ALL, {"GATEWAY_METRICS": "off"}, {"in-flight gauge"}, id="metrics off"),
        pytest.param(ALL, {"GATEWAY_RESILIENCE": "off"}, {"resilience"}, id="resilience off"),
        pytest.param(ALL, {"GATEWAY_USAGE_RECORDS": "off"}, set(), id="records off, metrics still listen"),
        pytest.param(
            CALL_LIMIT,
            {"GATEWAY_USAGE_RECORDS": "off", "GATEWAY_METRICS": "off"},
            {"in-flight gauge", "usage records", "cache"},
            id="records and metrics off: nothing listens to usage",
        ),
        pytest.param(
            TOKEN_LIMIT,
            {"GATEWAY_USAGE_RECORDS": "off", "GATEWAY_METRICS": "off"},
            {"in-flight gauge", "cache"},
            id="records and metrics off, a token limit listens",
        ),
    ],
)
def test_the_built_stack_is_the_picture_without_what_is_off(config, env, off):
    assert off <= set(drawn())
    assert built(config, **env) == [name for name in drawn() if name not in off]
