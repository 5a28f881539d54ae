"""Static checks of the deployment files and the Python code: no Docker engine needed.

What a user relies on when they run `docker compose ...`, `docker build` or a script, checked by reading the
files and by the same linters `make lint` runs (from this interpreter's bin directory, requirements-dev.txt):
  .venv/bin/python -m pytest tests/static/test_static.py -q
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
# Not resolved: in a venv, sys.executable is .venv/bin/python (a symlink) and the tools sit beside it.
BIN = Path(sys.executable).parent
DEV = "docker-compose.yml"
PROD = "docker-compose.prod.yml"
COMPOSE_FILES = [DEV, PROD]


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(
            f"{name} not found in {BIN}: install the dev tools (make venv, or pip install -r requirements-dev.txt)"
        )
    return str(path)


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def compose(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


def services(name: str) -> dict[str, dict]:
    return compose(name)["services"]


def shell_scripts() -> list[Path]:
    """Every *.sh in the repository outside hidden folders (.venv, .git, .stack): new scripts are covered too."""
    return sorted(
        p
        for p in REPO.rglob("*.sh")
        if not any(part.startswith(".") or part == "node_modules" for part in p.relative_to(REPO).parts)
    )


def user_scripts() -> list[Path]:
    """The scripts a user runs by hand: scripts/*.sh (lib.sh is sourced, not run), ./check_gateway.sh, and the
    benchmarks' installers (bench/*.sh: bench/litellm_venv.sh, bench/portkey_install.sh)."""
    scripts = [p for p in sorted((REPO / "scripts").glob("*.sh")) if p.name != "lib.sh"] + [REPO / "check_gateway.sh"]
    return scripts + sorted((REPO / "bench").glob("*.sh"))


# ---------------------------------------------------------------------------------------------------- compose
@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_file_is_valid_for_the_compose_spec(name):
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prod_gateway_can_scale_because_it_has_no_container_name_and_no_published_port():
    gateway = services(PROD)["mlflow-gateway"]
    assert "container_name" not in gateway
    assert "ports" not in gateway
    assert [str(p) for p in gateway["expose"]] == ["8000"]


def test_prod_publishes_only_nginx_on_port_5000_and_grafana_and_the_admin_page_on_loopback():
    published = {name: svc["ports"] for name, svc in services(PROD).items() if svc.get("ports")}
    assert published == {
        "nginx": ["5000:5000"],
        "grafana": ["127.0.0.1:3000:3000"],
        "admin": ["127.0.0.1:8090:8090"],
    }
    assert services(PROD)["grafana"]["profiles"] == ["monitoring"]
    assert services(PROD)["admin"]["profiles"] == ["admin"]


def test_prod_admin_page_reads_the_ledger_read_only_writes_the_keys_and_its_audit_log():
    admin = services(PROD)["admin"]
    assert admin["entrypoint"] == ["python", "-m", "gateway_kit.admin"]
    assert admin["user"] == "10001:10001" and admin["cap_drop"] == ["ALL"]
    assert "gateway-ledger:/var/lib/gateway-ledger:ro" in admin["volumes"]
    assert "./keys:/app/keys" in admin["volumes"]  # the directory: the replicas see a rewritten file
    assert "admin-audit:/var/lib/gateway-admin" in admin["volumes"]
    password = next(v for v in admin["volumes"] if isinstance(v, dict))
    assert password["target"] == "/run/secrets/gateway_admin_password" and password["read_only"] is True
    assert admin["environment"]["GATEWAY_ADMIN_REPLICAS"] == "mlflow-gateway:8000"


def test_dev_keeps_the_earlier_kit_container_name_and_port():
    gateway = services(DEV)["mlflow-gateway"]
    assert gateway["container_name"] == "mlflow-gateway"
    assert gateway["ports"] == ["5000:8000"]


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_every_service_has_a_healthcheck(name):
    for service, svc in services(name).items():
        check = svc.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name}: {service} has no healthcheck"


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_every_service_rotates_its_logs(name):
    for service, svc in services(name).items():
        logging = svc.get("logging") or {}
        options = logging.get("options") or {}
        assert logging.get("driver") == "json-file", f"{name}: {service}"
        assert options.get("max-size") and options.get("max-file"), f"{name}: {service} logs grow without bound"


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_services_wait_for_their_dependencies_to_be_healthy(name):
    for service, svc in services(name).items():
        depends = svc.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: {service} depends_on is a list, so it waits for nothing"
        for dependency, spec in depends.items():
            assert spec.get("condition") == "service_healthy", f"{name}: {service} -> {dependency}"


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_demo_profile_starts_the_fake_llm_and_the_gateway_uses_it_only_when_present(name):
    all_services = services(name)
    fake = all_services["fake-llm"]
    assert fake["profiles"] == ["demo"]
    assert fake["entrypoint"][:3] == ["python", "-m", "gateway_kit.fake_upstream"]
    assert "ports" not in fake
    gateway = all_services["mlflow-gateway"]
    assert gateway["environment"]["GATEWAY_DEMO_UPSTREAM"] == "http://fake-llm:9000"
    # required: false -> without --profile demo the gateway still starts (compose would refuse otherwise).
    assert gateway["depends_on"]["fake-llm"] == {"condition": "service_healthy", "required": False}


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_the_env_file_is_optional_and_the_ledger_is_a_named_volume(name):
    gateway = services(name)["mlflow-gateway"]
    assert gateway["env_file"] == [{"path": ".env", "required": False}]
    assert gateway["environment"]["GATEWAY_LEDGER_DIR"] == "/var/lib/gateway-ledger"
    assert "gateway-ledger:/var/lib/gateway-ledger" in gateway["volumes"]
    assert "gateway-ledger" in compose(name)["volumes"]


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_gateway_gets_longer_to_stop_than_its_graceful_timeout(name):
    grace = services(name)["mlflow-gateway"]["stop_grace_period"]
    assert int(grace.rstrip("s")) > 30  # GATEWAY_GRACEFUL_TIMEOUT default (docs/architecture.md)


def test_prod_gateway_runs_hardened_and_shares_redis():
    gateway = services(PROD)["mlflow-gateway"]
    assert gateway["read_only"] is True and "/tmp" in gateway["tmpfs"]
    assert gateway["user"].split(":")[0] == "10001"
    assert gateway["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in gateway["security_opt"]
    assert set(gateway["deploy"]["resources"]["limits"]) >= {"cpus", "memory"}
    assert gateway["environment"]["GATEWAY_REDIS_URL"] == "redis://redis:6379/0"
    assert gateway["depends_on"]["redis"]["condition"] == "service_healthy"


def test_prod_nginx_mounts_the_repository_config_read_only_and_waits_for_the_gateway():
    nginx = services(PROD)["nginx"]
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
    assert nginx["read_only"] is True
    assert {"/var/cache/nginx", "/var/run"} <= set(nginx["tmpfs"])
    assert nginx["depends_on"] == {"mlflow-gateway": {"condition": "service_healthy"}}
    assert "http://127.0.0.1:5000/nginx-health" in nginx["healthcheck"]["test"]


def test_third_party_images_are_pinned_to_a_patch_release():
    for service in ("nginx", "redis"):
        image = services(PROD)[service]["image"]
        assert re.fullmatch(r"[a-z0-9./-]+:\d+\.\d+\.\d+-alpine(@sha256:[0-9a-f]{64})?", image), image
    for service in ("prometheus", "grafana"):
        image = services(PROD)[service]["image"]
        assert re.fullmatch(r"[a-z0-9./-]+:v?\d+\.\d+\.\d+(@sha256:[0-9a-f]{64})?", image), image


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_gateway_healthcheck_asks_readiness(name):
    assert "/ready" in " ".join(services(name)["mlflow-gateway"]["healthcheck"]["test"])


# ------------------------------------------------------------------------------------------------- monitoring
def test_monitoring_profile_runs_prometheus_and_grafana_with_read_only_configs():
    prometheus, grafana = services(PROD)["prometheus"], services(PROD)["grafana"]
    assert prometheus["profiles"] == grafana["profiles"] == ["monitoring"]
    assert "ports" not in prometheus
    for svc in (prometheus, grafana):
        configs = [v for v in svc["volumes"] if v.startswith("./monitoring/")]
        assert configs and all(v.endswith(":ro") for v in configs), configs
        for volume in configs:
            assert (REPO / volume.split(":")[0]).exists(), volume
    assert grafana["depends_on"] == {"prometheus": {"condition": "service_healthy"}}
    assert {"prometheus-data", "grafana-data"} <= set(compose(PROD)["volumes"])


def test_prometheus_finds_every_replica_by_dns_so_scaling_needs_no_config_change():
    config = yaml.safe_load((REPO / "monitoring/prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "mlflow-gateway"]
    assert job["dns_sd_configs"] == [
        {"names": ["mlflow-gateway"], "type": "A", "port": 8000, "refresh_interval": "15s"}
    ]
    assert "static_configs" not in job


def test_promtool_accepts_the_prometheus_config_and_the_alert_rules():
    promtool = "/usr/bin/promtool"
    if not Path(promtool).exists():
        pytest.fail("promtool not found: apt-get install prometheus (scripts/setup.sh does)")
    result = run(promtool, "check", "config", "monitoring/prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    result = run(promtool, "check", "rules", "monitoring/alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_cover_errors_latency_429s_budget_and_replicas_with_exported_metrics():
    from metrics_helpers import exported_sample_names, metric_names_in

    rules = yaml.safe_load((REPO / "monitoring/alerts.yml").read_text())["groups"][0]["rules"]
    names = {r["alert"] for r in rules}
    assert {
        "GatewayHighErrorRate",
        "GatewayHighLatencyP95",
        "GatewayRateLimitedRequests",
        "GatewayProviderRateLimited",
        "GatewayBudgetBurn",
        "GatewayReplicaDown",
    } <= names
    exported = exported_sample_names()
    for rule in rules:
        assert metric_names_in(rule["expr"]) <= exported, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_dashboard_is_valid_json_and_every_panel_queries_metrics_the_kit_exports():
    import json

    from metrics_helpers import dashboard_exprs, exported_sample_names, metric_names_in

    dashboard = json.loads((REPO / "monitoring/grafana/dashboards/gateway.json").read_text())
    exported = exported_sample_names()
    exprs = dashboard_exprs(dashboard)
    used = set()
    for title, expr in exprs:
        names = metric_names_in(expr)
        assert names or "up{" in expr, f"panel {title!r} queries no metric: {expr}"
        assert names <= exported, f"panel {title!r} uses {names - exported}, which the kit does not export"
        used |= names
    # Traffic, latency, TTFT, errors, tokens and cost are all on it.
    assert {
        "gateway_requests_total",
        "gateway_request_duration_seconds_bucket",
        "gateway_tokens_total",
        "gateway_time_to_first_token_seconds_bucket",
        "gateway_cost_usd_total",
    } <= used
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert all(p["datasource"]["uid"] == "prometheus" for p in panels)
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    provisioning = REPO / "monitoring/grafana/provisioning"
    datasource = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["uid"] == "prometheus"
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    # Grafana reads the dashboards where compose mounts them.
    provider = yaml.safe_load((provisioning / "dashboards/gateway.yml").read_text())["providers"][0]
    assert f"./monitoring/grafana/dashboards:{provider['options']['path']}:ro" in services(PROD)["grafana"]["volumes"]


def test_every_prod_service_has_a_read_only_root_filesystem_and_no_privilege_escalation():
    for name, svc in services(PROD).items():
        assert svc.get("read_only") is True, f"{PROD}: {name} can write to its root filesystem"
        assert "no-new-privileges:true" in (svc.get("security_opt") or []), f"{PROD}: {name}"
        assert svc.get("tmpfs"), f"{PROD}: {name} has nowhere to write temporary files"


@pytest.mark.parametrize("name", ["mlflow-gateway", "fake-llm"])
def test_services_of_the_gateway_image_run_as_the_images_non_root_user_without_capabilities(name):
    svc = services(PROD)[name]
    user = svc.get("user") or dockerfile_user()  # unset: the image's USER
    assert user.split(":")[0] not in ("", "0", "root"), f"{name} runs as {user}"
    assert svc["cap_drop"] == ["ALL"]


# ------------------------------------------------------------------------------------------------- Dockerfile
def test_dockerfile_passes_hadolint():
    result = run(tool("hadolint"), "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def dockerfile_instructions() -> list[str]:
    """The Dockerfile's instructions, each on one line (continuations joined, comment lines dropped)."""
    lines = [line for line in (REPO / "Dockerfile").read_text().splitlines() if not line.lstrip().startswith("#")]
    return [" ".join(i.split()) for i in "\n".join(lines).replace("\\\n", " ").splitlines() if i.strip()]


def test_image_installs_the_lock_with_hashes_and_runs_as_a_non_root_user():
    instructions = dockerfile_instructions()
    assert any(re.fullmatch(r"ARG PYTHON_IMAGE=python:3\.11(\.\d+)?-slim-bookworm", i) for i in instructions)
    installs = [i for i in instructions if i.startswith("RUN ") and "pip install" in i]
    assert installs, "no pip install in the Dockerfile"
    assert all("--require-hashes" in i and '-r "${REQUIREMENTS}"' in i and "--no-cache-dir" in i for i in installs)
    # The slim lock by default; the full mlflow[gateway] lock one build argument away (both copied in).
    assert "ARG REQUIREMENTS=requirements-slim.lock" in instructions
    assert "COPY requirements.lock requirements-slim.lock ./" in instructions
    assert "USER 10001:10001" in instructions
    assert 'ENTRYPOINT ["/app/entrypoint.sh"]' in instructions
    assert any(i.startswith("HEALTHCHECK ") and "/health" in i for i in instructions)


def dockerfile_user() -> str:
    """The user the final image runs as: the last USER instruction of the Dockerfile."""
    users = [i.split(" ", 1)[1] for i in dockerfile_instructions() if i.startswith("USER ")]
    return users[-1] if users else "root"


def test_the_runtime_image_switches_to_a_non_root_user_after_its_last_build_step():
    instructions = dockerfile_instructions()
    runtime = instructions[max(i for i, line in enumerate(instructions) if line.startswith("FROM ")) :]
    user_at = max(i for i, line in enumerate(runtime) if line.startswith("USER "))
    assert dockerfile_user().split(":")[0] not in ("0", "root")
    assert all(not line.startswith(("RUN ", "COPY ", "ADD ")) for line in runtime[user_at + 1 :]), runtime[user_at:]


def test_build_context_leaves_secrets_out():
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", ".dockerignore should be an allowlist"
    assert not any(p.lstrip("!").startswith((".env", "secrets")) for p in patterns if p.startswith("!"))


# ----------------------------------------------------------------------------------------------------- Python
# ruff with pyproject.toml's [tool.ruff]; --no-cache: a test writes nothing into the checkout.
def test_python_passes_ruff_check():
    result = run(tool("ruff"), "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_python_is_formatted_as_ruff_format_writes_it():
    result = run(tool("ruff"), "format", "--check", "--no-cache", ".")
    assert result.returncode == 0, f"run: .venv/bin/ruff format .\n{result.stdout}{result.stderr}"


# ------------------------------------------------------------------------------------------------------ shell
def test_shell_scripts_pass_shellcheck():
    scripts = shell_scripts()
    if not scripts:
        pytest.skip("no shell scripts")
    result = run(tool("shellcheck"), "-x", *(str(p.relative_to(REPO)) for p in scripts))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", user_scripts(), ids=lambda p: str(p.relative_to(REPO)))
def test_script_is_executable_and_answers_help(script):
    assert script.stat().st_mode & 0o111, f"chmod +x {script.relative_to(REPO)}"
    result = run(str(script), "--help", timeout=20)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout


@pytest.mark.parametrize("script", user_scripts(), ids=lambda p: str(p.relative_to(REPO)))
def test_script_rejects_an_unknown_argument_with_exit_2(script):
    result = run(str(script), "--no-such-flag", timeout=20)
    assert result.returncode == 2
    assert "Unexpected argument: --no-such-flag. Use --help." in result.stderr


def test_scripts_and_gateway_agree_on_what_a_placeholder_key_is():
    from gateway_kit.secrets import _PLACEHOLDER

    lib = (REPO / "scripts" / "lib.sh").read_text()
    shell_re = re.search(r"^KEY_PLACEHOLDER_RE='([^']*)'", lib, re.M)
    assert shell_re and shell_re.group(1) == _PLACEHOLDER.pattern


# -------------------------------------------------------------------------------------------------- the lock
def lock_requirements(lock: str = "requirements.lock") -> dict[str, str]:
    """name -> the requirement's whole entry (continuation lines joined), comments dropped."""
    text = (REPO / lock).read_text().replace("\\\n", " ")
    entries = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return {re.split(r"[=<>!~; \[]", e, maxsplit=1)[0].lower().replace("_", "-"): e for e in entries}


def test_lock_pins_mlflow_and_every_requirement_has_an_exact_version_and_a_hash():
    entries = lock_requirements()
    assert entries["mlflow"].startswith("mlflow==3.17.2 ")
    for name, entry in entries.items():
        assert re.match(rf"{re.escape(entry.split('==')[0])}==[^ ]+ ", entry), f"{name} is not pinned with =="
        assert "--hash=sha256:" in entry, f"{name} has no hash"


def requirement_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.add(re.split(r"[=<>!~; \[]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def test_lock_covers_every_requirement_in_requirements_txt():
    for lock, requirements in (
        ("requirements.lock", "requirements.txt"),
        ("requirements-slim.lock", "requirements-slim.txt"),
    ):
        locked = lock_requirements(lock)
        for name in requirement_names(REPO / requirements):
            assert name in locked, f"{name} is in {requirements} but not in {lock}: run make lock"


def test_slim_requirements_keep_every_kit_requirement_of_the_full_ones():
    assert requirement_names(REPO / "requirements.txt") - {"mlflow"} <= requirement_names(
        REPO / "requirements-slim.txt"
    )
    slim = lock_requirements("requirements-slim.lock")
    assert slim["mlflow-skinny"].startswith("mlflow-skinny==3.17.2 ") and "mlflow" not in slim
    full = lock_requirements()
    # Constrained by requirements.lock: what both images share is the same version in both.
    assert {n: e.split()[0] for n, e in slim.items()} == {n: full[n].split()[0] for n in slim}


# ---------------------------------------------------------------------------------------------- env.template
def test_env_template_keeps_the_placeholder_the_checks_recognise():
    assert "OPENAI_API_KEY=sk-your-actual-key-here" in (REPO / "env.template").read_text().splitlines()


def test_env_template_documents_every_variable_of_the_architecture():
    doc = (REPO / "docs" / "architecture.md").read_text()
    environment = doc.split("## Environment", 1)[1].split("\n## ", 1)[0]
    template = (REPO / "env.template").read_text()
    for name in set(re.findall(r"`([A-Z][A-Z0-9_]+)`", environment)):
        assert re.search(rf"^#? ?{name}=", template, re.M), f"{name} is not in env.template"
