"""The admin page as a compose user runs it: `docker compose -f docker-compose.prod.yml --profile admin up -d`
beside the shared prod stack (demo), its password in ./secrets/gateway_admin_password, ./keys owned by uid 10001.

On 127.0.0.1:8090 in the engine's namespace (curl, as a user on the host would): a login, every replica ready,
a key added (in ./keys/keys.json on the host) and revoked, both in the audit log on its volume; with
GATEWAY_RELOAD_TOKEN in .env, config.yaml edited in place and reloaded on every replica from the page. The browser
tests of the page are tests/stack/test_admin_page.py and test_admin_reload.py; this file proves the compose service.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path

import pytest
import yaml

from conftest import SENTINEL_SECRETS, write_secret

from .conftest import GATEWAY, REPLICAS, Project, figure

pytestmark = [pytest.mark.integration, pytest.mark.containers]

ADMIN = "http://127.0.0.1:8090"
PASSWORD = SENTINEL_SECRETS["admin-password"]


def curl(project: Project, jar: Path, *args: str) -> str:
    result = project.engine.run_in_net("curl", "-sS", "-b", str(jar), "-c", str(jar), *args, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def admin_up(prod: Project, tmp_path: Path) -> Path:
    """The admin service up (its password in ./secrets), logged in as `ops`: the cookie jar."""
    folder = prod.root / "secrets"
    folder.mkdir(exist_ok=True)
    write_secret(folder / "gateway_admin_password", PASSWORD + "\n").chmod(0o644)
    folder.chmod(0o700)
    os.chown(prod.root / "keys", 10001, 10001)  # the page writes ./keys as the image's user
    form_password = write_secret(tmp_path / "password-field", PASSWORD)  # curl reads it: never on a command line
    jar = tmp_path / "cookies"
    prod.compose(
        "--profile", "demo", "--profile", "admin", "up", "-d", "--no-build", "--wait", "--wait-timeout", "120",
        "admin", timeout=300,
    )  # fmt: skip
    status = curl(
        prod, jar, "-o", "/dev/null", "-w", "%{http_code}", "--data-urlencode", "who=ops",
        "--data-urlencode", f"password@{form_password}", f"{ADMIN}/login",
    )  # fmt: skip
    assert status == "303"
    return jar


def test_the_admin_profile_serves_the_page_and_changes_the_keys_every_replica_reads(prod, tmp_path):
    try:
        jar = admin_up(prod, tmp_path)
        page = curl(prod, jar, f"{ADMIN}/")
        assert f"{REPLICAS} of {REPLICAS} ready" in page
        csrf = re.search(r'name=csrf value="([0-9a-f]+)"', page).group(1)
        created = curl(prod, jar, "--data-urlencode", "client=compose-admin", "--data-urlencode", f"csrf={csrf}",
                       f"{ADMIN}/keys")  # fmt: skip
        key = re.search(r"id=new-key>(gwk_[A-Za-z0-9_-]+)<", created).group(1)
        entries = json.loads((prod.root / "keys" / "keys.json").read_text())["keys"]
        assert [e["prefix"] for e in entries if e["client"] == "compose-admin"] == [key[:12]]
        curl(prod, jar, "--data-urlencode", "client=compose-admin", "--data-urlencode", f"prefix={key[:12]}",
             "--data-urlencode", f"csrf={csrf}", f"{ADMIN}/keys/revoke")  # fmt: skip
        entries = json.loads((prod.root / "keys" / "keys.json").read_text())["keys"]
        assert not [e for e in entries if e["client"] == "compose-admin"]
        audit = prod.compose(
            "--profile", "admin", "exec", "-T", "admin", "cat", "/var/lib/gateway-admin/audit.jsonl"
        ).stdout  # fmt: skip
        actions = [json.loads(line)["action"] for line in audit.splitlines()]
        assert actions[-3:] == ["login", "key_added", "key_revoked"]
        assert key not in audit and PASSWORD not in audit
        figure("admin page (compose profile admin)", "login, every replica ready, a key added and revoked, audited")
    finally:
        prod.compose("--profile", "admin", "rm", "-sfv", "admin", check=False)


def test_with_a_reload_token_in_env_the_page_reloads_config_yaml_on_every_replica(prod, tmp_path):
    """.env's GATEWAY_RELOAD_TOKEN reaches the replicas (env_file) and the admin service (that one variable)."""
    config = prod.root / "config.yaml"
    original = config.read_text()
    write_secret(prod.root / ".env", f"GATEWAY_RELOAD_TOKEN={secrets.token_hex(32)}\n")
    try:
        prod.up()  # the replicas recreated with the token
        jar = admin_up(prod, tmp_path)
        page = curl(prod, jar, f"{ADMIN}/")
        assert "id=reload-config" in page
        csrf = re.search(r'name=csrf value="([0-9a-f]+)"', page).group(1)
        # Edited in place (write_text truncates the same file): the replicas see it through a single-file bind mount.
        changed = yaml.safe_load(original)
        embeddings = next(e for e in changed["endpoints"] if e["name"] == "embeddings")
        embeddings["limit"] = {"calls": 100000, "renewal_period": "minute"}
        config.write_text(yaml.safe_dump(changed, sort_keys=False))
        answer = curl(prod, jar, "--data-urlencode", f"csrf={csrf}", "--max-time", "600", f"{ADMIN}/reload")
        done = re.search(r"id=reload-result>every replica serves config ([0-9a-f]{12})<", answer)
        assert done, answer
        assert answer.count("<span class=ok>ok</span>") == REPLICAS
        page = curl(prod, jar, f"{ADMIN}/")
        assert page.count(f"<td>{done.group(1)}</td>") == REPLICAS  # each replica's config column
        status = curl(prod, jar, "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", f"{GATEWAY}/-/reload")
        assert status == "404"  # nginx never passes it on
        audit = prod.compose(
            "--profile", "admin", "exec", "-T", "admin", "cat", "/var/lib/gateway-admin/audit.jsonl"
        ).stdout  # fmt: skip
        entry = json.loads(audit.splitlines()[-1])
        assert (entry["action"], entry["result"], entry["config_hash"]) == ("config_reload", "reloaded", done.group(1))
        figure("admin page reload (compose, .env token)", f"{REPLICAS} replicas now serve config {done.group(1)}")
    finally:
        prod.compose("--profile", "admin", "rm", "-sfv", "admin", check=False)
        config.write_text(original)  # in place; the next test's `up` recreates the replicas without the token
        (prod.root / ".env").unlink()
