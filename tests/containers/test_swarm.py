"""The prod stack on a real 3-node Docker swarm (docker-stack.yml, scripts/swarm_stack.sh, docs/swarm.md).

The `swarm_stack` fixture (once per module) builds the nodes here: three dockerd (the engine scripts/docker_engine.sh unpacked), each in a
network namespace of its own (a "host") with its own data-root, joined by veth pairs to a bridge in a fourth
namespace, on a private /24 that exists only inside those namespaces. It loads the kit's images into every node,
makes the swarm (init, join), labels node 1 for Redis, deploys the stack and removes it all afterwards, on failure
too: daemons stopped by pid, namespaces and data folders deleted, the host's network as before. The `swarm` fixture
puts it back in shape before each test (every node Ready, one gateway replica on each).

This kernel has no IPVS; docker-stack.yml needs none (dnsrr endpoints, nginx on a host-mode port of every node).
Requests go to node 1's nginx (127.0.0.1:5000 inside node 1's namespace) unless a test says otherwise.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from .conftest import (
    CHAT,
    ENGINE_SCRIPT,
    GATEWAY,
    Engine,
    figure,
    host_network,
    in_flight,
    make_project,
    STREAM,
    start_load,
    start_time,
)

pytestmark = [pytest.mark.integration, pytest.mark.containers]

STACK = "mlflow-gateway"  # the stack name the docs use: services are mlflow-gateway_<service>
GATEWAY_SERVICE = f"{STACK}_mlflow-gateway"
SUBNET = "10.213.14"  # the nodes' addresses, inside the test's namespaces only
ADDR_POOL = "10.214.0.0/16"  # the swarm's overlay networks (--default-addr-pool)
NODES = 3
LIMITED, LIMIT, CONCURRENT = "completions", 5, 15


def wait_for(what: str, check, timeout: float, every: float = 1.0):
    """check() until it returns something true (returned), at most `timeout` seconds; then fail saying what."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        result = check()
        if result:
            return result
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Node:
    """One swarm host: a dockerd in network namespace `netns`, its files under `root`."""

    name: str
    netns: str
    addr: str
    root: Path
    engine: Engine  # its docker CLI (DOCKER_HOST) and namespace (run_in_net: its 127.0.0.1:5000 is its nginx)
    proc: subprocess.Popen | None = None

    @property
    def sock(self) -> Path:
        return self.root / "docker.sock"

    def write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        config = {
            "data-root": str(self.root / "data"),
            "exec-root": str(self.root / "exec"),
            "pidfile": str(self.root / "dockerd.pid"),
            "hosts": [f"unix://{self.sock}"],
            "storage-driver": "overlay2",
            "cgroup-parent": self.cgroup_parent,
            "log-level": "warn",
            "iptables": True,
            "ip-forward": True,
        }
        (self.root / "daemon.json").write_text(json.dumps(config, indent=2))

    def start(self) -> None:
        with open(self.root / "dockerd.log", "a") as log:
            self.proc = subprocess.Popen(
                [str(ENGINE_SCRIPT), "dockerd", self.netns, str(self.root / "daemon.json")],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

        def answers() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name}'s dockerd exited {self.proc.returncode}: {self.log_tail()}")
            return self.engine.docker("info", check=False, timeout=10).returncode == 0

        wait_for(f"{self.name}'s dockerd", answers, 60)

    @property
    def cgroup_parent(self) -> str:
        return f"{self.netns}-docker"

    def stop(self, timeout: float = 90) -> None:
        """SIGTERM (dockerd stops its containers), SIGKILL after `timeout`; then whatever of this node still runs:
        containerd and its shims (they outlive a killed dockerd) and the containers' processes (by cgroup)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        cgroups = [Path(r, d) for r, dirs, _ in os.walk("/sys/fs/cgroup") for d in dirs if d == self.cgroup_parent]
        in_cgroups = {int(pid) for c in cgroups for f in c.rglob("cgroup.procs") for pid in f.read_text().split()}
        for pid in set(processes_mentioning(str(self.root))) | in_cgroups:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc = None

    def log_tail(self) -> str:
        log = self.root / "dockerd.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-15:]) if log.is_file() else ""

    def containers(self, service: str) -> list[str]:
        """Short ids of this node's running containers of a service: a container's hostname is its short id, so
        these are the replica names in X-Gateway-Replica and in usage records."""
        out = self.engine.docker(
            "ps", "--filter", f"label=com.docker.swarm.service.name={service}", "--format", "{{.ID}}"
        ).stdout
        return out.split()


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


def remove_cgroups(prefix: str) -> bool:
    """rmdir the daemons' cgroup-parent folders (a folder goes once its last process has exited); True when none
    is left."""
    folders = [Path(root, d) for root, dirs, _ in os.walk("/sys/fs/cgroup") for d in dirs if d.startswith(prefix)]
    for folder in folders:
        for sub in sorted(folder.glob("**/"), key=lambda p: -len(p.parts)):
            try:
                sub.rmdir()
            except OSError:
                pass
    return not any(folder.exists() for folder in folders)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Swarm:
    nodes: list[Node]
    kit: Path  # the copy of the kit's files the stack was deployed from

    @property
    def manager(self) -> Node:
        return self.nodes[0]

    def replicas_by_node(self) -> dict[str, list[str]]:
        return {n.name: n.containers(GATEWAY_SERVICE) for n in self.nodes if n.proc is not None}

    def running_nodes(self, service: str) -> list[str]:
        """The node id of every running task of a service (task names do not tell: all nodes share a hostname)."""
        manager = self.manager.engine
        ids = manager.docker("service", "ps", "-q", "--filter", "desired-state=running", service).stdout.split()
        if not ids:
            return []
        out = manager.docker("inspect", "--format", "{{.NodeID}} {{.Status.State}}", *ids).stdout
        return [line.split()[0] for line in out.splitlines() if line.split()[1] == "running"]

    def converged(self) -> bool:
        out = self.manager.engine.docker("service", "ls", "--format", "{{.Name}} {{.Replicas}}").stdout
        counts = [line.split()[1].split("/") for line in out.splitlines()]
        return bool(counts) and all(running == wanted and wanted != "0" for running, wanted in counts)

    def rebalance(self) -> None:
        """One gateway replica per node. Swarm puts a new task where the service has the fewest, counting tasks still
        stopping, so a start-first update can leave a node without a replica, and a node that comes back stays empty
        (swarm moves no running task by itself). Scaling down by one removes a task where the service has the most;
        scaling up again puts it where it has the fewest."""
        manager = self.manager.engine
        wait_for(
            "every node Ready",
            lambda: manager.docker("node", "ls", "--format", "{{.Status}}").stdout.split().count("Ready") == NODES,
            120,
        )

        def spread() -> bool:
            return sorted(Counter(self.running_nodes(GATEWAY_SERVICE)).values()) == [1] * NODES

        for _ in range(NODES):
            if spread():
                return
            manager.docker("service", "scale", "--detach", f"{GATEWAY_SERVICE}={NODES - 1}")
            wait_for("one replica fewer", lambda: len(self.running_nodes(GATEWAY_SERVICE)) == NODES - 1, 120)
            manager.docker("service", "scale", "--detach", f"{GATEWAY_SERVICE}={NODES}")
            wait_for("the replica back", lambda: len(self.running_nodes(GATEWAY_SERVICE)) == NODES, 240, every=2)
        assert spread(), f"the replicas are not one per node after {NODES} rebalancing rounds"

    def node_ids(self) -> dict[str, str]:
        return {
            n.name: n.engine.docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
            for n in self.nodes
            if n.proc is not None
        }


def limits_overlay(kit: Path) -> Path:
    """A compose file over the stack (scripts/swarm_stack.sh -f): config.yaml with a per-client limit of LIMIT
    calls an hour on `completions`, as a swarm config (every node gets it from the managers), 1 worker per replica
    (a 2-core machine runs 3 nodes)."""
    config = yaml.safe_load((kit / "config.yaml").read_text())
    for endpoint in config["endpoints"]:
        if endpoint["name"] == LIMITED:
            endpoint["limit"] = {"calls": LIMIT, "renewal_period": "hour", "key": "client"}
    (kit / "config.limits.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    overlay = {
        "services": {
            "mlflow-gateway": {
                "configs": [{"source": "gateway-config", "target": "/app/config.yaml"}],
                "environment": {"GATEWAY_WORKERS": "1"},
            },
            # The demo's one fake provider stays on the manager: the node-down test takes n3 away, not the provider.
            "fake-llm": {"deploy": {"placement": {"constraints": ["node.role == manager"]}}},
        },
        "configs": {"gateway-config": {"file": "./config.limits.yaml"}},
    }
    (kit / "swarm.test.yml").write_text(yaml.safe_dump(overlay, sort_keys=False))
    return kit / "swarm.test.yml"


@pytest.fixture(scope="module")
def swarm_stack(engine: Engine, tmp_path_factory) -> Iterator[Swarm]:
    if not engine.netns:
        pytest.skip("the swarm's nodes run the engine scripts/docker_engine.sh unpacks; this machine's own is in use")
    host_before = host_network()
    base = Path(tempfile.mkdtemp(prefix="kit-swarm-"))  # short: containerd's socket paths live under it
    prefix = f"kitsw{os.getpid()}"
    bridge_ns = f"{prefix}-br"
    nodes = [
        Node(
            name=f"n{i}",
            netns=f"{prefix}-n{i}",
            addr=f"{SUBNET}.{i}",
            root=base / f"n{i}",
            engine=Engine(env={**engine.env, "DOCKER_HOST": f"unix://{base}/n{i}/docker.sock"}, netns=f"{prefix}-n{i}"),
        )
        for i in range(1, NODES + 1)
    ]
    kit = make_project(engine, tmp_path_factory.mktemp("swarm"), "docker-compose.prod.yml").root
    started = time.monotonic()
    try:
        # The hosts: the bridge in its own namespace, each veth pair made there with its other end moved straight
        # into the node's namespace, so no interface ever appears in the host's.
        ip("netns", "add", bridge_ns)
        ip("-n", bridge_ns, "link", "add", "br0", "type", "bridge")
        ip("-n", bridge_ns, "link", "set", "br0", "up")
        for i, node in enumerate(nodes, 1):
            ip("netns", "add", node.netns)
            ip("-n", node.netns, "link", "set", "lo", "up")
            ip("-n", bridge_ns, "link", "add", f"p{i}", "type", "veth", "peer", "name", "eth0", "netns", node.netns)
            ip("-n", bridge_ns, "link", "set", f"p{i}", "master", "br0", "up")
            ip("-n", node.netns, "addr", "add", f"{node.addr}/24", "dev", "eth0")
            ip("-n", node.netns, "link", "set", "eth0", "up")
            node.write_config()
            node.start()
        figure("swarm: 3 dockerd up (own namespaces, data-roots)", f"{time.monotonic() - started:.0f} s")

        step = time.monotonic()
        stack_file = kit / "stack.json"
        render = subprocess.run(
            ["scripts/swarm_stack.sh", "--profile", "demo", "-f", str(limits_overlay(kit))],
            cwd=kit,
            env=engine.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert render.returncode == 0, render.stderr
        stack_file.write_text(render.stdout)
        images = sorted({s["image"] for s in json.loads(render.stdout)["services"].values()})
        archive = base / "images.tar"
        engine.docker("save", "-o", str(archive), *images, timeout=600)
        loads = [
            subprocess.Popen(
                ["docker", "load", "-q", "-i", str(archive)], env=n.engine.env, stdout=subprocess.PIPE, text=True
            )
            for n in nodes
        ]
        assert all(p.wait(600) == 0 for p in loads), "docker load into a node failed"
        archive.unlink()
        figure(
            "swarm: images loaded into every node (docker save | docker load)",
            f"{time.monotonic() - step:.0f} s ({', '.join(images)})",
        )

        step = time.monotonic()
        manager = nodes[0].engine
        manager.docker("swarm", "init", "--advertise-addr", nodes[0].addr, "--default-addr-pool", ADDR_POOL, timeout=60)
        token = manager.docker("swarm", "join-token", "-q", "worker").stdout.strip()
        for node in nodes[1:]:
            node.engine.docker(
                "swarm", "join", "--token", token, "--advertise-addr", node.addr, f"{nodes[0].addr}:2377"
            )
        sw = Swarm(nodes=nodes, kit=kit)
        manager.docker("node", "update", "--label-add", "mlflow-gateway.redis=true", sw.node_ids()["n1"])
        ready = wait_for(
            "3 Ready nodes",
            lambda: manager.docker("node", "ls", "--format", "{{.Status}}").stdout.split().count("Ready") == NODES,
            60,
        )
        assert ready
        figure("swarm: init + 2 joins, 3 nodes Ready", f"{time.monotonic() - step:.1f} s")

        step = time.monotonic()
        manager.docker("stack", "deploy", "--resolve-image", "never", "-c", str(stack_file), STACK, cwd=kit)
        wait_for("every service of the stack running (docker service ls)", sw.converged, 600, every=2)
        figure("swarm: docker stack deploy to every service running (healthy)", f"{time.monotonic() - step:.0f} s")
        figure("swarm: fixture set-up in all", f"{time.monotonic() - started:.0f} s")
        yield sw
    finally:
        step = time.monotonic()
        # All at once, and short: nothing of the swarm is kept (a daemon that does not stop in time is killed,
        # with its containers).
        for node in nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in nodes:
            node.stop(timeout=15)
        for ns in [n.netns for n in nodes] + [bridge_ns]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        stopped = time.monotonic()
        removals = [subprocess.Popen(["rm", "-rf", str(n.root)]) for n in nodes]  # at once: many small files
        for removal in removals:
            removal.wait()
        subprocess.run(["rm", "-rf", str(base)], check=False)
        removed = time.monotonic()
        wait_for("the nodes' cgroup folders removed", lambda: remove_cgroups(prefix), 30)
        left = {k: v for k, v in host_network().items() if v != host_before[k]}
        figure(
            "swarm: teardown (daemons, namespaces, data folders)",
            f"{time.monotonic() - step:.0f} s (daemons stopped {stopped - step:.0f} s, data folders removed "
            f"{removed - stopped:.0f} s); host network {'as before' if not left else f'CHANGED: {left}'}",
        )
        assert not left, f"the swarm left changes in the host's network: {left}"
        assert not base.exists(), f"{base} was not removed"


@pytest.fixture
def swarm(swarm_stack: Swarm) -> Swarm:
    """The swarm as every test expects it: 3 nodes Ready, one gateway replica on each."""
    swarm_stack.rebalance()
    return swarm_stack


def failures(doc: dict) -> list[dict]:
    return [r for r in doc["requests"] if r["outcome"] != "pass"]


def test_replicas_run_on_every_node_and_nginx_on_each_node_reaches_all_of_them(swarm: Swarm):
    by_node = swarm.replicas_by_node()
    everywhere = {name for ids in by_node.values() for name in ids}
    reached = {}
    for node in swarm.nodes:  # every node's own nginx (mode: global, host port 5000)
        answers = node.engine.net_json("openai-chats", GATEWAY, "24")
        reached[node.name] = Counter(a["replica"] for a in answers)
    figure(
        "swarm: gateway replicas per node; replicas reached by 24 chats through each node's nginx",
        f"{ {n: len(ids) for n, ids in by_node.items()} }; { {n: dict(c) for n, c in reached.items()} }",
    )
    assert all(by_node[n.name] for n in swarm.nodes), f"a node runs no replica: {by_node}"
    for name, counts in reached.items():
        assert set(counts) == everywhere, f"nginx on {name} reached {set(counts)} of {everywhere}"


def test_a_limit_admits_exactly_its_count_of_concurrent_requests_across_nodes(swarm: Swarm):
    body = json.dumps({"prompt": "count me"})
    answers = swarm.manager.engine.net_json("posts", f"{GATEWAY}/gateway/{LIMITED}/invocations", str(CONCURRENT), body)
    statuses = Counter(a["status"] for a in answers)
    node_of = {replica: node for node, ids in swarm.replicas_by_node().items() for replica in ids}
    admitted_on = Counter(node_of.get(a["replica"], "?") for a in answers if a["status"] == 200)
    answered_on = Counter(node_of.get(a["replica"], "?") for a in answers)
    figure(
        f"swarm: limit {LIMIT}/hour per client, {CONCURRENT} concurrent requests: statuses; nodes that answered",
        f"{dict(statuses)}; admitted by {dict(admitted_on)}, answered by {dict(answered_on)}",
    )
    assert statuses == {200: LIMIT, 429: CONCURRENT - LIMIT}, answers
    assert len(answered_on) > 1, f"one node answered everything: the count was not shared across nodes {answers}"


def kills_on(node: Node, since: float) -> dict[str, float]:
    """Gateway containers of `node` that got their stop signal since `since`: short id -> unix time."""
    out = node.engine.docker(
        "events",
        "--since",
        f"{since:.3f}",
        "--until",
        f"{time.time():.3f}",
        "--filter",
        "event=kill",
        "--filter",
        f"label=com.docker.swarm.service.name={GATEWAY_SERVICE}",
        "--format",
        "{{json .}}",
    ).stdout
    first: dict[str, float] = {}
    for event in map(json.loads, out.splitlines()):  # a SIGKILL after the grace period is a second kill event
        first.setdefault(event["id"][:12], event["timeNano"] / 1e9)
    return first


def test_a_rolling_update_under_load_fails_nothing_and_streams_finish(swarm: Swarm, tmp_path):
    """`docker service update --image` with docker-stack.yml's update_config (start-first, one at a time) and the
    prod file's stop_grace_period (40 s > the gateway's 30 s graceful timeout)."""
    for node in swarm.nodes:
        node.engine.docker("tag", "mlflow-gateway:local", "mlflow-gateway:next")
    before = set().union(*swarm.replicas_by_node().values())
    load = start_load(swarm.manager.engine, tmp_path, [CHAT, STREAM], rate=6, duration=600)
    time.sleep(5)
    update_at, start = time.time(), time.monotonic()
    swarm.manager.engine.docker("service", "update", "--detach", "--image", "mlflow-gateway:next", GATEWAY_SERVICE)

    def update_state() -> str | None:
        info = json.loads(swarm.manager.engine.docker("service", "inspect", GATEWAY_SERVICE).stdout)[0]
        state = (info.get("UpdateStatus") or {}).get("State")
        if state in ("rollback_started", "rollback_completed", "paused", "rollback_paused"):
            pytest.fail(f"the update did not complete: {info['UpdateStatus']}")
        return state == "completed"

    wait_for("the rolling update to complete", update_state, 600, every=2)
    took = time.monotonic() - start
    doc = load.stop(after=3)

    requests, after = doc["requests"], set().union(*swarm.replicas_by_node().values())
    stops = {cid: t for node in swarm.nodes for cid, t in kills_on(node, update_at - 1).items()}
    drained = [r for r in requests if r["stream"] and r["replica"] in stops and in_flight(r, stops[r["replica"]])]
    figure(
        "swarm: rolling update of 3 replicas under load (6/s): took; requests, failed, streams in flight at a stop",
        f"{took:.0f} s; {len(requests)}, {len(failures(doc))}, {len(drained)} "
        f"(chunks of those: {sorted({r['chunks'] for r in drained})})",
    )
    assert set(stops) == before, (stops, before)
    assert not before & after, "an old replica is still running"
    assert not failures(doc), failures(doc)[:5]
    assert drained, "no stream was in flight on a replica when it was stopped: nothing was proven"
    assert all(r["chunks"] >= 30 and not r["partial"] for r in drained), drained


def test_a_node_taken_down_under_load_has_its_replicas_rescheduled_and_fails_only_what_it_held(swarm: Swarm, tmp_path):
    """n3's dockerd stopped (SIGTERM) under an open-loop load through n1's nginx: the swarm marks n3 Down and starts
    its replicas on n1 and n2; then n3 is started again (it rejoins) and the replicas spread over the 3 nodes again."""
    victim = swarm.nodes[2]
    victims = set(victim.containers(GATEWAY_SERVICE))
    assert victims, "n3 runs no replica: nothing to prove"
    victim_id = swarm.node_ids()[victim.name]
    load = start_load(swarm.manager.engine, tmp_path, [CHAT, STREAM], rate=10, duration=600)
    try:
        time.sleep(5)
        signalled = time.time()
        victim.stop()
        stopped = time.time()
        manager = swarm.manager.engine
        wait_for(
            "n3 marked Down",
            lambda: "Down" in manager.docker("node", "ls", "--format", "{{.Status}}").stdout,
            120,
        )
        down = time.time()

        def rescheduled() -> bool:
            on = swarm.running_nodes(GATEWAY_SERVICE)
            return len(on) == NODES and victim_id not in on

        wait_for("3 gateway replicas running without n3", rescheduled, 180)
        back = time.time()
        doc = load.stop(after=6)  # nginx's DNS answer may still name a lost replica for 5 s
        by_node = swarm.replicas_by_node()
        by_node.pop(victim.name, None)  # n3 is down: not asked
    finally:
        if load.running():
            load.proc.kill()
        victim.start()

    def exposed(r: dict) -> bool:  # in flight at some moment while n3 was going down
        return in_flight(r, signalled) or in_flight(r, stopped) or signalled <= start_time(r) <= stopped

    failed, requests = failures(doc), doc["requests"]
    at_risk = [r for r in requests if exposed(r) and r["replica"] in victims | {None}]
    figure(
        "swarm: n3's dockerd stopped under load (10/s): SIGTERM to dockerd gone, to Down, to 3 replicas on n1+n2",
        f"{stopped - signalled:.1f} s, {down - signalled:.1f} s, {back - signalled:.1f} s",
    )
    figure(
        "swarm: node down under load: requests, failed, in flight on n3 (or unanswered) while it went down "
        "(streams: chunks); replicas per node after",
        f"{len(requests)}, {len(failed)}, {len(at_risk)} "
        f"({sorted(r['chunks'] or 0 for r in at_risk if r['stream'])}); { {n: len(ids) for n, ids in by_node.items()} }",
    )
    # The bound: what n3's replicas were answering while n3 went down, and nothing else. A stopping dockerd does
    # not drain its swarm tasks (measured: every request in flight there is cut, streams mid-way, as by a docker
    # kill; docs/swarm.md says to drain a node first). A request nginx sends to a lost replica's address after
    # that (the swarm's DNS lists it until the node is marked Down) is refused or unanswered within 2 s and goes to
    # the next replica, a POST is never sent twice, and the other nodes' replicas are untouched: so a failed
    # request was in flight while n3 went down, on n3's replica (or without any answer).
    assert all(r in at_risk for r in failed), [(r["seq"], r["started_at"], r["replica"], r["error"]) for r in failed]
    assert len(failed) <= len(at_risk)
    assert victims & {r["replica"] for r in requests}, "n3's replicas had no traffic: nothing was proven"
    assert sum(len(ids) for ids in by_node.values()) == NODES, by_node
    assert not victims & {r["replica"] for r in requests if start_time(r) > back}, "a lost replica still answered"


def test_every_request_has_a_usage_record_on_some_nodes_ledger_and_analyze_costs_reads_them_all(swarm: Swarm, tmp_path):
    """The documented collection (docs/swarm.md): each node's gateway-ledger volume copied out, analyze_costs.py
    over the copies; and `docker service logs --raw` piped to `analyze_costs.py -`."""
    load = start_load(swarm.manager.engine, tmp_path / "load", [CHAT], rate=5, duration=600)
    doc = load.stop(after=8)
    sent = {r["request_id"] for r in doc["requests"]}
    time.sleep(1.5)  # the ledger writer flushes within a second

    ledger = tmp_path / "ledger"
    per_node = {}
    for node in swarm.nodes:  # docs/swarm.md's copy: tar out of a throwaway container that mounts the volume
        (ledger / node.name).mkdir(parents=True)
        copy = subprocess.run(
            f"docker run --rm --entrypoint tar -v {STACK}_gateway-ledger:/ledger:ro mlflow-gateway:local "
            f"-C /ledger -c . | tar -x -C {ledger / node.name}",
            shell=True,
            env=node.engine.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert copy.returncode == 0, copy.stderr
        lines = [line for f in (ledger / node.name).rglob("*.jsonl") for line in f.read_text().splitlines()]
        per_node[node.name] = {json.loads(line)["request_id"] for line in lines if line.strip()} & sent

    def report(*args: str, stdin: str | None = None) -> set[str]:
        result = subprocess.run(
            [swarm.manager.engine.env["PYTHON"], "analyze_costs.py", *args, "--json", "--details"],
            cwd=swarm.kit,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return {r["request_id"] for r in json.loads(result.stdout)["requests_detail"]}

    from_ledger = report(*(str(ledger / n.name) for n in swarm.nodes))
    # Task by task (docs/swarm.md): `docker service logs SERVICE` waits for every task the service ever had, and
    # hung here once a node had been down and back.
    manager = swarm.manager.engine
    tasks = manager.docker("service", "ps", "-q", "--filter", "desired-state=running", GATEWAY_SERVICE).stdout.split()
    logs = "".join(manager.docker("service", "logs", "--raw", task, timeout=60).stdout for task in tasks)
    from_logs = report("-", stdin=logs)
    figure(
        "swarm: usage records of the requests sent: per node's ledger; analyze_costs.py over the nodes' ledgers; "
        "over docker service logs",
        f"{len(sent)} sent: { {n: len(ids) for n, ids in per_node.items()} }; {len(from_ledger & sent)}; "
        f"{len(from_logs & sent)}",
    )
    assert len(sent) >= 30
    assert set().union(*per_node.values()) == sent
    assert sum(len(ids) for ids in per_node.values()) == len(sent), "a request was recorded on two nodes"
    assert len([n for n, ids in per_node.items() if ids]) > 1, "every record is on one node: nothing was proven"
    assert sent <= from_ledger
    assert sent <= from_logs


def test_reload_sh_rolls_a_changed_config_to_every_node_under_load_and_the_new_limit_holds(swarm: Swarm, tmp_path):
    """`scripts/reload.sh --swarm` with the arguments the stack was deployed with: the file the stack's
    gateway-config names (the overlay's) is checked with the service's image, then deployed as a new config, each
    replica replaced in turn (start-first) while the load runs."""
    overlay = swarm.kit / "swarm.test.yml"
    path = swarm.kit / "config.limits.yaml"
    config = yaml.safe_load(path.read_text())
    chat = next(e for e in config["endpoints"] if e["name"] == "chat")
    added = {**chat, "name": "chat-reloaded", "limit": {"calls": 2, "renewal_period": "hour"}}
    path.write_text(yaml.safe_dump({**config, "endpoints": [*config["endpoints"], added]}, sort_keys=False))
    manager = swarm.manager.engine
    reload = ("scripts/reload.sh", "--swarm", "--profile", "demo", "-f", str(overlay), "--timeout", "900")

    misspelt = {("modle" if key == "model" else key): value for key, value in added.items()}
    path.write_text(yaml.safe_dump({**config, "endpoints": [*config["endpoints"], misspelt]}, sort_keys=False))
    refused = manager.run_in_net(*reload, cwd=swarm.kit, timeout=300)
    assert refused.returncode == 78 and "modle" in refused.stdout + refused.stderr, refused.stdout + refused.stderr
    path.write_text(yaml.safe_dump({**config, "endpoints": [*config["endpoints"], added]}, sort_keys=False))

    before = set().union(*swarm.replicas_by_node().values())
    load = start_load(manager, tmp_path, [CHAT, STREAM], rate=6, duration=900)
    time.sleep(5)
    start = time.monotonic()
    result = manager.run_in_net(*reload, cwd=swarm.kit, timeout=1000)
    took = time.monotonic() - start
    doc = load.stop(after=3)
    assert result.returncode == 0, result.stdout + result.stderr

    requests, after = doc["requests"], set().union(*swarm.replicas_by_node().values())
    figure(
        "swarm: reload.sh --swarm (3 replicas replaced in turn) under load (6/s): took; requests, failed, streams",
        f"{took:.0f} s; {len(requests)}, {len(failures(doc))}, {sum(r['stream'] for r in requests)}",
    )
    assert not failures(doc), failures(doc)[:5]
    assert all(r["chunks"] >= 30 and not r["partial"] for r in requests if r["stream"])
    assert not before & after, "a replica from before the reload still runs"
    body = json.dumps({"messages": [{"role": "user", "content": "hello"}]})
    answers = manager.net_json("posts", f"{GATEWAY}/gateway/chat-reloaded/invocations", "4", body)
    assert sorted(a["status"] for a in answers) == [200, 200, 429, 429], answers
