"""The Helm chart (charts/mlflow-gateway), proven as far as a machine without a Kubernetes cluster can.

- Real helm v4 (scripts/install_helm.sh puts it in .venv/bin) lints the chart with --strict and renders it for the
  default values and several realistic value sets, each once per session.
- Every render passes `kubernetes-validate --strict` against Kubernetes' own schemas for KUBE_VERSIONS. Kinds
  Kubernetes does not define (ServiceMonitor, PrometheusRule, HTTPRoute) have no schema there: their shape is
  checked by the tests below, and the PrometheusRule's rules by promtool.
- The tests read the rendered manifests for what the kit needs: probes on the kit's paths, a grace period above
  gunicorn's graceful timeout, a rollout that never lowers capacity, config from the repository's own files.
- One real gateway replica is started from the rendered pod: its env, its ConfigMap's files and its Secrets laid
  out as the kubelet mounts them. It serves, follows a client-keys Secret update without a restart, and its
  stdout records are read by analyze_costs.py in the formats `kubectl logs --prefix` and the node's log files use.
- The admin page (admin.enabled) is started from its rendered Deployment against a fake Kubernetes API server
  (tests/fake_kube_api.py): it adds and revokes keys in the client-keys Secret, retrying a stale write.

Figures (renders, validations) go to the end-of-run summary (conftest.pytest_terminal_summary).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from conftest import (
    CHART_FIGURES,
    REPO,
    SENTINEL_SECRETS,
    clean_env,
    free_port,
    running_fake,
    start_replica,
    stop_group,
    wait_http,
    write_secret,
)
from fake_kube_api import running_kube_api

from gateway_kit import keys

CHART = REPO / "charts" / "mlflow-gateway"
BIN = Path(sys.executable).parent
HELM = BIN / "helm"
KUBE_VERSIONS = ("1.30.0", "1.33.0", "1.35.0")  # oldest in extended support, and two later minors
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule", "HTTPRoute"}  # not in Kubernetes' schemas

# Realistic value sets, besides the defaults (README.md of the chart shows the same shapes).
VALUE_SETS: dict[str, dict] = {
    "default": {},
    # A platform team's production: their registry, Redis of their own, TLS ingress, Prometheus Operator.
    "production": {
        "image": {"repository": "registry.example.com/ml/mlflow-gateway", "tag": "0.1.0"},
        "imagePullSecrets": [{"name": "registry"}],
        "gateway": {
            "workers": 4,
            "gracefulTimeout": 120,
            "preStopSeconds": 15,
            "auth": "on",
            "env": {"GATEWAY_UPSTREAM_RETRIES": "2", "AZURE_OPENAI_API_BASE": "https://acme.openai.azure.com"},
            "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
        },
        "autoscaling": {"minReplicas": 3, "maxReplicas": 30, "targetCPUUtilizationPercentage": 60},
        "providerKeys": {"existingSecret": "llm-provider-keys"},
        "clientKeys": {"secretName": "gateway-client-keys"},
        "redis": {
            "enabled": False,
            "external": {"existingSecret": "redis-url"},
            "onDown": "closed",
            "readinessGate": True,
        },
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "host": "llm.example.com",
            "tls": [{"secretName": "llm-tls", "hosts": ["llm.example.com"]}],
        },
        "monitoring": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
            "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
        },
        "networkPolicy": {
            "edgeFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}],
            "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
            "extraEgress": [
                {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "ports": [{"port": 6380, "protocol": "TCP"}]}
            ],
        },
    },
    # Gateway API in front of the gateway pods (no nginx), a fixed replica count, the ledger on a shared claim,
    # keys given as values (the chart owns the Secrets).
    "gateway-api": {
        "nginx": {"enabled": False},
        "httpRoute": {
            "enabled": True,
            "parentRefs": [{"name": "public", "namespace": "gateway-system"}],
            "hostnames": ["llm.example.com"],
        },
        "autoscaling": {"enabled": False},
        "gateway": {"replicas": 4, "terminationGracePeriodSeconds": 90},
        "ledger": {"existingClaim": "gateway-ledger"},
        "redis": {"external": {"url": "redis://redis.shared:6379/3"}, "enabled": False},
        "clientKeys": {"keysJson": '{"keys": []}'},
        "networkPolicy": {"enabled": False},
    },
    # The admin page beside the pods: its password from a Secret the team made, keys in their own Secret, the ledger
    # claim it reads its figures from.
    "admin": {
        "admin": {"enabled": True, "passwordSecret": "gateway-admin-password"},
        "clientKeys": {"secretName": "gateway-client-keys"},
        "ledger": {"existingClaim": "gateway-ledger"},
    },
    # A cluster whose DNS Service is not kube-dns: nginx's resolver by address; a config of the team's own.
    "own-config": {
        "nginx": {"resolver": "10.96.0.10", "clusterDomain": "k8s.internal", "replicas": 3},
        "config": {"configYaml": (REPO / "config.yaml").read_text().replace("gpt-4o-mini", "gpt-4.1-mini")},
        "redis": {"persistence": {"size": "5Gi", "storageClass": "fast-ssd"}},
        "podDisruptionBudget": {"maxUnavailable": "25%"},
    },
}


def documented_values(path: Path, marker: str) -> dict:
    """The ```yaml block of a document that holds `marker`: the values example users copy."""
    blocks = re.findall(r"```yaml\n(.*?)```", path.read_text(), re.S)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"{path}: no single yaml block with {marker!r}"
    return yaml.safe_load(found[0])


# The values examples the READMEs show render, lint and validate like the sets above.
VALUE_SETS["README: Beyond one host"] = documented_values(REPO / "README.md", "# my-values.yaml")
VALUE_SETS["chart README: production"] = documented_values(CHART / "README.md", "gracefulTimeout: 120")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    if not HELM.exists():
        pytest.fail(f"{HELM} is missing: run scripts/install_helm.sh (scripts/setup.sh --dev does)")
    result = subprocess.run(
        [str(HELM), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean_env(), "HELM_CACHE_HOME": "/tmp/helm-cache-tests"},
    )
    if check and result.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def values_file(tmp: Path, name: str, values: dict) -> Path:
    path = tmp / f"values-{re.sub(r'[^A-Za-z0-9-]+', '-', name)}.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def template(tmp: Path, name: str, values: dict, *extra: str) -> subprocess.CompletedProcess:
    CHART_FIGURES["helm template"] += 1
    return helm(
        "template",
        "gw",
        str(CHART),
        "--namespace",
        "ai",
        "-f",
        str(values_file(tmp, name, values)),
        *extra,
        check=False,
    )


class Render:
    """One `helm template` output: its text and its documents by kind and name."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.docs = [d for d in yaml.safe_load_all(text) if d]

    def kinds(self) -> list[str]:
        return [d["kind"] for d in self.docs]

    def one(self, kind: str, name_suffix: str = "") -> dict:
        """The one document of `kind` whose name ends with `name_suffix`."""
        found = [d for d in self.docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
        assert len(found) == 1, f"{len(found)} {kind} named *{name_suffix}: {[d['metadata']['name'] for d in found]}"
        return found[0]

    def gateway(self) -> dict:
        return next(
            d
            for d in self.docs
            if d["kind"] == "Deployment" and d["metadata"]["labels"]["app.kubernetes.io/component"] == "gateway"
        )

    def gateway_container(self) -> dict:
        return self.gateway()["spec"]["template"]["spec"]["containers"][0]

    def env(self) -> dict[str, str | dict]:
        return {e["name"]: e.get("value", e.get("valueFrom")) for e in self.gateway_container()["env"]}


@pytest.fixture(scope="session")
def renders(tmp_path_factory) -> dict[str, Render]:
    """Every value set rendered once per session."""
    tmp = tmp_path_factory.mktemp("helm")
    out = {}
    for name, values in VALUE_SETS.items():
        result = template(tmp, name, values)
        assert result.returncode == 0, f"helm template ({name}) failed:\n{result.stderr}"
        out[name] = Render(result.stdout)
    return out


# ----------------------------------------------------------------------------------------------- helm itself
def test_helm_is_the_pinned_v4():
    version = helm("version", "--template", "{{ .Version }}").stdout
    pinned = re.search(r'HELM_VERSION="(v[\d.]+)"', (REPO / "scripts/install_helm.sh").read_text()).group(1)
    assert version == pinned and version.startswith("v4.")


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_chart_passes_helm_lint_strict(name, tmp_path):
    result = helm("lint", "--strict", str(CHART), "-f", str(values_file(tmp_path, name, VALUE_SETS[name])))
    CHART_FIGURES["helm lint --strict"] += 1
    assert "0 chart(s) failed" in result.stdout, result.stdout


@pytest.fixture(scope="session")
def validations(renders, tmp_path_factory) -> dict[str, tuple[int, list[str]]]:
    """`kubernetes-validate --strict` of every render for every version, in one run: name -> (the run's exit
    status, the lines about that render)."""
    tmp = tmp_path_factory.mktemp("validate")
    files = {}
    for i, (name, render) in enumerate(renders.items()):
        files[name] = tmp / f"render-{i}.yaml"
        files[name].write_text(render.text)
    # One process per version, side by side (each is CPU-bound in jsonschema).
    runs = [
        subprocess.Popen(
            [str(BIN / "kubernetes-validate"), "--strict", "-k", version, *map(str, files.values())],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for version in KUBE_VERSIONS
    ]
    lines, code = [], 0
    for run in runs:
        output, _ = run.communicate(timeout=600)
        lines += output.splitlines()
        code |= run.returncode
    # Lines that name no file (a crash, a usage error) count against every render.
    unattributed = [ln for ln in lines if not any(f" {path} " in ln for path in files.values())]
    return {name: (code, [ln for ln in lines if f" {path} " in ln] + unattributed) for name, path in files.items()}


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_every_render_passes_kubernetes_validate_strict(name, renders, validations):
    render = renders[name]
    code, lines = validations[name]
    problems = [ln for ln in lines if not ln.startswith(("INFO", "WARN"))]
    assert not problems, "\n".join(problems)
    assert code == 0 or any(not ln.startswith(("INFO", "WARN")) for other in validations.values() for ln in other[1])
    passed = [
        m.groups() for ln in lines if (m := re.match(r"INFO .* passed for resource (\S+) against version (\S+)$", ln))
    ]
    built_in = [d for d in render.docs if d["kind"] not in CUSTOM_KINDS]
    # Every Kubernetes kind was checked for every version (a misspelt apiVersion would be a WARN, not a pass).
    assert len(passed) == len(built_in) * len(KUBE_VERSIONS), lines
    assert {v for _, v in passed} == {v.rsplit(".", 1)[0] for v in KUBE_VERSIONS}
    warned = [ln for ln in lines if ln.startswith("WARN")]
    assert len(warned) == (len(render.docs) - len(built_in)) * len(KUBE_VERSIONS), warned
    CHART_FIGURES["kubernetes-validate passes"] += len(passed)
    CHART_FIGURES["custom kinds not schema-checked"] += len(warned)


# ----------------------------------------------------------------------------------------------- the gateway pods
def test_probes_use_the_kits_health_and_ready_paths_on_its_port(renders):
    for name, render in renders.items():
        c = render.gateway_container()
        assert c["startupProbe"]["httpGet"]["path"] == "/health", name
        assert c["livenessProbe"]["httpGet"]["path"] == "/health", name
        assert c["readinessProbe"]["httpGet"]["path"] == "/ready", name
        port = {p["name"]: p["containerPort"] for p in c["ports"]}["http"]
        assert all(c[p]["httpGet"]["port"] == "http" for p in ("startupProbe", "livenessProbe", "readinessProbe"))
        assert str(port) == render.env()["GATEWAY_PORT"] == "8000", name
    # The paths are the kit's own (a stack test below asks a real replica for them).
    assert 'add_api_route("/ready"' in (REPO / "gateway_kit/readiness.py").read_text()


def test_grace_period_outlasts_the_prestop_pause_and_gunicorns_graceful_timeout(renders):
    for name, render in renders.items():
        pod = render.gateway()["spec"]["template"]["spec"]
        graceful = int(render.env()["GATEWAY_GRACEFUL_TIMEOUT"])
        pause = int(pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][1])
        assert pod["terminationGracePeriodSeconds"] > pause + graceful, name
        assert pause > 5, f"{name}: the pause must outlast nginx's 5 s DNS cache of the pods"
        strategy = render.gateway()["spec"]["strategy"]["rollingUpdate"]
        assert strategy["maxUnavailable"] == 0 and strategy["maxSurge"] >= 1, name
    # gunicorn's graceful_timeout is the setting the env carries (gateway_kit.settings reads the variable).
    assert "graceful_timeout = _s.graceful_timeout" in (REPO / "gateway_kit/gunicorn_conf.py").read_text()
    from gateway_kit.settings import Settings

    assert Settings.from_env({"GATEWAY_GRACEFUL_TIMEOUT": str(graceful)}).graceful_timeout == graceful


def test_a_grace_period_too_short_for_streams_fails_the_render(tmp_path):
    result = template(
        tmp_path, "short-grace", {"gateway": {"gracefulTimeout": 60, "terminationGracePeriodSeconds": 45}}
    )
    assert result.returncode != 0
    assert "gateway.terminationGracePeriodSeconds=45 must be above" in result.stderr
    assert "= 70" in result.stderr  # preStopSeconds 10 + gracefulTimeout 60


def test_pods_run_as_10001_read_only_without_capabilities_writing_only_to_tmp(renders):
    render = renders["default"]
    pod = render.gateway()["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["securityContext"]["runAsUser"] == 10001 and pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = [m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")]
    assert writable == ["/tmp"] and "emptyDir" in volumes["tmp"]
    env = render.env()
    # Everything the kit writes lands in /tmp: the runtime dir (checked config, metric files), $HOME; no ledger.
    assert env["GATEWAY_RUNTIME_DIR"].startswith("/tmp/") and env["HOME"] == "/tmp"
    assert env["GATEWAY_LEDGER_DIR"] == "off"
    for other in renders.values():  # every pod of every set: non-root, read-only, no capabilities
        for d in other.docs:
            if d["kind"] in ("Deployment", "StatefulSet"):
                spec = d["spec"]["template"]["spec"]
                assert spec["securityContext"]["runAsNonRoot"] is True
                for cont in spec["containers"]:
                    assert cont["securityContext"]["readOnlyRootFilesystem"] is True
                    assert cont["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_a_ledger_claim_is_the_only_other_writable_mount(renders):
    c = renders["gateway-api"].gateway_container()
    assert renders["gateway-api"].env()["GATEWAY_LEDGER_DIR"] == "/var/lib/gateway-ledger"
    assert [m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")] == ["/tmp", "/var/lib/gateway-ledger"]


def test_replicas_spread_over_zones_and_nodes_and_are_scaled_by_cpu_down_slowly(renders):
    render = renders["default"]
    pod = render.gateway()["spec"]["template"]["spec"]
    assert {t["topologyKey"] for t in pod["topologySpreadConstraints"]} == {
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    }
    assert pod["containers"][0]["resources"]["requests"]["cpu"]
    assert "replicas" not in render.gateway()["spec"]  # the HPA owns the count
    hpa = render.one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    down = hpa["spec"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 300
    assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 300}]
    pdb = render.one("PodDisruptionBudget", "mlflow-gateway")
    assert pdb["spec"]["selector"]["matchLabels"] == render.gateway()["spec"]["selector"]["matchLabels"]
    fixed = renders["gateway-api"]
    assert fixed.gateway()["spec"]["replicas"] == 4 and "HorizontalPodAutoscaler" not in fixed.kinds()


# ----------------------------------------------------------------------------------------------- config and secrets
def test_config_and_pricing_come_from_the_repositorys_own_files(renders):
    for link in ("config.yaml", "pricing.yaml", "nginx.conf", "alerts.yml"):
        path = CHART / "files" / link
        assert path.is_symlink(), f"{path} must link to the repository's file, not copy it"
    data = renders["default"].one("ConfigMap", "-config")["data"]
    assert data["config.yaml"] == (REPO / "config.yaml").read_text().rstrip("\n")
    assert data["pricing.yaml"] == (REPO / "pricing.yaml").read_text().rstrip("\n")
    env = renders["default"].env()
    assert env["GATEWAY_CONFIG"] == "/etc/gateway/config/config.yaml"
    assert env["GATEWAY_PRICING_FILE"] == "/etc/gateway/config/pricing.yaml"


def test_the_packaged_chart_carries_the_files_themselves(renders, tmp_path):
    """`helm package` writes the linked files' contents into the archive: it installs from anywhere."""
    helm("package", str(CHART), "-d", str(tmp_path))
    archive = next(tmp_path.glob("mlflow-gateway-*.tgz"))
    CHART_FIGURES["helm template"] += 1
    packaged = Render(helm("template", "gw", str(archive), "--namespace", "ai").stdout)
    assert packaged.text == renders["default"].text


def test_images_are_the_ones_the_compose_files_pin(renders):
    """nginx and Redis: the prod compose file's tags (bump both together); the gateway: the kit's version."""
    compose = yaml.safe_load((REPO / "docker-compose.prod.yml").read_text())["services"]
    images = {
        d["spec"]["template"]["spec"]["containers"][0]["name"]: d["spec"]["template"]["spec"]["containers"][0]["image"]
        for d in renders["default"].docs
        if d["kind"] in ("Deployment", "StatefulSet")
    }
    assert images["nginx"] == compose["nginx"]["image"]
    assert images["redis"] == compose["redis"]["image"]
    from gateway_kit import __version__

    assert images["gateway"] == f"mlflow-gateway:{__version__}"


def test_a_config_change_changes_the_checksum_that_rolls_the_pods(renders, tmp_path):
    def checksum(render: Render) -> str:
        return render.gateway()["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    default, own = renders["default"], renders["own-config"]
    assert checksum(default) != checksum(own)  # another config.yaml
    again = template(tmp_path, "default-again", {})
    assert checksum(Render(again.stdout)) == checksum(default)  # the same files: no rollout
    pricing = template(tmp_path, "pricing", {"config": {"pricingYaml": "models: {}\n"}})
    assert checksum(Render(pricing.stdout)) != checksum(default)
    # Nothing else moves it: a replica count is not a config change.
    replicas = template(tmp_path, "replicas", {"autoscaling": {"enabled": False}, "gateway": {"replicas": 7}})
    assert checksum(Render(replicas.stdout)) == checksum(default)


def test_provider_keys_are_files_from_a_secret_never_values_in_the_pod_spec(renders, tmp_path):
    prod = renders["production"]
    env = prod.env()
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "AZURE_OPENAI_API_KEY"):
        assert env[f"{name}_FILE"] == f"/etc/gateway/provider-keys/{name}"
        assert name not in env
    volumes = {v["name"]: v for v in prod.gateway()["spec"]["template"]["spec"]["volumes"]}
    assert volumes["provider-keys"]["secret"] == {
        "secretName": "llm-provider-keys",
        "defaultMode": 0o440,
        "optional": False,
    }
    assert "Secret" not in prod.kinds()  # an existing Secret: the chart creates none
    # Keys given as values: a Secret the chart owns, and a checksum that rolls the pods when a key changes.
    values = write_secret(
        tmp_path / "keys-values.yaml",
        yaml.safe_dump({"providerKeys": {"values": {"OPENAI_API_KEY": SENTINEL_SECRETS["openai"]}}}),
    )
    CHART_FIGURES["helm template"] += 1
    owned = Render(helm("template", "gw", str(CHART), "-f", str(values)).stdout)
    secret = owned.one("Secret", "-provider-keys")
    assert list(secret["data"]) == ["OPENAI_API_KEY"]
    assert SENTINEL_SECRETS["openai"] not in owned.text  # base64 in the Secret, nowhere in clear
    assert "checksum/provider-keys" in owned.gateway()["spec"]["template"]["metadata"]["annotations"]


def test_client_keys_are_a_secret_directory_so_updates_reach_running_pods(renders):
    for name, render in renders.items():
        c = render.gateway_container()
        mount = next(m for m in c["volumeMounts"] if m["name"] == "client-keys")
        assert "subPath" not in mount, f"{name}: a subPath mount never sees a Secret update"
        assert render.env()["GATEWAY_KEYS_FILE"] == mount["mountPath"] + "/keys.json"
    assert renders["default"].env()["GATEWAY_AUTH"] == "auto"
    owned = renders["gateway-api"].one("Secret", "-client-keys")
    assert list(owned["data"]) == ["keys.json"]


# ----------------------------------------------------------------------------------------------- Redis
def test_redis_is_bundled_with_a_pvc_or_external(renders):
    default = renders["default"]
    sts = default.one("StatefulSet", "-redis")
    assert sts["spec"]["replicas"] == 1
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert default.env()["GATEWAY_REDIS_URL"] == "redis://gw-mlflow-gateway-redis:6379/0"
    assert default.env()["GATEWAY_LIMITS_ON_REDIS_DOWN"] == "open"
    prod = renders["production"]
    assert "StatefulSet" not in prod.kinds()
    assert prod.env()["GATEWAY_REDIS_URL"] == {"secretKeyRef": {"name": "redis-url", "key": "url"}}
    assert prod.env()["GATEWAY_LIMITS_ON_REDIS_DOWN"] == "closed"
    assert prod.env()["GATEWAY_READY_REDIS"] == "on"
    assert renders["gateway-api"].env()["GATEWAY_REDIS_URL"] == "redis://redis.shared:6379/3"


# ----------------------------------------------------------------------------------------------- the edge
def test_nginx_in_front_runs_the_kits_nginx_conf_with_only_the_docker_names_replaced(renders, tmp_path):
    kit = (REPO / "nginx.conf").read_text().rstrip("\n").splitlines()
    for name, resolver, fqdn in (
        ("default", "kube-dns.kube-system.svc.cluster.local", "gw-mlflow-gateway-gateway-pods.ai.svc.cluster.local"),
        ("own-config", "10.96.0.10", "gw-mlflow-gateway-gateway-pods.ai.svc.k8s.internal"),
    ):
        conf = renders[name].one("ConfigMap", "-nginx")["data"]["nginx.conf"].splitlines()
        changed = [(a.strip(), b.strip()) for a, b in zip(kit, conf) if a != b]
        assert len(conf) == len(kit)
        assert changed == [
            ("resolver 127.0.0.11 valid=5s ipv6=off;", f"resolver {resolver} valid=5s ipv6=off;"),
            ("set $gateway_replicas mlflow-gateway:8000;", f"set $gateway_replicas {fqdn}:8000;"),
            ("set $gateway_replicas mlflow-gateway:8000;", f"set $gateway_replicas {fqdn}:8000;"),
        ], name
    # The rendered file passes the host's `nginx -t` (a resolver by address: -t resolves a name, offline here).
    conf_file = tmp_path / "nginx.conf"
    conf_file.write_text(renders["own-config"].one("ConfigMap", "-nginx")["data"]["nginx.conf"])
    result = subprocess.run(
        [
            "nginx",
            "-t",
            "-c",
            str(conf_file),
            "-p",
            str(tmp_path),
            "-e",
            str(tmp_path / "error.log"),
            "-g",
            f"pid {tmp_path}/nginx.pid;",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    headless = renders["default"].one("Service", "-gateway-pods")
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is False


def test_the_public_service_and_routes_reach_nginx_or_the_pods_with_streaming_safe_settings(renders):
    default = renders["default"]
    assert default.one("Service", "gw-mlflow-gateway")["spec"]["selector"]["app.kubernetes.io/component"] == "nginx"
    ingress = renders["production"].one("Ingress")
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 300
    assert notes["nginx.ingress.kubernetes.io/proxy-body-size"] == "10m"  # = nginx.conf's client_max_body_size
    route = renders["gateway-api"].one("HTTPRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [{"name": "public", "namespace": "gateway-system"}]
    rule = route["spec"]["rules"][0]
    assert rule["backendRefs"] == [{"name": "gw-mlflow-gateway", "port": 5000}]
    assert int(rule["timeouts"]["request"].rstrip("s")) > 300
    # Without nginx the public Service selects the gateway pods.
    svc = renders["gateway-api"].one("Service", "gw-mlflow-gateway")
    assert svc["spec"]["selector"]["app.kubernetes.io/component"] == "gateway"


# ----------------------------------------------------------------------------------------------- observability
def test_prometheus_rule_is_monitoring_alerts_yml_unchanged(renders, tmp_path):
    rule = renders["production"].one("PrometheusRule")
    alerts = yaml.safe_load((REPO / "monitoring/alerts.yml").read_text())
    assert rule["spec"] == alerts
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    # promtool (installed by scripts/setup.sh) accepts the rendered rules as Prometheus rules.
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(rule["spec"]))
    result = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in alerts['groups'])} rules found" in result.stdout


def test_service_monitor_scrapes_each_gateway_pod_once_under_the_alerts_job_name(renders):
    render = renders["production"]
    sm = render.one("ServiceMonitor")
    selected = [
        d
        for d in render.docs
        if d["kind"] == "Service"
        and all(d["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
    ]
    assert [s["metadata"]["name"] for s in selected] == ["gw-mlflow-gateway-gateway-pods"]
    endpoint = sm["spec"]["endpoints"][0]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    assert {"targetLabel": "job", "replacement": "mlflow-gateway"} in endpoint["relabelings"]
    assert 'up{job="mlflow-gateway"}' in (REPO / "monitoring/alerts.yml").read_text()
    assert "ServiceMonitor" not in renders["default"].kinds() and "PrometheusRule" not in renders["default"].kinds()


def test_network_policy_lets_only_the_edge_and_metrics_reach_the_pods(renders):
    prod = renders["production"]
    nginx_pods = [
        {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/name": "mlflow-gateway",
                    "app.kubernetes.io/instance": "gw",
                    "app.kubernetes.io/component": "nginx",
                }
            }
        }
    ]
    gateway = prod.one("NetworkPolicy", "-gateway")["spec"]
    assert gateway["policyTypes"] == ["Ingress", "Egress"]
    assert [rule["from"] for rule in gateway["ingress"]] == [
        nginx_pods,
        VALUE_SETS["production"]["networkPolicy"]["metricsFrom"],
    ]
    # External Redis: any address on 6379; the providers: HTTPS; then the extra rules.
    assert {"port": 443, "protocol": "TCP"} in gateway["egress"][-2]["ports"]
    assert gateway["egress"][-1] == VALUE_SETS["production"]["networkPolicy"]["extraEgress"][0]
    edge = prod.one("NetworkPolicy", "-nginx")["spec"]["ingress"]
    assert edge == [{"ports": [{"port": "http"}], "from": VALUE_SETS["production"]["networkPolicy"]["edgeFrom"]}]
    redis = renders["default"].one("NetworkPolicy", "-redis")["spec"]
    assert (
        redis["egress"] == []
        and redis["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
    )
    assert "NetworkPolicy" not in renders["gateway-api"].kinds()


# ----------------------------------------------------------------------------------------------- the admin page
def admin_docs(render: Render) -> list[dict]:
    return [d for d in render.docs if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "admin"]


def test_the_admin_page_is_off_by_default(renders):
    for name, render in renders.items():
        if name != "admin":
            assert admin_docs(render) == [], name


def test_the_admin_page_may_only_read_and_write_the_client_keys_secret(renders):
    render = renders["admin"]
    assert sorted(d["kind"] for d in admin_docs(render)) == [
        "Deployment",
        "NetworkPolicy",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    assert not {"ClusterRole", "ClusterRoleBinding"} & set(render.kinds())  # nothing cluster-wide
    role = render.one("Role", "-admin")
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["gateway-client-keys"],
            "verbs": ["get", "update", "patch"],
        }
    ]
    binding = render.one("RoleBinding", "-admin")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    pod = render.one("Deployment", "-admin")["spec"]["template"]["spec"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": "ai"}]
    assert pod["serviceAccountName"] != render.gateway()["spec"]["template"]["spec"]["serviceAccountName"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["GATEWAY_ADMIN_KEYS_SECRET"] == "gateway-client-keys"  # the Secret the gateway pods mount
    gateway_keys = {v["name"]: v for v in render.gateway()["spec"]["template"]["spec"]["volumes"]}["client-keys"]
    assert gateway_keys["secret"]["secretName"] == "gateway-client-keys"


def test_the_admin_page_is_one_pod_like_the_gateway_pods_reached_only_through_a_cluster_ip(renders):
    render = renders["admin"]
    deployment = render.one("Deployment", "-admin")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["command"] == ["python", "-m", "gateway_kit.admin"] and c["image"] == render.gateway_container()["image"]
    assert pod["securityContext"] == render.gateway()["spec"]["template"]["spec"]["securityContext"]
    assert c["securityContext"] == render.gateway_container()["securityContext"]
    # Writable: /tmp and the audit log's emptyDir; the ledger claim read-only.
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"] if not m.get("readOnly")}
    assert sorted(writable) == ["/tmp", "/var/lib/gateway-admin"] and all("emptyDir" in v for v in writable.values())
    ledger = next(m for m in c["volumeMounts"] if m["name"] == "ledger")
    assert ledger["readOnly"] is True and volumes["ledger"]["persistentVolumeClaim"]["readOnly"] is True
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}
    assert env["GATEWAY_LEDGER_DIR"] == ledger["mountPath"]
    assert env["GATEWAY_REDIS_URL"] == render.env()["GATEWAY_REDIS_URL"]
    assert env["GATEWAY_ADMIN_REPLICAS"] == render.one("Service", "-gateway-pods")["metadata"]["name"] + ":8000"
    assert volumes["admin-password"]["secret"]["secretName"] == "gateway-admin-password"
    assert "GATEWAY_ADMIN_PASSWORD" not in env  # a file from the Secret, never a value in the pod spec
    service = render.one("Service", "-admin")["spec"]
    assert service["type"] == "ClusterIP" and service["ports"][0]["port"] == 8090
    # No pod may reach it unless admin.ingressFrom says so; it may reach the gateway pods and Redis.
    policy = render.one("NetworkPolicy", "-admin")["spec"]
    assert policy["ingress"] == [] and policy["policyTypes"] == ["Ingress", "Egress"]
    admin_pod = {"podSelector": {"matchLabels": policy["podSelector"]["matchLabels"]}}
    assert admin_pod in render.one("NetworkPolicy", "-gateway")["spec"]["ingress"][-1]["from"]
    assert admin_pod in render.one("NetworkPolicy", "-redis")["spec"]["ingress"][0]["from"]


@pytest.mark.parametrize(
    "values, says",
    [
        ({"admin": {"enabled": True}}, "admin.passwordSecret is needed when admin.enabled is true"),
        (
            {"admin": {"enabled": True, "passwordSecret": "pw"}, "clientKeys": {"keysJson": '{"keys": []}'}},
            "every helm upgrade would put keysJson back over the keys the page added or revoked",
        ),
    ],
)
def test_the_admin_page_without_a_password_secret_or_with_keys_from_values_fails_the_render(values, says, tmp_path):
    result = template(tmp_path, "admin-bad", values)
    assert result.returncode != 0 and says in result.stderr, result.stderr


# ----------------------------------------------------------------------------------------------- the schema
@pytest.mark.parametrize(
    "values, says",
    [
        ({"gateway": {"workers": 0}}, "/gateway/workers"),
        ({"gateway": {"auth": "maybe"}}, "/gateway/auth"),
        ({"gateway": {"gracefulTimeout": "30"}}, "/gateway/gracefulTimeout"),
        ({"gateway": {"env": {"OPENAI_API_KEY": "sk-inline"}}}, "/gateway/env/OPENAI_API_KEY"),
        ({"gateway": {"env": {"GATEWAY_UPSTREAM_RETRIES": 4}}}, "/gateway/env/GATEWAY_UPSTREAM_RETRIES"),
        ({"gateway": {"env": {"GATEWAY_WORKERS": "4"}}}, "/gateway/env/GATEWAY_WORKERS"),  # gateway.workers sets it
        ({"redis": {"onDown": "ignore"}}, "/redis/onDown"),
        ({"redis": {"enabled": False}}, "/redis/external"),
        ({"redis": {"external": {"url": "http://redis:6379"}}}, "/redis/external/url"),
        ({"autoscaling": {"targetCPUUtilizationPercentage": 150}}, "/autoscaling/targetCPUUtilizationPercentage"),
        ({"image": {"tag": 1.0}}, "/image/tag"),
        ({"gatway": {"workers": 2}}, "gatway"),
        ({"httpRoute": {"requestTimeout": "5 minutes"}}, "/httpRoute/requestTimeout"),
        ({"nginx": {"resolver": "10.0.0.10; evil"}}, "/nginx/resolver"),
        ({"admin": {"enabled": True, "passwordSecret": "Admin Password"}}, "/admin/passwordSecret"),
    ],
)
def test_the_schema_rejects_bad_values_at_install_time(values, says, tmp_path):
    result = template(tmp_path, "bad", values)
    assert result.returncode != 0
    assert "don't meet the specifications of the schema" in result.stderr and says in result.stderr, result.stderr
    CHART_FIGURES["bad value sets refused"] += 1


# ----------------------------------------------------------------------------------------------- a real replica
def project_secret(directory: Path, files: dict[str, str], generation: int) -> None:
    """Lay files out as the kubelet mounts a Secret (its atomic writer): <dir>/..<ts>/<file>, ..data -> ..<ts>,
    <file> -> ..data/<file>. A later generation swaps ..data by a rename, as an update does."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = f"..2026_11_28_00_00_{generation:02d}.{generation}"
    (directory / stamp).mkdir()
    for name, text in files.items():
        write_secret(directory / stamp / name, text)
    old = os.readlink(directory / "..data") if (directory / "..data").is_symlink() else None
    os.symlink(stamp, directory / "..data_tmp")
    os.rename(directory / "..data_tmp", directory / "..data")
    for name in files:
        if not (directory / name).is_symlink():
            os.symlink(f"..data/{name}", directory / name)
    if old:
        for child in (directory / old).iterdir():
            child.unlink()
        (directory / old).rmdir()


def pod_env(container: dict, root: Path, fields: dict[str, str]) -> dict[str, str]:
    """A rendered container's env, each path under one of its mounts (but /tmp) moved under `root`; `fields`
    gives the values the kubelet fills in (valueFrom)."""
    mounts = [m["mountPath"] for m in container["volumeMounts"] if m["mountPath"] != "/tmp"]
    env = {}
    for e in container["env"]:
        value = e["value"] if "value" in e else fields[e["name"]]
        if any(value.startswith(path + "/") for path in mounts):
            value = str(root / value.lstrip("/"))
        env[e["name"]] = value
    return env


@pytest.fixture(scope="module")
def rendered_pod(tmp_path_factory):
    """A gateway replica started from the rendered pod: the Deployment's env, its ConfigMap's files and the two
    Secrets laid out as the kubelet mounts them, under a scratch root (paths in the env moved there)."""
    tmp = tmp_path_factory.mktemp("pod")
    keys_script = REPO / "scripts" / "gateway_keys.sh"
    scratch_keys = tmp / "scratch-keys.json"
    first = subprocess.run(
        [str(keys_script), "--file", str(scratch_keys), "add", "team-a"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=30,
        check=True,
    ).stdout.strip()
    with running_fake("127.0.0.1", free_port()) as fake:
        CHART_FIGURES["helm template"] += 1
        render = Render(helm("template", "gw", str(CHART), "--set", f"gateway.env.OPENAI_API_BASE={fake}/v1").stdout)
        pod = render.gateway()["spec"]["template"]["spec"]
        root = tmp / "root"
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        config = render.one("ConfigMap", "-config")["data"]
        for name, text in config.items():
            (root / mounts["config"].lstrip("/")).mkdir(parents=True, exist_ok=True)
            (root / mounts["config"].lstrip("/") / name).write_text(text)
        project_secret(root / mounts["provider-keys"].lstrip("/"), {"OPENAI_API_KEY": SENTINEL_SECRETS["openai"]}, 1)
        client_keys = root / mounts["client-keys"].lstrip("/")
        project_secret(client_keys, {"keys.json": scratch_keys.read_text()}, 1)

        env = pod_env(pod["containers"][0], root, fields={"GATEWAY_REPLICA_ID": "gw-mlflow-gateway-7d9f-abcde"})
        env["GATEWAY_RUNTIME_DIR"] = str(tmp / "run")  # /tmp/gateway, in this test's own scratch space
        env["HOME"] = str(tmp)
        # Limits and Redis are the stack tests' subject; this config has none, so Redis is never asked.
        env.pop("GATEWAY_PORT")
        port = free_port()
        log = tmp / "pod.log"
        proc = start_replica(tmp, port, log=log, timeout=180, **env)
        try:
            yield {
                "url": f"http://127.0.0.1:{port}",
                "log": log,
                "key": first,
                "client_keys": client_keys,
                "scratch_keys": scratch_keys,
                "env": env,
                "tmp": tmp,
            }
        finally:
            stop_group(proc.pid)


@pytest.mark.integration
def test_the_rendered_pod_starts_and_serves_with_keys_from_secret_files(rendered_pod):
    url, key = rendered_pod["url"], rendered_pod["key"]
    r = requests.post(
        f"{url}/gateway/chat/invocations",
        json={"messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {key}", "X-Request-ID": "helm-pod-1"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.headers["X-Gateway-Replica"] == "gw-mlflow-gateway-7d9f-abcde"
    assert (
        requests.post(
            f"{url}/gateway/chat/invocations", json={"messages": [{"role": "user", "content": "x"}]}, timeout=30
        ).status_code
        == 401
    )
    assert not (rendered_pod["tmp"] / "ledger").exists()  # GATEWAY_LEDGER_DIR=off: stdout only


@pytest.mark.integration
def test_a_client_keys_secret_update_reaches_the_running_pod_without_a_restart(rendered_pod):
    url = rendered_pod["url"]
    second = subprocess.run(
        [str(REPO / "scripts/gateway_keys.sh"), "--file", str(rendered_pod["scratch_keys"]), "add", "team-b"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=30,
        check=True,
    ).stdout.strip()
    body = {"messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {second}"}
    assert requests.post(f"{url}/gateway/chat/invocations", json=body, headers=headers, timeout=30).status_code == 401
    project_secret(rendered_pod["client_keys"], {"keys.json": rendered_pod["scratch_keys"].read_text()}, 2)
    for _ in range(50):  # each worker looks at the file at most once a second; bounded, not timed
        r = requests.post(f"{url}/gateway/chat/invocations", json=body, headers=headers, timeout=30)
        if r.status_code == 200:
            break
        time.sleep(0.2)
    assert r.status_code == 200, r.text


@pytest.mark.integration
def test_analyze_costs_reads_the_pods_stdout_as_kubectl_logs_and_node_log_files_give_it(rendered_pod, tmp_path):
    url, key = rendered_pod["url"], rendered_pod["key"]
    for i in range(3):
        r = requests.post(
            f"{url}/gateway/chat/invocations",
            json={"messages": [{"role": "user", "content": "x"}]},
            headers={"Authorization": f"Bearer {key}", "X-Request-ID": f"helm-cost-{i}"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
    ours: list[str] = []
    for _ in range(50):  # a record is written once the answer is sent, so the last may trail it; bounded
        lines = rendered_pod["log"].read_text().splitlines()
        ours = [ln for ln in lines if '"type":"usage"' in ln and '"request_id":"helm-cost-' in ln]
        if len(ours) == 3:
            break
        time.sleep(0.1)
    assert len(ours) == 3, ours
    pod = "gw-mlflow-gateway-7d9f-abcde"
    # `kubectl logs -l ... --prefix` and the CRI log files under /var/log/pods that log pipelines tail.
    kubectl = "".join(f"[pod/{pod}/gateway] {ln}\n" for ln in ours)
    cri = "".join(f"2026-11-28T18:00:0{i}.000000001Z stdout F {ln}\n" for i, ln in enumerate(ours))
    (tmp_path / "0.log").write_text(cri)
    for args, stdin in ((["-"], kubectl), (["--log-file", str(tmp_path / "0.log")], None)):
        result = subprocess.run(
            [sys.executable, str(REPO / "analyze_costs.py"), *args, "--json"],
            input=stdin,
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["requests"]["total"] == 3 and report["requests"]["ok"] == 3, report["requests"]


@pytest.mark.integration
def test_the_probe_paths_answer_without_a_client_key_on_a_pod_with_keys_on(rendered_pod):
    """The kubelet's probes and Prometheus send no client key: /health, /ready and /metrics must not need one."""
    for path in ("/health", "/ready", "/metrics"):
        r = requests.get(rendered_pod["url"] + path, timeout=10)
        assert r.status_code == 200, f"{path}: {r.status_code} {r.text[:200]}"


@pytest.fixture
def rendered_admin(tmp_path):
    """The admin page started from the rendered Deployment (its command and env; the config, the password Secret
    and its service account's files laid out as the kubelet mounts them under a scratch root) against a fake
    Kubernetes API server holding the client-keys Secret (tests/fake_kube_api.py)."""
    CHART_FIGURES["helm template"] += 1
    render = Render(
        helm(
            "template", "gw", str(CHART), "-n", "ai", "--set", "admin.enabled=true",
            "--set", "admin.passwordSecret=gateway-admin-password",
        ).stdout
    )  # fmt: skip
    pod = render.one("Deployment", "-admin")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    root = tmp_path / "root"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    for name, text in render.one("ConfigMap", "-config")["data"].items():
        (root / mounts["config"].lstrip("/")).mkdir(parents=True, exist_ok=True)
        (root / mounts["config"].lstrip("/") / name).write_text(text)
    password = SENTINEL_SECRETS["admin-password"]
    items = {v["name"]: v for v in pod["volumes"]}["admin-password"]["secret"]["items"]
    (root / mounts["admin-password"].lstrip("/")).mkdir(parents=True)
    write_secret(root / mounts["admin-password"].lstrip("/") / items[0]["path"], password + "\n")
    env = pod_env(container, root, fields={})
    keys_secret = env["GATEWAY_ADMIN_KEYS_SECRET"]
    with running_kube_api(tmp_path / "apiserver", "ai", keys_secret, '{"keys": []}') as api:
        host, port = api.url.removeprefix("https://").split(":")
        env |= {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port, "GATEWAY_ADMIN_HOST": "127.0.0.1"}
        env["GATEWAY_ADMIN_PORT"] = str(free_port())
        # The command as rendered, with the one path a pod does not choose moved: the service account's directory.
        assert container["command"][:2] == ["python", "-m"], container["command"]
        run = (
            "import runpy, sys; from pathlib import Path; from gateway_kit.admin import key_writers; "
            "_, account, module = sys.argv; key_writers.SERVICE_ACCOUNT = Path(account); sys.argv = [module]; "
            "runpy.run_module(module, run_name='__main__', alter_sys=True)"
        )
        log = tmp_path / "admin.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-c", run, str(api.account), container["command"][2]],
                env=clean_env(**env),
                cwd=REPO,  # this checkout's gateway_kit, as the image has its own at /app
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{env['GATEWAY_ADMIN_PORT']}"
        try:
            wait_http(f"{url}/health", timeout=60, proc=proc)
            yield {"url": url, "api": api, "log": log, "password": password, "root": root, "env": env}
        finally:
            stop_group(proc.pid)


def admin_session(url: str, password: str) -> tuple[requests.Session, str]:
    """A logged-in session and the page it was shown."""
    session = requests.Session()
    session.trust_env = False
    r = session.post(f"{url}/login", data={"who": "dana", "password": password}, timeout=30)
    assert r.status_code == 200 and r.url == f"{url}/", (r.status_code, r.url)
    return session, r.text


@pytest.mark.integration
def test_the_rendered_admin_page_adds_and_revokes_keys_in_the_client_keys_secret(rendered_admin, tmp_path):
    url, api = rendered_admin["url"], rendered_admin["api"]
    session, page = admin_session(url, rendered_admin["password"])
    assert f"in the Secret ai/{api.name}" in page and "about a minute" in page
    # No ledger claim: the figures say why they are missing, not an error.
    assert "no ledger here (GATEWAY_LEDGER_DIR=off)" in page and "ledger.existingClaim" in page
    csrf = re.search(r'name=csrf value="([^"]+)"', page).group(1)

    api.interfere = 1  # another writer changes the Secret between the page's read and its write
    r = session.post(f"{url}/keys", data={"client": "team-new", "csrf": csrf}, timeout=30)
    assert r.status_code == 200, r.text
    key = re.search(r"<output class=key id=new-key>(gwk_[^<]+)</output>", r.text).group(1)
    assert "Every replica accepts it within about a minute" in r.text
    assert [c for c in api.calls if c[0] == "PUT"] == [("PUT", 409), ("PUT", 200)]  # the stale write retried
    assert sorted(e["client"] for e in api.keys()) == ["other-writer", "team-new"]
    mounted = tmp_path / "keys.json"  # keys.json as the kubelet projects it into every gateway pod
    mounted.write_text(api.keys_text())
    assert keys.KeyStore(mounted).client_of(key) == "team-new"  # the replicas' own reader
    assert key not in api.keys_text()

    r = session.post(
        f"{url}/keys/revoke", data={"client": "team-new", "prefix": key[: keys.SHOWN], "csrf": csrf}, timeout=30
    )
    assert r.status_code == 200 and "refuses it within about a minute" in r.text, r.text
    assert [e["client"] for e in api.keys()] == ["other-writer"]
    mounted.write_text(api.keys_text())
    assert keys.KeyStore(mounted).client_of(key) is None

    audit = [
        json.loads(line) for line in Path(rendered_admin["env"]["GATEWAY_ADMIN_AUDIT_LOG"]).read_text().splitlines()
    ]
    assert [(a["action"], a.get("client")) for a in audit] == [
        ("login", None),
        ("key_added", "team-new"),
        ("key_revoked", "team-new"),
    ]
    assert all(a["who"] == "dana" for a in audit)
    stdout = rendered_admin["log"].read_text()
    assert '"action": "key_added"' in stdout  # the audit line on stdout too: kubectl logs is the lasting trail
    assert key not in stdout and rendered_admin["password"] not in stdout


@pytest.mark.integration
def test_the_rendered_admin_page_refuses_a_client_key_of_the_secret_as_its_password(rendered_admin):
    url, api = rendered_admin["url"], rendered_admin["api"]
    session, page = admin_session(url, rendered_admin["password"])
    csrf = re.search(r'name=csrf value="([^"]+)"', page).group(1)
    key = re.search(
        r"id=new-key>(gwk_[^<]+)<",
        session.post(f"{url}/keys", data={"client": "team-a", "csrf": csrf}, timeout=30).text,
    ).group(1)
    r = requests.post(f"{url}/login", data={"who": "mallory", "password": key}, timeout=30, allow_redirects=False)
    assert r.status_code == 401 and "wrong password" in r.text
    audit = Path(rendered_admin["env"]["GATEWAY_ADMIN_AUDIT_LOG"]).read_text()
    assert '"reason": "client_key"' in audit and key not in audit
    assert {e["client"] for e in api.keys()} == {"team-a"}


def test_install_notes_say_how_to_add_client_keys_and_read_usage_records():
    """`helm install --dry-run=client` renders everything, NOTES.txt included, without a cluster."""
    CHART_FIGURES["helm template"] += 1
    out = helm(
        "install", "gw", str(CHART), "-n", "ai", "--dry-run=client", "--set", "monitoring.serviceMonitor.enabled=true"
    ).stdout
    notes = out[out.index("NOTES:") :]
    assert "create secret generic gw-mlflow-gateway-client-keys --from-file=keys.json=keys/keys.json" in " ".join(
        notes.replace("\\\n", " ").split()
    )
    assert "python analyze_costs.py -" in notes and "--tail=-1" in notes  # kubectl logs -l keeps 10 lines otherwise
    assert "networkPolicy.metricsFrom is empty" in notes
