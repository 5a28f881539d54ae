"""Unknown keys in config.yaml: every block's valid keys come from the code that reads the block."""

from __future__ import annotations

import copy

import pytest
import yaml

from conftest import REPO
from gateway_kit.preflight import unknown_keys

CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())


def test_the_shipped_config_has_no_unknown_key():
    assert unknown_keys(CONFIG) == []


def test_every_key_mlflow_reads_in_a_provider_config_is_accepted():
    from mlflow.gateway.config import OpenAIConfig

    config = copy.deepcopy(CONFIG)
    config["endpoints"][0]["model"]["config"].update({field: "x" for field in OpenAIConfig.model_fields})
    assert unknown_keys(config) == []


@pytest.mark.parametrize(
    ("block", "typo", "message"),
    [
        (
            lambda c: c["endpoints"][0]["model"],
            "provder",
            "endpoint 'chat': model: unknown key `provder` (did you mean `provider`?)",
        ),
        (
            lambda c: c["endpoints"][3]["model"]["config"],
            "anthropic_verison",
            "endpoint 'anthropic-chat': model.config: unknown key `anthropic_verison` (did you mean `anthropic_version`?)",
        ),
        (
            lambda c: c["endpoints"][0].setdefault("timeouts", {}),
            "frist_byte",
            "endpoint 'chat': timeouts: unknown key `frist_byte` (did you mean `first_byte`?)",
        ),
        (lambda c: c["routes"][0], "limits", "route 'chat-split': unknown key `limits` (did you mean `limit`?)"),
        (lambda c: c, "route", "unknown key `route` (did you mean `routes`?)"),
        (
            lambda c: c.setdefault("limits", {}).setdefault("clients", {}).setdefault("ci", {}),
            "cals",
            "limits.clients.ci: unknown key `cals` (did you mean `calls`?)",
        ),
    ],
)
def test_a_typo_anywhere_is_named_with_the_nearest_valid_key(block, typo, message):
    config = copy.deepcopy(CONFIG)
    block(config)[typo] = 1
    [(path, what)] = unknown_keys(config)
    assert path[-1] == typo
    assert what.startswith(message), what


def test_a_key_nothing_is_close_to_lists_the_valid_keys():
    config = copy.deepcopy(CONFIG)
    config["endpoints"][0]["zzz"] = 1
    [(_, what)] = unknown_keys(config)
    assert what == (
        "endpoint 'chat': unknown key `zzz`; keys here: name, endpoint_type, model, limit, timeouts, retries, fallback, cache"
    )
