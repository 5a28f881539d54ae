"""The admin page as a compose user runs it: `docker compose -f docker-compose.prod.yml --profile admin up -d`
beside the shared prod stack (demo), its password in ./secrets/gateway_admin_password, ./keys owned by uid 10001.

On 127.0.0.1:8090 in the engine's namespace (curl, as a user on the host would): a login, every replica ready,
a key added (in ./keys/keys.json on the host) and revoked, both in the audit log on its volume. The browser
tests of the page are tests/stack/test_admin_page.py; this file proves the compose service.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from conftest import SENTINEL_SECRETS, write_secret

from .conftest import REPLICAS, Project, figure

pytestmark = [pytest.mark.integration, pytest.mark.containers]

ADMIN = "http://127.0.0.1:8090"
PASSWORD = SENTINEL_SECRETS["admin-password"]


def curl(project: Project, jar: Path, *args: str) -> str:
    result = project.engine.run_in_net("curl", "-sS", "-b", str(jar), "-c", str(jar), *args, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_admin_profile_serves_the_page_and_changes_the_keys_every_replica_reads(prod, tmp_path):
    secrets = prod.root / "secrets"
    secrets.mkdir(exist_ok=True)
    write_secret(secrets / "gateway_admin_password", PASSWORD + "\n").chmod(0o644)
    secrets.chmod(0o700)
    os.chown(prod.root / "keys", 10001, 10001)  # the page writes ./keys as the image's user
    form_password = write_secret(tmp_path / "password-field", PASSWORD)  # curl reads it: never on a command line
    jar = tmp_path / "cookies"
    try:
        prod.compose(
            "--profile", "demo", "--profile", "admin", "up", "-d", "--no-build", "--wait", "--wait-timeout", "120",
            "admin", timeout=300,
        )  # fmt: skip
        status = curl(
            prod, jar, "-o", "/dev/null", "-w", "%{http_code}", "--data-urlencode", "who=ops",
            "--data-urlencode", f"password@{form_password}", f"{ADMIN}/login",
        )  # fmt: skip
        assert status == "303"
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
