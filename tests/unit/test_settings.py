"""The replica's settings (gateway_kit.settings): one vocabulary for a switch, one error for a bad value, and a
docs/architecture.md table that lists exactly the settings there are, with their defaults. Every test hands
Settings.from_env a mapping of its own: nothing here reads or changes the process's environment."""

from __future__ import annotations

import re
import socket
from dataclasses import fields
from pathlib import Path

import pytest

from gateway_kit import settings
from gateway_kit.exit_status import ExitStatus
from gateway_kit.settings import Settings, SettingsError, env_fields, shown_default, variable

REPO = Path(__file__).resolve().parents[2]
SWITCHES = [variable(f) for f in env_fields() if f.type == "bool"]


def test_unset_and_empty_variables_give_the_documented_defaults():
    unset, empty = Settings.from_env({}), Settings.from_env({variable(f): "" for f in env_fields()})
    assert unset == empty
    assert (unset.port, unset.workers, unset.metrics, unset.ready_redis, unset.auth) == (8000, 2, True, False, "auto")
    assert unset.replica_id == socket.gethostname()  # GATEWAY_REPLICA_ID's default
    assert unset.ledger_on and unset.ledger_dir == "ledger"
    assert unset.config_path == "config.yaml"


def test_every_variable_is_its_field_name_in_capitals():
    names = {variable(f) for f in env_fields()}
    assert "GATEWAY_UPSTREAM_RETRIES" in names and "GATEWAY_METRICS_FLUSH_SECONDS" in names
    assert all(re.fullmatch(r"GATEWAY_[A-Z0-9_]+", n) for n in names)
    assert "environ" not in {f.name for f in env_fields()}  # the copy of the environment is no variable


@pytest.mark.parametrize("name", SWITCHES)
@pytest.mark.parametrize(
    ("raw", "on"),
    [
        *((word, True) for word in ("on", "true", "yes", "1", "ON", " True ", "Yes")),
        *((word, False) for word in ("off", "false", "no", "0", "none", "OFF", " False ", "None")),
    ],
)
def test_every_switch_takes_the_same_words_for_on_and_off(name, raw, on):
    field = name.removeprefix("GATEWAY_").lower()
    assert getattr(Settings.from_env({name: raw}), field) is on


@pytest.mark.parametrize("name", SWITCHES)
def test_a_word_outside_the_vocabulary_is_refused_not_read_as_on_or_off(name):
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({name: "disabled"})
    message = str(refused.value)
    assert message.startswith(f"{name}='disabled' is not on or off (on, true, yes, 1 / off, false, no, 0, none)")


@pytest.mark.parametrize(
    ("raw", "mode"),
    [("auto", "auto"), ("on", "on"), ("true", "on"), ("1", "on"), ("off", "off"), ("no", "off"), (" AUTO ", "auto")],
)
def test_gateway_auth_is_auto_or_a_switch(raw, mode):
    assert Settings.from_env({"GATEWAY_AUTH": raw}).auth == mode


@pytest.mark.parametrize("raw", ["off", "OFF", "none", "false", "no", "0"])
def test_the_ledger_is_turned_off_by_a_switchs_off_words(raw):
    assert not Settings.from_env({"GATEWAY_LEDGER_DIR": raw}).ledger_on


def test_a_ledger_directory_is_kept_as_written():
    s = Settings.from_env({"GATEWAY_LEDGER_DIR": "/var/lib/gateway-ledger"})
    assert s.ledger_on and s.ledger_dir == "/var/lib/gateway-ledger"


@pytest.mark.parametrize(
    ("name", "raw", "allowed"),
    [
        ("GATEWAY_PORT", "eighty", "a port number from 0 to 65535"),
        ("GATEWAY_PORT", "70000", "a port number from 0 to 65535"),
        ("GATEWAY_WORKERS", "0", "a whole number of workers, 1 or more"),
        ("GATEWAY_WORKERS", "2.5", "a whole number of workers, 1 or more"),
        ("GATEWAY_TIMEOUT", "-1", "a whole number of seconds, 0 or more"),
        ("GATEWAY_LOG_LEVEL", "loud", "one of debug, info, warning, error, critical"),
        ("GATEWAY_METRICS_FLUSH_SECONDS", "0", "a number of seconds above 0, at most 60"),
        ("GATEWAY_METRICS_FLUSH_SECONDS", "600", "a number of seconds above 0, at most 60"),
        ("GATEWAY_MAX_BODY_MB", "ten", "a number of megabytes above 0"),
        ("GATEWAY_UPSTREAM_POOL", "many", "a whole number of connections, 0 or more"),
        ("GATEWAY_UPSTREAM_RETRIES", "1.5", "a whole number, 0 or more"),
        ("GATEWAY_UPSTREAM_CONNECT_TIMEOUT", "nan", "a number of seconds, 0 or more"),
        ("GATEWAY_UPSTREAM_TOTAL_TIMEOUT", "inf", "a number of seconds, 0 or more"),
        ("GATEWAY_CIRCUIT_FAILURES", "-5", "a whole number, 0 or more (0 turns it off)"),
        ("GATEWAY_REDIS_TIMEOUT", "0", "a number of seconds above 0"),
        ("GATEWAY_LIMITS_ON_REDIS_DOWN", "ajar", "open or closed"),
        ("GATEWAY_AUTH", "maybe", "one of auto, on, off"),
        ("GATEWAY_DEMO_WAIT", "soon", "a number of seconds, 0 or more"),
    ],
)
def test_a_bad_value_names_the_variable_the_value_what_is_allowed_and_where_to_fix_it(name, raw, allowed):
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({name: raw, "GATEWAY_LAUNCHER": "docker"})
    message = str(refused.value)
    assert message.startswith(f"{name}={raw!r} is not {allowed}")
    assert f"— fix {name} in .env next to docker-compose.yml, or remove it for the default (" in message
    assert (refused.value.name, refused.value.value) == (name, raw)


def test_where_to_fix_a_setting_follows_the_launcher():
    def message(launcher: str) -> str:
        with pytest.raises(SettingsError) as refused:
            Settings.from_env({"GATEWAY_WORKERS": "two", "GATEWAY_LAUNCHER": launcher})
        return str(refused.value)

    assert "fix GATEWAY_WORKERS in .env next to docker-compose.yml" in message("docker")
    assert "fix GATEWAY_WORKERS in the --env NAME=VALUE of scripts/local_stack.sh up" in message("local-stack")
    assert "fix GATEWAY_WORKERS in the environment entrypoint.sh runs in" in message("")
    assert message("").endswith("or remove it for the default (`2`)")


def test_numbers_are_parsed_with_their_units():
    s = Settings.from_env(
        {
            "GATEWAY_PORT": " 9000 ",
            "GATEWAY_MAX_BODY_MB": "0.5",
            "GATEWAY_UPSTREAM_RETRIES": "3",
            "GATEWAY_UPSTREAM_BACKOFF": "0",
            "GATEWAY_CIRCUIT_FAILURES": "0",
        }
    )
    assert (s.port, s.max_body_mb, s.upstream_retries, s.upstream_backoff, s.circuit_failures) == (9000, 0.5, 3, 0.0, 0)
    assert isinstance(s.port, int) and isinstance(s.upstream_retries, int)


def test_the_active_config_entrypoint_sh_wrote_comes_before_gateway_config():
    env = {"GATEWAY_CONFIG": "/etc/gw/config.yaml"}
    assert Settings.from_env(env).config_path == "/etc/gw/config.yaml"
    assert (
        Settings.from_env({**env, "GATEWAY_ACTIVE_CONFIG": "/tmp/gateway/config.active.yaml"}).config_path
        == "/tmp/gateway/config.active.yaml"
    )


def test_opentelemetry_is_configured_when_an_otel_variable_is_set():
    assert not Settings.from_env({"GATEWAY_PORT": "1"}).otel_configured
    assert Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}).otel_configured


def test_the_process_settings_are_parsed_once_and_a_bad_value_raises(monkeypatch):
    monkeypatch.setattr(settings, "_current", None)
    monkeypatch.setenv("GATEWAY_WORKERS", "3")
    first = settings.current()
    monkeypatch.setenv("GATEWAY_WORKERS", "4")
    assert settings.current() is first and first.workers == 3  # nothing re-reads the environment later
    monkeypatch.setattr(settings, "_current", None)
    monkeypatch.setenv("GATEWAY_WORKERS", "four")
    with pytest.raises(SettingsError, match="GATEWAY_WORKERS='four'"):
        settings.current()


def test_read_gives_one_variable_now_and_ignores_a_bad_other_one(monkeypatch):
    monkeypatch.setenv("GATEWAY_WORKERS", "four")  # the command-line tools do not use it: it must not stop them
    monkeypatch.setenv("GATEWAY_PRICING_FILE", "/etc/gw/pricing.yaml")
    assert settings.read("GATEWAY_PRICING_FILE") == "/etc/gw/pricing.yaml"
    monkeypatch.delenv("GATEWAY_PRICING_FILE")
    assert settings.read("GATEWAY_PRICING_FILE") == ""
    monkeypatch.setenv("GATEWAY_PORT", "eighty")
    with pytest.raises(SettingsError, match="GATEWAY_PORT='eighty' is not a port number"):
        settings.read("GATEWAY_PORT")  # one error for a bad value here too, never a silent default


def test_fail_prints_the_message_as_every_start_up_check_does_and_exits_78(capsys):
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"GATEWAY_METRICS": "maybe"})
    exit_ = settings.fail(refused.value)
    assert exit_.code == ExitStatus.CONFIG == 78
    assert capsys.readouterr().err == f"gateway: error: {refused.value}\n"


# ---------------------------------------------------------------- docs/architecture.md cannot drift


def environment_table() -> dict[str, str]:
    """{variable: its default cell} for every row of docs/architecture.md's "Environment (gateway replica)" table."""
    doc = (REPO / "docs" / "architecture.md").read_text()
    section = doc.split("## Environment (gateway replica)", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`"):
            for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", cells[0]):
                rows[name] = cells[1]
    return rows


def test_every_setting_is_a_row_of_the_architecture_table_with_its_default():
    table = environment_table()
    for f in env_fields():
        name, shown = variable(f), shown_default(f)
        assert name in table, f"{name} is a setting but not a row of docs/architecture.md's environment table"
        cell = table[name]
        assert cell == shown or cell.startswith((shown + " ", shown + ",")), (
            f"{name}: docs/architecture.md says the default is {cell!r}; gateway_kit.settings has {shown!r}"
        )


def test_every_gateway_row_of_the_architecture_table_is_a_setting():
    """The table's other rows are the providers' variables (keys, base URLs): gateway_kit.secrets and
    config.yaml's ${NAME} read those, not the settings."""
    settings_names = {variable(f) for f in env_fields()}
    rows = {name for name in environment_table() if name.startswith("GATEWAY_")}
    assert rows - settings_names == set(), "rows of docs/architecture.md that no setting reads"
    assert all(not name.startswith("GATEWAY_") for name in set(environment_table()) - rows)


def test_every_field_is_documented_or_explicitly_not_a_variable():
    not_variables = {f.name for f in fields(Settings)} - {f.name for f in env_fields()}
    assert not_variables == {"environ", "trace_export"}


def test_a_child_process_environment_has_no_gateway_setting_and_no_provider_key(monkeypatch):
    monkeypatch.setenv("GATEWAY_WORKERS", "3")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-a-real-key-for-this-test")
    monkeypatch.setenv("AZURE_OPENAI_API_BASE", "https://example.invalid")
    monkeypatch.setenv("KIT_TEST_OTHER", "kept")
    env = settings.environment_without_settings()
    assert env["KIT_TEST_OTHER"] == "kept" and env["PATH"]
    assert not any(name.startswith("GATEWAY_") or name in settings.PROVIDER_VARIABLES for name in env)


def test_only_the_settings_and_secrets_modules_read_the_environment():
    """The replica's settings are parsed in one place; gateway_kit.secrets reads the provider keys."""
    readers = set()
    for path in (REPO / "gateway_kit").rglob("*.py"):
        source = path.read_text()
        if re.search(r"\bos\.(environ|getenv|putenv|unsetenv)\b|from os import", source):
            readers.add(str(path.relative_to(REPO / "gateway_kit")))
    assert readers == {"settings.py", "secrets.py"}
