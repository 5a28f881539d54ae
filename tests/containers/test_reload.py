"""config.yaml changed without a restart in the prod compose stack (`scripts/reload.sh --compose`): a typo is
refused with its line and every replica keeps its config; a good file is rolled to every replica under an
open-loop load with streams in flight, with no failed request and no cut stream, and the new config is served
(its hash in every replica's /ready, check_gateway.sh agreeing, a limit it adds enforced at once).

Each test writes config.yaml in place, as the bind mount needs (docs/architecture.md, "Reloading config.yaml"),
and puts the original back, reloaded, before it ends.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import yaml

from .conftest import CHAT, GATEWAY, STREAM, Project, figure, in_flight, start_load

pytestmark = [pytest.mark.integration, pytest.mark.containers]

ADDED, ADDED_LIMIT = "chat-reloaded", 2  # an endpoint the new config adds, with a limit of its own


def served(project: Project) -> list[str]:
    """The config hash each running replica serves (its /ready)."""
    return [
        project.engine.docker(
            "exec", c, "python", "-m", "gateway_kit.reload", "served", "http://127.0.0.1:8000"
        ).stdout.split()[-1]
        for c in project.containers("mlflow-gateway")
    ]


def reload(project: Project) -> tuple[int, str]:
    result = project.script("scripts/reload.sh", "--compose", "--timeout", "180", timeout=900)
    return result.returncode, result.stdout + result.stderr


@pytest.fixture
def config(prod: Project) -> Iterator[dict]:
    """config.yaml as the stack serves it; the original written back in place and reloaded at the end."""
    path = prod.root / "config.yaml"
    original = path.read_text()
    yield yaml.safe_load(original)
    if path.read_text() != original:
        path.write_text(original)  # in place: the same inode the containers see
        code, out = reload(prod)
        assert code == 0, out


def test_a_typo_is_refused_with_its_line_and_every_replica_keeps_its_config(prod: Project, config: dict):
    before = served(prod)
    text = (prod.root / "config.yaml").read_text()
    (prod.root / "config.yaml").write_text(text.replace("    model:\n", "    modle:\n", 1))
    code, out = reload(prod)
    assert code == 78, out
    assert "config.yaml:" in out and "modle" in out, out
    assert served(prod) == before and len(set(before)) == 1


def test_a_reload_under_load_fails_nothing_cuts_no_stream_and_the_new_config_is_served(
    prod: Project, config: dict, tmp_path
):
    before = set(served(prod))
    chat = next(e for e in config["endpoints"] if e["name"] == "chat")
    added = {**chat, "name": ADDED, "limit": {"calls": ADDED_LIMIT, "renewal_period": "hour"}}
    new = {**config, "endpoints": [*config["endpoints"], added]}
    (prod.root / "config.yaml").write_text(yaml.safe_dump(new, sort_keys=False))

    load = start_load(prod.engine, tmp_path, [CHAT, STREAM], rate=8, duration=600)
    time.sleep(5)
    reload_at, start = time.time(), time.monotonic()
    code, out = reload(prod)
    took = time.monotonic() - start
    doc = load.stop(after=4)
    assert code == 0, out

    after = served(prod)
    requests = doc["requests"]
    failed = [r for r in requests if r["outcome"] != "pass"]
    streams_across = [r for r in requests if r["stream"] and in_flight(r, reload_at + took / 2)]
    figure(
        "compose: reload.sh --compose of 3 replicas under load (8/s, half 3 s streams): took; requests, failed, "
        "streams in flight mid-reload (their chunks)",
        f"{took:.0f} s; {len(requests)}, {len(failed)}, {len(streams_across)} "
        f"({sorted({r['chunks'] for r in streams_across})})",
    )
    assert not failed, failed[:5]
    assert all(r["chunks"] >= 30 and not r["partial"] for r in requests if r["stream"])
    assert len(set(after)) == 1 and not set(after) & before, (before, after)

    check = prod.script("./check_gateway.sh", "--no-chat")
    assert check.returncode == 0, check.stdout + check.stderr
    assert after[0] in check.stdout + check.stderr, check.stdout + check.stderr

    body = json.dumps({"messages": [{"role": "user", "content": "hello"}]})
    answers = prod.engine.net_json("posts", f"{GATEWAY}/gateway/{ADDED}/invocations", "4", body)
    assert sorted(a["status"] for a in answers) == [200] * ADDED_LIMIT + [429] * (4 - ADDED_LIMIT), answers
