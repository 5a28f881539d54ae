"""What entrypoint.sh tells a user about keys and config.yaml before the gateway starts."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from conftest import REPO, SENTINEL_SECRETS, clean_env, free_port, start_replica, stop_group, write_secret

REAL_LOOKING_KEY = SENTINEL_SECRETS["openai"]
BAD_KEY = SENTINEL_SECRETS["bad-openai"]


def entrypoint(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(REPO / "entrypoint.sh"), *args], env=clean_env(**env), capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(
    ("launcher", "hints", "not_there"),
    [
        (
            "docker",
            [".env next to docker-compose.yml", "docker compose up -d", "docker compose --profile demo up -d"],
            "local_stack.sh",
        ),
        (
            "local-stack",
            [
                "the environment of scripts/local_stack.sh up",
                "scripts/local_stack.sh down && scripts/local_stack.sh up",
                "without --no-fake",
            ],
            "docker compose",
        ),
        ("", ["the environment entrypoint.sh runs in", "GATEWAY_DEMO_UPSTREAM="], "docker compose"),
    ],
)
def test_no_key_at_all_refuses_to_start_and_names_what_to_set(tmp_path, launcher, hints, not_there):
    """In the words of what started the replica: the image (GATEWAY_LAUNCHER=docker), the local stack, or a
    person running entrypoint.sh."""
    result = entrypoint(GATEWAY_RUNTIME_DIR=str(tmp_path), GATEWAY_SECRETS_DIR=str(tmp_path), GATEWAY_LAUNCHER=launcher)
    assert result.returncode == 78
    assert "OPENAI_API_KEY (for chat, completions, embeddings)" in result.stderr
    assert all(hint in result.stderr for hint in hints), result.stderr
    assert not_there not in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "config.active.yaml").exists()


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "is empty"),
        ("sk-your-actual-key-here", "is a placeholder"),
        (f'"{BAD_KEY}"', "wrapped in quotes"),
        (f"{BAD_KEY} ", "trailing whitespace"),
        (f"{BAD_KEY}\n", "trailing whitespace or a newline"),
    ],
)
def test_a_bad_openai_key_disables_its_endpoints_with_one_line_each(value, why):
    result = entrypoint("--check", OPENAI_API_KEY=value, ANTHROPIC_API_KEY=REAL_LOOKING_KEY)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "disabled: OPENAI_API_KEY" in line]
    assert [w.split("'")[1] for w in warnings] == ["chat", "completions", "embeddings"]
    assert all(why in w for w in warnings)
    assert "endpoints ready: anthropic-chat" in result.stderr
    assert REAL_LOOKING_KEY not in result.stdout + result.stderr
    if value.strip():
        assert value.strip().strip('"') not in result.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GATEWAY_METRICS", "maybe"),  # a switch: once read as on, in silence
        ("GATEWAY_UPSTREAM_RETRIES", "lots"),  # once a SystemExit in each worker, which gunicorn started again
        ("GATEWAY_WORKERS", "two"),  # once a SystemExit while gunicorn read its config, exit status 1
        ("GATEWAY_LIMITS_ON_REDIS_DOWN", "ajar"),
    ],
)
def test_a_bad_setting_fails_the_check_and_the_gunicorn_master_with_one_message_and_exit_78(tmp_path, name, value):
    check = entrypoint("--check", OPENAI_API_KEY=REAL_LOOKING_KEY, GATEWAY_LAUNCHER="docker", **{name: value})
    assert check.returncode == 78, check.stderr
    line = next(line for line in check.stderr.splitlines() if line.startswith("gateway: error: "))
    assert line.startswith(f"gateway: error: {name}={value!r} is not ")
    assert f"— fix {name} in .env next to docker-compose.yml, or remove it for the default (" in line
    assert "Traceback" not in check.stderr
    # What entrypoint.sh execs after the check: gunicorn reads gateway_kit.gunicorn_conf in its master.
    master = subprocess.run(
        [sys.executable, "-c", "import gateway_kit.gunicorn_conf"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(GATEWAY_LAUNCHER="docker", **{name: value}),
    )
    assert (master.returncode, master.stderr) == (78, line + "\n")


def test_route_loses_a_disabled_destination_and_is_reweighted():
    result = entrypoint("--check", OPENAI_API_KEY=REAL_LOOKING_KEY)
    assert "route 'chat-split' now splits chat 100%" in result.stderr
    assert REAL_LOOKING_KEY not in result.stderr


def test_key_from_a_secret_file_with_its_trailing_newline_is_accepted(tmp_path):
    write_secret(tmp_path / "openai_api_key", REAL_LOOKING_KEY + "\n")
    result = entrypoint("--check", GATEWAY_SECRETS_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "endpoints ready: chat, completions, embeddings" in result.stderr
    missing = entrypoint("--check", OPENAI_API_KEY_FILE=str(tmp_path / "nope"))
    assert "OPENAI_API_KEY_FILE file" in missing.stderr and "does not exist" in missing.stderr


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_broken_yaml_is_reported_with_its_line_not_a_traceback(tmp_path):
    config = write_config(tmp_path, "endpoints:\n  - name: chat\n    endpoint_type: llm/v1/chat\n   model: [\n")
    result = entrypoint("--check", GATEWAY_CONFIG=str(config), OPENAI_API_KEY=REAL_LOOKING_KEY)
    assert result.returncode == 78
    assert f"{config}:4:" in result.stderr and "not valid YAML" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_endpoint_is_reported_with_its_name_field_and_line(tmp_path):
    text = (REPO / "config.yaml").read_text().replace("endpoint_type: llm/v1/embeddings", "endpoint_type: llm/v1/embed")
    config = write_config(tmp_path, text)
    result = entrypoint("--check", GATEWAY_CONFIG=str(config), OPENAI_API_KEY=REAL_LOOKING_KEY)
    assert result.returncode == 78
    line = next(i for i, text_line in enumerate(text.splitlines(), 1) if "llm/v1/embed" in text_line)
    assert f"{config}:{line}: endpoint 'embeddings'" in result.stderr, result.stderr
    assert "llm/v1/embed" in result.stderr and "Traceback" not in result.stderr


# A typo MLflow would ignore, and the kit with it: an endpoint without its limit or retries, and no word said.
TYPOS = {
    "endpoint limit": (
        "  - name: embeddings\n",
        "  - name: embeddings\n    limt: {calls: 2, renewal_period: minute}\n",
        "endpoint 'embeddings': unknown key `limt` (did you mean `limit`?)",
    ),
    "endpoint retries": (
        "  - name: embeddings\n",
        "  - name: embeddings\n    retires: 3\n",
        "endpoint 'embeddings': unknown key `retires` (did you mean `retries`?)",
    ),
    "provider config": (
        "openai_api_version: ${AZURE",
        "openai_api_verison: ${AZURE",
        "endpoint 'azure-chat': model.config: unknown key `openai_api_verison` (did you mean `openai_api_version`?)",
    ),
    "limits block": (
        "routes:\n",
        "limits:\n  client:\n    calls: 50\n    usd_per_dya: 1\nroutes:\n",
        "limits.client: unknown key `usd_per_dya` (did you mean `usd_per_day`?)",
    ),
    "route": (
        "        traffic_percentage: 50\n      - name: azure-chat",
        "        traffic_percentag: 50\n      - name: azure-chat",
        "route 'chat-split': destinations[0]: unknown key `traffic_percentag` (did you mean `traffic_percentage`?)",
    ),
}


@pytest.mark.parametrize("case", TYPOS)
def test_an_unknown_key_fails_the_check_naming_file_line_key_and_the_nearest_valid_key(tmp_path, case):
    old, typo, message = TYPOS[case]
    text = (REPO / "config.yaml").read_text()
    assert text.count(old) == 1
    config = write_config(tmp_path, text.replace(old, typo))
    key = message.split("`")[1]
    line = next(i for i, t in enumerate(config.read_text().splitlines(), 1) if t.strip().startswith(f"{key}:"))
    result = entrypoint("--check", GATEWAY_CONFIG=str(config), OPENAI_API_KEY=REAL_LOOKING_KEY)
    assert result.returncode == 78, result.stderr
    assert f"{config}:{line}: {message}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_the_config_alone_is_checked_without_any_key_as_deploy_sh_does(tmp_path):
    """`preflight --no-keys` (scripts/deploy.sh, in the image before any replica starts): a valid config passes with
    no provider key set, every endpoint kept; a typo fails as it does when a replica starts."""

    def no_keys(config: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "gateway_kit.preflight", "--no-keys", str(config)],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )

    valid = no_keys(REPO / "config.yaml")
    assert valid.returncode == 0, valid.stderr
    assert "config valid, endpoints: chat, completions, embeddings" in valid.stderr
    text = (REPO / "config.yaml").read_text()
    broken = no_keys(write_config(tmp_path, text.replace("endpoint_type: llm/v1/chat", "endpoint_typ: llm/v1/chat", 1)))
    assert broken.returncode == 78
    assert "unknown key `endpoint_typ` (did you mean `endpoint_type`?)" in broken.stderr
    assert "Traceback" not in broken.stderr


def test_a_gateway_with_an_unknown_key_in_its_config_does_not_start(tmp_path, fake_upstream):
    text = (
        (REPO / "config.yaml").read_text().replace("  - name: embeddings\n", "  - name: embeddings\n    retires: 3\n")
    )
    config = write_config(tmp_path, text)
    proc = subprocess.Popen(
        [str(REPO / "entrypoint.sh")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(
            GATEWAY_CONFIG=str(config),
            GATEWAY_RUNTIME_DIR=str(tmp_path / "run"),
            GATEWAY_HOST="127.0.0.1",
            GATEWAY_PORT=str(free_port()),
            GATEWAY_WORKERS="1",
            GATEWAY_DEMO_UPSTREAM=fake_upstream,
            GATEWAY_LEDGER_DIR="off",
        ),
        start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=90)  # demo mode: without the check it would serve
    except subprocess.TimeoutExpired:
        stop_group(proc.pid)
        pytest.fail("the gateway started with `retires: 3` in its config")
    assert proc.returncode == 78, err
    assert "unknown key `retires` (did you mean `retries`?)" in err
    assert not (tmp_path / "run" / "config.active.yaml").exists()


@pytest.mark.integration
def test_gateway_started_with_a_key_file_serves_and_never_logs_the_key(tmp_path, fake_upstream):
    write_secret(tmp_path / "openai_api_key", REAL_LOOKING_KEY + "\n")
    # A real provider key: a client key is required (docs/limits-and-keys.md).
    from gateway_kit.keys import add

    client_key = add(tmp_path / "keys.json", "entrypoint-test")
    port = free_port()
    log = tmp_path / "gateway.log"
    proc = start_replica(
        tmp_path,
        port,
        log=log,
        timeout=30,
        GATEWAY_SECRETS_DIR=str(tmp_path),
        OPENAI_API_BASE=f"{fake_upstream}/v1",
        GATEWAY_LEDGER_DIR=str(tmp_path / "ledger"),
        GATEWAY_KEYS_FILE=str(tmp_path / "keys.json"),
    )
    try:
        r = requests.post(
            f"http://127.0.0.1:{port}/gateway/chat/invocations",
            json={"messages": [{"role": "user", "content": "hi"}]},
            timeout=10,
            headers={"Authorization": f"Bearer {client_key}"},
        )
        assert r.status_code == 200, r.text
        assert r.headers["X-Request-ID"] and r.headers["X-Gateway-Replica"]
    finally:
        stop_group(proc.pid)
    assert "endpoints ready: chat, completions, embeddings" in log.read_text()
    assert REAL_LOOKING_KEY not in log.read_text() and client_key not in log.read_text()
    assert REAL_LOOKING_KEY not in (tmp_path / "run" / "config.active.yaml").read_text()


def test_sighup_checks_the_file_again_and_a_bad_one_never_reaches_the_workers(tmp_path, fake_upstream):
    """gunicorn's master on SIGHUP (what scripts/reload.sh sends once its own check passed): the file changed
    in between is checked again; refused, the replica serves its config on, with new workers."""
    config = tmp_path / "config.yaml"
    config.write_text((REPO / "config.yaml").read_text())
    port = free_port()
    log = tmp_path / "gateway.log"
    proc = start_replica(
        tmp_path, port, log=log, timeout=60, GATEWAY_CONFIG=str(config), GATEWAY_DEMO_UPSTREAM=fake_upstream
    )
    url = f"http://127.0.0.1:{port}"
    try:
        before = requests.get(f"{url}/ready", timeout=10).json()["config_hash"]
        config.write_text(config.read_text().replace("endpoint_type:", "endpoint_typ:", 1))

        proc.send_signal(signal.SIGHUP)
        for _ in range(240):  # the master's check imports MLflow: seconds, more on a busy machine
            if "reload: " in log.read_text():
                break
            time.sleep(0.5)

        text = log.read_text()
        assert f"{config}:" in text and "unknown key `endpoint_typ`" in text
        assert "the active config is unchanged" in text
        assert requests.get(f"{url}/ready", timeout=30).json()["config_hash"] == before
        answer = requests.post(
            f"{url}/gateway/chat/invocations", json={"messages": [{"role": "user", "content": "hi"}]}, timeout=30
        )
        assert answer.status_code == 200, answer.text
    finally:
        stop_group(proc.pid)
