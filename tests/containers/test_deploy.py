"""scripts/deploy.sh given what goes wrong on real machines: it says what is wrong and what to run next, prints no
traceback, and leaves no half-started stack behind.

Each run uses its own compose project (COMPOSE_PROJECT_NAME) and image tag, from a copy of the kit's files, so the
shared prod stack (and the image the other tests run) are never touched.
"""

from __future__ import annotations

import subprocess

import pytest

from .conftest import GATEWAY, Engine, Project, make_project

pytestmark = [pytest.mark.integration, pytest.mark.containers]

TEST_PROJECT = "kit-deploy-test"
TEST_IMAGE = "mlflow-gateway:deploy-test"


@pytest.fixture
def kit(engine: Engine, tmp_path) -> Project:
    project = make_project(engine, tmp_path, "docker-compose.prod.yml")
    try:
        yield project
    finally:
        for file in ("docker-compose.prod.yml", "docker-compose.yml"):
            Project(engine, project.root, file, name=TEST_PROJECT).down()
        engine.docker("image", "rm", TEST_IMAGE, check=False)


def deploy(kit: Project, *args: str, **env: str) -> subprocess.CompletedProcess:
    return kit.engine.run_in_net(
        str(kit.root / "scripts" / "deploy.sh"),
        *args,
        cwd=kit.root,
        timeout=600,
        extra_env={"COMPOSE_PROJECT_NAME": TEST_PROJECT, "GATEWAY_IMAGE": TEST_IMAGE, "NO_COLOR": "1", **env},
    )


def assert_refused(result: subprocess.CompletedProcess, *expected: str) -> None:
    """Exit 1 with every `expected` phrase in the output, no traceback, and nothing of the project running."""
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    for phrase in expected:
        assert phrase in output, f"{phrase!r} not in:\n{output}"
    assert "Traceback" not in output


def assert_nothing_left(kit: Project) -> None:
    left = kit.engine.docker(
        "ps", "-a", "--filter", f"label=com.docker.compose.project={TEST_PROJECT}", "--format", "{{.Names}} {{.State}}"
    ).stdout
    assert not left.strip(), f"a half-started stack was left behind:\n{left}"


def test_a_stopped_engine_is_named_with_how_to_start_it(kit):
    result = deploy(kit, "--prod", "--demo", DOCKER_HOST="unix:///run/no-such-docker.sock")
    assert_refused(result, "docker engine not reachable", "systemctl start docker")


def test_a_missing_compose_plugin_is_named(kit, tmp_path):
    (tmp_path / "empty-docker-config").mkdir()
    result = deploy(kit, "--prod", "--demo", DOCKER_CONFIG=str(tmp_path / "empty-docker-config"))
    assert_refused(result, "docker compose (v2) not found", "compose plugin")


def test_a_broken_env_file_is_refused_before_anything_starts(kit):
    (kit.root / ".env").write_text('GATEWAY_REPLICAS=2\nOPENAI_API_BASE="http://unterminated\n')
    result = deploy(kit, "--prod", "--demo")
    assert_refused(result, "cannot read the project", ".env", "unterminated quoted value")
    assert_nothing_left(kit)


def test_an_unreadable_secret_file_is_refused_with_the_fix(kit):
    secret = kit.root / "secrets" / "openai_api_key"
    secret.parent.mkdir()
    secret.write_text("placeholder-not-a-key\n")
    secret.chmod(0o600)
    result = deploy(kit, "--prod", "--demo")
    assert_refused(result, "uid 10001", "secrets/openai_api_key", "chmod 644")
    assert_nothing_left(kit)


def test_a_config_typo_is_caught_in_the_image_before_any_replica_starts(kit):
    config = kit.root / "config.yaml"
    config.write_text(
        config.read_text().replace("    endpoint_type: llm/v1/chat\n", "    endpoint_typ: llm/v1/chat\n", 1)
    )
    result = deploy(kit, "--prod", "--demo", "--replicas", "1")
    assert_refused(
        result, "unknown key `endpoint_typ`", "did you mean `endpoint_type`", "config.yaml", "then run this again"
    )
    assert_nothing_left(kit)


def test_port_5000_taken_is_named_and_the_half_started_stack_removed(prod, kit):
    """The shared prod stack holds :5000; the dev stack of a second project cannot have it (its gateway publishes
    :5000 itself)."""
    result = deploy(kit, "--demo")
    assert_refused(result, "port 5000 is taken", "docker ps --filter publish=5000", "nothing of the stack is left")
    assert_nothing_left(kit)
    assert prod.engine.net_json("get", f"{GATEWAY}/health")["status"] == 200  # the stack holding it is untouched
