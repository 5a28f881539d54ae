"""What operators do to the running prod stack, under an open-loop load (evaluate_gateway.py --rate), with figures.

Every test starts from the shared prod stack put back in shape by the `prod` fixture (3 healthy replicas, the prod
file alone) and measures what a user of the stack sees: failed requests, streams that finish, records that agree.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from .conftest import (
    CHAT,
    GATEWAY,
    REPLICAS,
    STREAM,
    Project,
    figure,
    in_flight,
    ledger_records,
    start_load,
    start_time,
)

pytestmark = [pytest.mark.integration, pytest.mark.containers]


def docker_events(project: Project, since: float, event: str) -> list[dict]:
    """The engine's `event` events of gateway replicas since unix time `since` (time: unix seconds)."""
    out = project.engine.docker(
        "events",
        "--since",
        f"{since:.3f}",
        "--until",
        f"{time.time():.3f}",
        "--filter",
        f"event={event}",
        "--filter",
        "label=com.docker.compose.service=mlflow-gateway",
        "--format",
        "{{json .}}",
    ).stdout
    return [{**e, "time": e["timeNano"] / 1e9} for e in map(json.loads, out.splitlines())]


def failures(doc: dict) -> list[dict]:
    return [r for r in doc["requests"] if r["outcome"] != "pass"]


def test_scaling_to_5_and_back_to_2_under_load_fails_nothing_and_drains_streams(prod: Project, tmp_path):
    load = start_load(prod.engine, tmp_path, [CHAT, STREAM], rate=8, duration=300)
    time.sleep(5)
    start = time.monotonic()
    up = prod.script("scripts/scale.sh", "5")
    assert up.returncode == 0, up.stdout + up.stderr
    figure("scale.sh 5 under load (3 -> 5 healthy)", f"{time.monotonic() - start:.0f} s")
    five = prod.hostnames()
    time.sleep(7)  # nginx re-resolves the service every 5 s: the new replicas take their share
    down_at, start = time.time(), time.monotonic()
    down = prod.script("scripts/scale.sh", "2")
    assert down.returncode == 0, down.stdout + down.stderr
    figure("scale.sh 2 under load (5 -> 2, streams drained)", f"{time.monotonic() - start:.0f} s")
    doc = load.stop(after=3)

    requests, removed = doc["requests"], five - prod.hostnames()
    stops = {e["id"][:12]: e["time"] for e in docker_events(prod, down_at, "kill")}  # hostname = short id
    assert set(stops) == removed, (stops, removed)
    drained = [r for r in requests if r["stream"] and r["replica"] in stops and in_flight(r, stops[r["replica"]])]
    figure(
        "scale 5 -> 2 under load: requests, failed, streams in flight at their replica's SIGTERM",
        f"{len(requests)}, {len(failures(doc))}, {len(drained)}",
    )
    assert not failures(doc), failures(doc)[:5]
    assert drained, "no stream was in flight on a removed replica when it was stopped: nothing was proven"
    assert all(r["chunks"] >= 30 and not r["partial"] for r in drained)
    assert five <= {r["replica"] for r in requests}, "a replica added by scale.sh 5 never got traffic"


def test_a_replica_killed_under_load_fails_only_requests_it_was_answering(prod: Project, tmp_path):
    """`docker kill` (SIGKILL): requests nginx had already sent to that replica fail (a POST is never sent twice);
    every other request, and every one sent after the kill, is answered."""
    load = start_load(prod.engine, tmp_path, [CHAT], rate=20, duration=300)
    time.sleep(5)
    victim = prod.containers("mlflow-gateway")[0]
    victim_host = prod.inspect(victim)["Config"]["Hostname"]
    before = time.time()
    prod.engine.docker("kill", victim)
    doc = load.stop(after=5)  # nginx's DNS answer lists the dead replica for up to 5 s more
    # From the signal to the death, by the engine's clock (the CLI's start-up would blur it by tens of ms): a dying
    # replica's workers may still accept a connection for some milliseconds after the SIGKILL is sent.
    victim_id = prod.inspect(victim)["Id"]
    signalled, died = (
        next(e["time"] for e in docker_events(prod, before - 1, event) if e["id"] == victim_id)
        for event in ("kill", "die")
    )

    def exposed(r: dict) -> bool:  # in flight at some moment while the victim was dying
        return in_flight(r, signalled) or in_flight(r, died) or signalled <= start_time(r) <= died

    failed, requests = failures(doc), doc["requests"]
    at_risk = [r for r in requests if exposed(r)]
    figure(
        "docker kill under load (20/s, 100 ms answers): requests, failed, in flight while the replica died",
        f"{len(requests)}, {len(failed)}, {len(at_risk)} (SIGKILL to death: {1000 * (died - signalled):.0f} ms); "
        f"restarted by docker: {prod.inspect(victim)['State']['Running']}",
    )
    # The bound: a request can fail only if nginx had already sent it to the victim, so only a request in flight
    # while it died (about rate x latency = 2 at a time, a third of them on the victim); nothing sent after its death
    # fails, because nginx passes a refused or unanswered connection to the next replica and never resends a POST.
    assert all(exposed(r) for r in failed), [(r["seq"], r["started_at"], r["error"], signalled, died) for r in failed]
    assert len(failed) <= len(at_risk)
    assert victim_host in {r["replica"] for r in requests}, "the killed replica had no traffic: nothing was proven"


def test_a_crashed_replica_is_restarted_by_docker(prod: Project):
    """`docker kill` counts as a manual stop, so `restart: unless-stopped` leaves that replica down (the test above).
    A crash is different: the replica's process killed from outside docker (as the kernel's OOM killer does) is
    restarted by docker, and the same container turns healthy again."""
    victim = prod.containers("mlflow-gateway")[0]
    before = prod.inspect(victim)
    cgroup = Path(f"/proc/{before['State']['Pid']}/cgroup")
    if not cgroup.is_file() or before["Id"] not in cgroup.read_text():  # an engine in a VM (Docker Desktop)
        pytest.skip("the engine's processes are not visible from here: a crash cannot be simulated")
    os.kill(before["State"]["Pid"], signal.SIGKILL)
    start = time.monotonic()
    while time.monotonic() - start < 180:
        state = prod.inspect(victim)["State"]
        if state["StartedAt"] != before["State"]["StartedAt"] and state.get("Health", {}).get("Status") == "healthy":
            break
        time.sleep(2)
    else:
        pytest.fail(f"the crashed replica is not healthy again after 180 s: {state}")
    figure(
        "a crashed replica (SIGKILL from outside docker): restarted and healthy after",
        f"{time.monotonic() - start:.0f} s (restart count {prod.inspect(victim)['RestartCount']})",
    )


LIMITED = "completions"  # its own limit in the override config below: LIMIT calls per hour, for every client
LIMIT = 5


def limits_override(project: Project) -> str:
    """An override file mounting a config.yaml with limits: every endpoint limited (high), `completions` to LIMIT
    calls an hour. Returns the override's file name (in the project)."""
    config = yaml.safe_load((project.root / "config.yaml").read_text())
    config["limits"] = {"endpoint": {"calls": 100000, "renewal_period": "hour"}}
    for endpoint in config["endpoints"]:
        if endpoint["name"] == LIMITED:
            endpoint["limit"] = {"calls": LIMIT, "renewal_period": "hour"}
    (project.root / "config.limits.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (project.root / "limits.override.yml").write_text(
        yaml.safe_dump({"services": {"mlflow-gateway": {"volumes": ["./config.limits.yaml:/app/config.yaml:ro"]}}})
    )
    return "limits.override.yml"


def test_redis_restart_under_load_serves_everything_and_limits_resume_with_their_counts(prod: Project, tmp_path):
    """GATEWAY_LIMITS_ON_REDIS_DOWN=open (the default, docs/limits-and-keys.md): while Redis restarts, requests
    are served without limits and each worker says so in its log; afterwards limits apply again, exactly across
    replicas, with the counts Redis kept in its append-only file."""
    prod.up(limits_override(prod))
    body = json.dumps({"prompt": "count me"})
    url = f"{GATEWAY}/gateway/{LIMITED}/invocations"
    before = prod.engine.net_json("posts", url, "3", body)
    assert [r["status"] for r in before] == [200] * 3, before

    load = start_load(prod.engine, tmp_path, [CHAT], rate=10, duration=300)
    time.sleep(4)
    restart_at, start = time.time(), time.monotonic()
    prod.compose("restart", "redis")
    figure("docker compose restart redis", f"{time.monotonic() - start:.1f} s")
    doc = load.stop(after=4)
    time.sleep(2)  # a worker leaves Redis alone for 1 s after a failure
    after = prod.engine.net_json("posts", url, str(LIMIT), body)

    statuses = Counter(r["status"] for r in after)
    logs = "".join(
        prod.engine.docker("logs", "--since", f"{restart_at:.0f}", c).stderr for c in prod.containers("mlflow-gateway")
    )
    figure(
        "redis restart under load (10/s): requests, failed; then LIMIT=5 with 3 used before: statuses",
        f"{len(doc['requests'])}, {len(failures(doc))}; {dict(statuses)}",
    )
    assert not failures(doc), failures(doc)[:5]
    assert "served WITHOUT limits" in logs, "no replica logged that Redis was down and limits were off"
    assert statuses == {200: LIMIT - 3, 429: 3}, after  # the 3 calls before the restart still count


def test_analyze_costs_compose_agrees_with_the_ledger_record_for_record(prod: Project, tmp_path):
    """`analyze_costs.py --compose` (docker logs of every replica) and the ledger volume: the same requests, with the
    same tokens and cost, for the replicas running now (a replica's logs go with its container; the ledger stays)."""
    prod.engine.net_json("openai-chats", GATEWAY, "12")
    time.sleep(1.5)  # the ledger writer flushes within a second

    def report(*args: str) -> dict:
        result = prod.engine.run_in_net(
            prod.engine.env["PYTHON"], "analyze_costs.py", *args, "--json", "--details", cwd=prod.root
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return json.loads(result.stdout)

    hosts = prod.hostnames()
    ours = tmp_path / "ledger"
    ours.mkdir()
    (ours / "usage-current-replicas.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in ledger_records(prod.engine) if r.get("replica") in hosts)
    )

    def by_id(doc: dict) -> dict[str, tuple]:
        return {
            r["request_id"]: (r["replica"], r["prompt_tokens"], r["completion_tokens"], r["cost_usd"])
            for r in doc["requests_detail"]
        }

    from_logs, from_ledger = by_id(report("--compose")), by_id(report("--ledger", str(ours)))
    figure(
        "analyze_costs.py --compose vs the ledger (replicas running now)",
        f"{len(from_logs)} records from docker logs, {len(from_ledger)} from the ledger",
    )
    assert len(from_logs) >= 12
    assert from_logs == from_ledger


def test_provider_key_from_a_compose_secret_file_is_used_and_never_shown(prod: Project, tmp_path):
    """The prod file's commented `secrets:` example, uncommented as its comment says: the key in
    ./secrets/openai_api_key reaches the provider, and appears in no `docker inspect`, log or ledger record."""
    from conftest import SENTINEL_SECRETS, write_secret
    from gateway_kit.fake_upstream import key_fingerprint

    key = SENTINEL_SECRETS["openai"]
    text = (prod.root / "docker-compose.prod.yml").read_text()
    uncommented = text.replace(
        "    # secrets:\n    #   - openai_api_key\n", "    secrets:\n      - openai_api_key\n"
    ).replace(
        "# secrets:\n#   openai_api_key:\n#     file: ./secrets/openai_api_key\n",
        "secrets:\n  openai_api_key:\n    file: ./secrets/openai_api_key\n",
    )
    assert uncommented.count("openai_api_key") == text.count("openai_api_key") and uncommented != text
    (prod.root / "docker-compose.secrets.yml").write_text(uncommented)
    # As the comment says: a file the container's uid 10001 can read, in a folder only its owner can enter.
    write_secret(prod.root / "secrets" / "openai_api_key", key).chmod(0o644)
    (prod.root / "secrets").chmod(0o700)
    secrets_stack = Project(prod.engine, prod.root, "docker-compose.secrets.yml")
    # The provider is the fake (it records a fingerprint of every key it receives), reached as a real one would be.
    secrets_stack.up(extra_env={"OPENAI_API_BASE": "http://fake-llm:9000/v1"})
    # With a real provider key the gateway wants client keys (GATEWAY_AUTH=auto): one, made as operators do.
    added = prod.script("scripts/gateway_keys.sh", "add", "secrets-test")
    assert added.returncode == 0, added.stderr
    try:
        answers = prod.engine.net_json("openai-chats", GATEWAY, "3", added.stdout.strip())
    finally:
        prod.script("scripts/gateway_keys.sh", "revoke", "secrets-test")
    stats = json.loads(
        prod.engine.docker(
            "exec",
            prod.containers("fake-llm")[0],
            "python",
            "-c",
            "import urllib.request as u; print(u.build_opener(u.ProxyHandler({}))"
            ".open('http://127.0.0.1:9000/_fake/stats').read().decode())",
        ).stdout
    )
    assert all(a["content"] for a in answers)
    fingerprint = key_fingerprint(key)  # assertions name the fingerprint, never the key
    assert fingerprint in stats["key_fingerprints"], stats["key_fingerprints"]
    seen = {
        "docker inspect": prod.engine.docker("inspect", *prod.engine.docker("ps", "-aq").stdout.split()).stdout,
        "docker compose logs": secrets_stack.compose("--profile", "demo", "logs", "--no-color").stdout,
        "ledger": json.dumps(ledger_records(prod.engine)),
    }
    leaked = [where for where, text in seen.items() if key in text]
    assert not leaked, f"the provider key appears in: {leaked}"
    assert "DEMO MODE" not in seen["docker compose logs"]
    figure("provider key from ./secrets/openai_api_key", "reached the provider; in no inspect, log or ledger")


def test_monitoring_profile_scrapes_every_replica_and_follows_scale(prod: Project):
    """Prometheus (profile monitoring) finds the replicas by DNS, sees a new one after scripts/scale.sh, and loads
    every alert rule of monitoring/alerts.yml."""
    if prod.engine.docker("image", "inspect", "grafana/grafana:12.0.2", check=False).returncode != 0:
        figure(
            "grafana",
            "NOT TESTED: no grafana/grafana image here (no registry, no Debian package); "
            "the monitoring profile's Prometheus is",
        )
    prod.compose("--profile", "monitoring", "up", "-d", "--no-build", "--wait", "prometheus", timeout=300)
    prometheus = prod.containers("prometheus")[0]

    def api(path: str) -> dict:
        out = prod.engine.docker("exec", prometheus, "wget", "-q", "-O", "-", f"http://127.0.0.1:9090/api/v1/{path}")
        return json.loads(out.stdout)["data"]

    def healthy_targets(want: int, timeout: float = 90) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            targets = api("targets")["activeTargets"]
            if sum(t["health"] == "up" for t in targets) == want == len(targets):
                return time.monotonic() - start
            time.sleep(2)
        pytest.fail(f"prometheus: {[(t['labels'].get('instance'), t['health']) for t in targets]}, wanted {want} up")

    try:
        healthy_targets(REPLICAS)
        rules = [r["name"] for g in api("rules")["groups"] for r in g["rules"] if r["type"] == "alerting"]
        shipped = [
            r["alert"]
            for g in yaml.safe_load((prod.root / "monitoring/alerts.yml").read_text())["groups"]
            for r in g["rules"]
            if "alert" in r
        ]
        assert sorted(rules) == sorted(shipped)
        scaled = prod.script("scripts/scale.sh", str(REPLICAS + 1))
        assert scaled.returncode == 0, scaled.stdout + scaled.stderr
        took = healthy_targets(REPLICAS + 1)
        figure(
            "prometheus: alert rules loaded; a replica added by scale.sh scraped after",
            f"{len(rules)} rules; {took:.0f} s",
        )
    finally:
        prod.compose("--profile", "monitoring", "rm", "--stop", "--force", "prometheus", check=False)


def test_docker_compose_build_needs_no_docker_hub(prod: Project):
    """`docker compose build` on the engine whose network has no way out: nothing beyond the base image is fetched
    (no BuildKit frontend image: the Dockerfile has no `# syntax` line). Its layers come from the cache the engine's
    `docker build --network host .` made: the compose files build with the same network, so they share it."""
    tag = "mlflow-gateway:compose-build"
    start = time.monotonic()
    try:
        built = prod.compose("--profile", "demo", "build", extra_env={"GATEWAY_IMAGE": tag}, check=False)
        assert built.returncode == 0, built.stdout + built.stderr
        figure("docker compose build (cached layers, no way out)", f"{time.monotonic() - start:.1f} s")
        layers = [
            prod.engine.docker("image", "inspect", "--format", "{{json .RootFS.Layers}}", image).stdout
            for image in (tag, "mlflow-gateway:local")
        ]
        assert layers[0] == layers[1]
    finally:
        prod.engine.docker("image", "rm", tag, check=False)
