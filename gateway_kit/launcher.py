"""How this replica was started, so that a message names the command that fits, not another setup's.

GATEWAY_LAUNCHER is set by what starts entrypoint.sh: the image sets `docker` (Docker Compose),
scripts/local_stack.sh sets `local-stack`; unset, entrypoint.sh was run by hand. Every message that tells an
operator where to change a setting, set a key, restart, or look at Redis takes its words from here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Launcher:
    name: str
    settings_at: str  # where a replica setting (GATEWAY_*) is changed
    keys_at: str  # where a provider key is set
    restart: str  # how to start again with the change
    demo: str  # how to try the gateway without a provider key
    redis_check: str  # how to see whether Redis runs


DOCKER = Launcher(
    name="docker",
    settings_at=".env next to docker-compose.yml",
    keys_at=".env next to docker-compose.yml",
    restart="docker compose up -d",
    demo="docker compose --profile demo up -d",
    redis_check="docker compose ps redis",
)
LOCAL_STACK = Launcher(
    name="local-stack",
    settings_at="the --env NAME=VALUE of scripts/local_stack.sh up (or the environment it runs in)",
    keys_at="the environment of scripts/local_stack.sh up, or NAME_FILE=<file holding the key>",
    restart="scripts/local_stack.sh down && scripts/local_stack.sh up",
    demo="scripts/local_stack.sh up without --no-fake (demo mode, against the fake upstream)",
    redis_check="scripts/local_stack.sh status (then: scripts/local_stack.sh restart redis)",
)
BY_HAND = Launcher(
    name="entrypoint.sh",
    settings_at="the environment entrypoint.sh runs in",
    keys_at="the environment entrypoint.sh runs in, or NAME_FILE=<file holding the key>",
    restart="entrypoint.sh",
    demo="GATEWAY_DEMO_UPSTREAM=<URL of python -m gateway_kit.fake_upstream> entrypoint.sh",
    redis_check='redis-cli -u "$GATEWAY_REDIS_URL" ping',
)
_BY_NAME = {launcher.name: launcher for launcher in (DOCKER, LOCAL_STACK)}


def by_name(name: str) -> Launcher:
    """The launcher called `name`; entrypoint.sh by hand when unset or unknown."""
    return _BY_NAME.get(name.strip().lower(), BY_HAND)


def current() -> Launcher:
    """The launcher GATEWAY_LAUNCHER names now (gateway_kit.settings.read: the command-line tools word their
    messages with it too, and a bad gateway setting must not stop them)."""
    from gateway_kit import settings

    return by_name(settings.read("GATEWAY_LAUNCHER"))
