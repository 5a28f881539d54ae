"""The kit's compose files run by a real Docker Engine, as a user runs them (docs/containers.md).

Every stack is started from a copy of the kit's files with the demo profile (the bundled fake LLM: no provider key),
and taken down (volumes included) by the fixture, on failure too. Figures go to the terminal summary.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest

from .conftest import GATEWAY, REPLICAS, Engine, Project, figure, ledger_records, make_project

pytestmark = [pytest.mark.integration, pytest.mark.containers]


def wait_healthy(project: Project, service: str, count: int, timeout: float = 300) -> float:
    """Seconds until `count` containers of `service` are healthy (bounded; fails with their states)."""
    start = time.monotonic()
    states: list[str] = []
    while time.monotonic() - start < timeout:
        states = [project.inspect(c)["State"].get("Health", {}).get("Status", "?") for c in project.containers(service)]
        if states.count("healthy") == count:
            return time.monotonic() - start
        time.sleep(2)
    logs = [project.engine.docker("logs", "--tail", "30", c, check=False) for c in project.containers(service)]
    pytest.fail(
        f"{service}: {states} after {timeout:.0f}s, wanted {count} healthy; their last log lines:\n"
        + "\n".join(log.stdout + log.stderr for log in logs)
    )


# ------------------------------------------------------------------------------------------------ dev file
@pytest.fixture
def dev_stack(engine: Engine, tmp_path) -> Iterator[Project]:
    project = make_project(engine, tmp_path, "docker-compose.yml")
    # The shared prod stack, when a test before this one started it, is the same compose project and holds
    # port 5000: take it down (the `prod` fixture brings it back for the next test that needs it).
    project.down()
    try:
        yield project
    finally:
        project.down()


def test_dev_file_starts_one_healthy_replica_that_answers_health_and_a_chat(dev_stack):
    start = time.monotonic()
    dev_stack.compose("--profile", "demo", "up", "-d", "--no-build")
    wait_healthy(dev_stack, "mlflow-gateway", 1)
    figure("dev file: up -d (demo) to healthy", f"{time.monotonic() - start:.0f} s")

    health = dev_stack.engine.net_json("get", f"{GATEWAY}/health")
    assert health["status"] == 200, health
    answers = dev_stack.engine.net_json("openai-chats", GATEWAY, "1")
    assert answers[0]["content"], answers


# ----------------------------------------------------------------------------------------------- prod file
def test_prod_passes_check_gateway_with_its_container_checks(prod):
    result = prod.script("./check_gateway.sh")
    assert result.returncode == 0, result.stdout + result.stderr
    # The container check saw every replica (one line each), not the "engine not reachable" skip.
    assert result.stdout.count("mlflow-gateway-mlflow-gateway-") >= REPLICAS, result.stdout
    assert "docker engine not reachable" not in result.stdout + result.stderr


def test_the_official_openai_client_answers_through_nginx_and_traffic_reaches_every_replica(prod):
    answers = prod.engine.net_json("openai-chats", GATEWAY, "30")
    assert all(a["content"] for a in answers)
    replicas = Counter(a["replica"] for a in answers)
    figure("30 chats through nginx :5000, per replica", ", ".join(f"{n}" for n in sorted(replicas.values())))
    hostnames = {prod.inspect(c)["Config"]["Hostname"] for c in prod.containers("mlflow-gateway")}
    assert set(replicas) == hostnames, (replicas, hostnames)


def test_replicas_run_hardened(prod):
    for container in prod.containers("mlflow-gateway"):
        info = prod.inspect(container)
        host = info["HostConfig"]
        assert host["ReadonlyRootfs"] is True
        assert info["Config"]["User"] == "10001:10001"
        assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
        assert "no-new-privileges:true" in host["SecurityOpt"]
        assert host["Memory"] == 1024**3 and host["NanoCpus"] == 10**9
        # What the process really has: uid 10001, no effective capability, and / is read-only.
        probe = prod.engine.docker(
            "exec",
            container,
            "sh",
            "-c",
            "id -u; grep CapEff /proc/self/status; grep NoNewPrivs /proc/self/status; touch /probe",
            check=False,
        )
        uid, cap_eff, no_new_privs = probe.stdout.split("\n")[:3]
        assert uid == "10001"
        assert cap_eff.split()[1] == "0000000000000000"
        assert no_new_privs.split()[1] == "1"
        assert probe.returncode != 0 and "Read-only file system" in probe.stderr
    redis = prod.inspect(prod.containers("redis")[0])["HostConfig"]
    assert redis["ReadonlyRootfs"] is True and redis["Memory"] == 256 * 1024**2


def test_every_service_logs_to_rotated_json_files(prod):
    for service in ("mlflow-gateway", "nginx", "redis", "fake-llm"):
        for container in prod.containers(service):
            log_config = prod.inspect(container)["HostConfig"]["LogConfig"]
            assert log_config == {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "5"}}, service


def test_usage_records_survive_down_and_up(prod):
    """The stack down (without -v) and up again: the ledger volume keeps every record."""
    prod.engine.net_json("openai-chats", GATEWAY, "6")
    before = ledger_records(prod.engine)
    assert len(before) >= 6
    prod.compose("--profile", "demo", "down", "--timeout", "30")
    assert not prod.containers("mlflow-gateway")
    prod.up()
    prod.engine.net_json("openai-chats", GATEWAY, "2")
    after = ledger_records(prod.engine)
    ids = [r.get("request_id") for r in after]
    assert all(r in after for r in before), "a usage record written before `down` is gone after `up`"
    assert len(after) >= len(before) + 2 and len(set(ids)) == len(ids)
    figure("ledger across down/up", f"{len(before)} records before, {len(after)} after")


# --------------------------------------------------------------------------------------------------- engine
def test_a_provisioned_engine_leaves_the_host_network_alone(engine):
    """Interfaces, routes, iptables rules and ip_forward on the host are as they were before the engine came up
    (its bridge, NAT rules and DNS live in its own namespace); the session's teardown checks again after `stop`."""
    if engine.netns is None:
        pytest.skip("the machine's own engine: its network is its owner's business")
    from .conftest import host_network

    now = host_network()
    assert {k: v for k, v in now.items() if v != engine.host_before[k]} == {}
    in_netns = engine.run_in_net("ip", "-o", "link").stdout
    assert "docker0" in in_netns and "docker0" not in now["interfaces"]
