"""Check config.yaml and the provider keys before the gateway starts; write the active config.

    python -m gateway_kit.preflight config.yaml                  # check only
    python -m gateway_kit.preflight config.yaml --write OUT.yaml  # what entrypoint.sh runs

- `${NAME:-default}` in any value is replaced by the environment's value (or the default).
- An endpoint whose key (`$NAME`) is missing or a placeholder is dropped, with one warning line
  naming the endpoint and the variable; traffic routes lose that destination and are re-weighted.
- No usable endpoint: exit 78 with the variables to set. With GATEWAY_DEMO_UPSTREAM set and
  answering, every endpoint is pointed at that fake upstream instead (the compose `demo` profile).
- A YAML or validation error is reported with file:line, not a traceback.
- A GATEWAY_* value the replica cannot use (gateway_kit.settings) is reported first, in the words every start-up
  check uses: `gateway: error: GATEWAY_X='...' is not ... — fix GATEWAY_X in ...`, exit 78.

Keys are left as `$NAME` in the written file; the gateway process resolves them itself.
"""

from __future__ import annotations

import argparse
import difflib
from copy import deepcopy
import os
import re
import sys
import time
import urllib.request
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import yaml

from gateway_kit import launcher
from gateway_kit import settings
from gateway_kit.exit_status import ExitStatus
from gateway_kit.secrets import lookup_key, secrets_dir, variable_of

_EXPAND = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
DEMO_KEY = "demo-fake-upstream-key"
# What each provider's base URL becomes in demo mode.
DEMO_BASES = {"openai_api_base": "/v1", "anthropic_api_base": "/v1"}


class ConfigError(Exception):
    """A problem in config.yaml, already worded for the user."""


def log(level: str, message: str) -> None:
    print(f"gateway: {level}: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- YAML with line numbers
def load_yaml(path: Path) -> tuple[Any, yaml.Node | None]:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror})") from None
    try:
        return yaml.safe_load(text), yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None


def line_of(node: yaml.Node | None, path: tuple, key: bool = False) -> int | None:
    """1-based line of the deepest node along `path` (keys and list indexes); with `key`, the line of the
    last key itself rather than of its value (a block mapping's value starts on the next line)."""
    line = node.start_mark.line + 1 if node else None
    for depth, step in enumerate(path, 1):
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if k.value == str(step)), None)
            if pair and key and depth == len(path):
                return pair[0].start_mark.line + 1
            node = pair[1] if pair else None
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
            node = node.value[step]
        else:
            node = None
        if node is None:
            break
        line = node.start_mark.line + 1
    return line


def quoted_field(value: Any, message: str, path: tuple = ()) -> tuple:
    """Path to the first scalar that `message` quotes ('like this'): MLflow's errors name values, not fields."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return path if f"'{value}'" in message else ()
    for key, child in items:
        if found := quoted_field(child, message, (*path, key)):
            return found
    return ()


# ---------------------------------------------------------------- expansion and keys
def expand(value: Any, env: Mapping[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: expand(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v, env) for v in value]
    if isinstance(value, str):
        return _EXPAND.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)
    return value


def key_refs(endpoint: dict) -> dict[str, str]:
    """{config field: variable name} for every `*_api_key: $NAME` of an endpoint."""
    config = (endpoint.get("model") or {}).get("config") or {}
    return {
        field: value[1:]
        for field, value in config.items()
        if field.endswith("_api_key") and isinstance(value, str) and value.startswith("$")
    }


def variables(raw: Any) -> dict[str, bool]:
    """{name: is a key} for every variable a config reads: `$NAME` keys, `${NAME:-default}` anywhere else."""
    found: dict[str, bool] = {}

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for child in value.values():
                walk(child)
        elif isinstance(value, list):
            for child in value:
                walk(child)
        elif isinstance(value, str):
            for name, _default in _EXPAND.findall(value):
                found.setdefault(name, False)

    walk(raw)
    for endpoint in raw.get("endpoints") or [] if isinstance(raw, dict) else []:
        if isinstance(endpoint, dict):
            for name in key_refs(endpoint).values():
                found[name] = True
    return found


def endpoint_problem(endpoint: dict) -> str | None:
    """Why an endpoint cannot serve (missing or placeholder key, missing base URL), or None."""
    for name in key_refs(endpoint).values():
        found = lookup_key(name)
        if found.problem:
            return f"{variable_of(name)} {found.problem}"
    config = (endpoint.get("model") or {}).get("config") or {}
    if config.get("openai_api_type") == "azure" and not config.get("openai_api_base"):
        return "AZURE_OPENAI_API_BASE is not set (https://<your-resource>.openai.azure.com)"
    return None


def drop_unusable(config: dict) -> list[str]:
    """Remove endpoints that cannot serve; fix routes. Returns the usable endpoint names."""
    kept = []
    for endpoint in config.get("endpoints") or []:
        if problem := endpoint_problem(endpoint):
            log("warning", f"endpoint {endpoint.get('name')!r} disabled: {problem}")
        else:
            kept.append(endpoint)
    config["endpoints"] = kept
    names = {e["name"] for e in kept}
    routes = []
    for route in config.get("routes") or []:
        dests = [d for d in route.get("destinations") or [] if d.get("name") in names]
        if not dests:
            log("warning", f"route {route.get('name')!r} disabled: none of its destinations is usable")
            continue
        if len(dests) < len(route["destinations"]):
            reweigh(dests)
            split = ", ".join(f"{d['name']} {d['traffic_percentage']}%" for d in dests)
            log("warning", f"route {route.get('name')!r} now splits {split}")
        routes.append({**route, "destinations": dests})
    config["routes"] = routes
    return sorted(names)


def reweigh(dests: list[dict]) -> None:
    total = sum(d["traffic_percentage"] for d in dests) or len(dests)
    for d in dests:
        d["traffic_percentage"] = (d["traffic_percentage"] or 1) * 100 // total
    dests[-1]["traffic_percentage"] += 100 - sum(d["traffic_percentage"] for d in dests)


def no_endpoint_message(raw: dict, path: Path) -> str:
    users: dict[str, list[str]] = {}
    for endpoint in raw.get("endpoints") or []:
        for name in key_refs(endpoint).values():
            users.setdefault(name, []).append(endpoint.get("name", "?"))
    wanted = " or ".join(f"{v} (for {', '.join(e)})" for v, e in users.items())
    how = launcher.current()
    return (
        f"no endpoint in {path} can start: every provider key is missing or a placeholder. "
        f"Set {wanted} in {how.keys_at}, or in a file {secrets_dir()}/<name in lower case>, "
        f"then restart: {how.restart}. "
        f"To try the gateway without a key: {how.demo}"
    )


# ---------------------------------------------------------------- demo mode
def demo_upstream(s: settings.Settings) -> str | None:
    """The fake upstream's URL when GATEWAY_DEMO_UPSTREAM is set and it answers within GATEWAY_DEMO_WAIT (30 s)."""
    url = s.demo_upstream.rstrip("/")
    if not url:
        return None
    deadline = time.monotonic() + s.demo_wait
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return url
        except OSError:
            if time.monotonic() > deadline:
                log("warning", f"demo upstream {url} does not answer; not starting in demo mode")
                return None
            time.sleep(0.5)


def point_at_demo(config: dict, url: str) -> None:
    for endpoint in config.get("endpoints") or []:
        model_config = endpoint["model"]["config"]
        for field in key_refs(endpoint):
            model_config[field] = DEMO_KEY
        for field, suffix in DEMO_BASES.items():
            if field in model_config:
                model_config[field] = url + suffix
        if model_config.get("openai_api_type") == "azure":
            model_config["openai_api_base"] = url


# ---------------------------------------------------------------- validation
def validate(config: dict, node: yaml.Node | None, path: Path) -> None:
    """Raise ConfigError with file:line for anything MLflow would refuse."""
    from pydantic import ValidationError

    from mlflow.exceptions import MlflowException
    from mlflow.gateway.config import EndpointConfig, GatewayConfig
    from mlflow.gateway.utils import check_configuration_route_name_collisions

    def fail(where: tuple, what: str) -> ConfigError:
        line = line_of(node, where)
        return ConfigError(f"{path}:{line}: {what}" if line else f"{path}: {what}")

    if not isinstance(config, dict) or not isinstance(config.get("endpoints"), list):
        raise fail((), "the file must be a mapping with an `endpoints:` list")
    for where, what in unknown_keys(config):
        line = line_of(node, where, key=True)
        raise ConfigError(f"{path}:{line}: {what}" if line else f"{path}: {what}")
    for index, endpoint in enumerate(config["endpoints"]):
        name = endpoint.get("name", f"#{index + 1}") if isinstance(endpoint, dict) else f"#{index + 1}"
        try:
            if not isinstance(endpoint, dict):
                raise ValueError("must be a mapping with name, endpoint_type and model")
            EndpointConfig(**endpoint)
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "(endpoint)"
            raise fail(("endpoints", index, *err["loc"]), f"endpoint {name!r}: {field}: {err['msg']}") from None
        except (MlflowException, ValueError, TypeError) as e:
            message = str(getattr(e, "message", e))
            where = ("endpoints", index, *quoted_field(endpoint, message))
            raise fail(where, f"endpoint {name!r}: {message}") from None
    from gateway_kit import cache, resilience

    for where, what in [*resilience.config_problems(config), *cache.config_problems(config)]:
        name = config["endpoints"][where[1]].get("name")
        raise fail(where, f"endpoint {name!r}: {what}")
    try:
        check_configuration_route_name_collisions(config)
        GatewayConfig(**config)
    except ValidationError as e:
        err = e.errors()[0]
        raise fail(tuple(err["loc"]), f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    except (MlflowException, KeyError, TypeError) as e:
        raise fail(("routes",), f"routes: {getattr(e, 'message', e)}") from None
    validate_limits(config, fail)


# ---------------------------------------------------------------- unknown keys
def unknown_keys(config: dict) -> list[tuple[tuple, str]]:
    """(path to the key, what is wrong) for every key of config.yaml that no part of the gateway reads.

    MLflow ignores a key it does not know (its config models have extra="ignore"), and so would the kit: a
    `limt:` would leave an endpoint without its limit and no word said. The valid keys of each block come
    from the one place that reads it: MLflow's pydantic models (the endpoint, route, model and provider
    config, `limit:`) and the kit's lists (KIT_*_KEYS, gateway_kit.limits, gateway_kit.resilience)."""
    from mlflow.gateway.config import (
        EndpointConfig,
        GatewayConfig,
        Limit,
        Model,
        RouteDestinationConfig,
        TrafficRouteConfig,
    )

    from gateway_kit.cache import CACHE_KEYS
    from gateway_kit.limits import CLIENT_FIELDS, LIMITS_KEYS
    from gateway_kit.resilience import FALLBACK_KEYS, TIMEOUT_KINDS

    limit = fields(Limit)
    problems: list[tuple[tuple, str]] = []

    def check(block: Any, at: tuple, valid: list[str], owner: str, inner: tuple = ()) -> None:
        """`owner`: who the block belongs to ("endpoint 'chat'"); `inner`: the block's path inside it."""
        if not isinstance(block, dict):
            return  # not a mapping: the checks that read the block say so
        for key in block:
            if str(key) not in valid:
                where = f"{owner}: " if owner else ""
                if inner:
                    where += "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in inner)[1:] + ": "
                problems.append(((*at, *inner, key), where + unknown_key(str(key), valid)))

    check(config, (), keys_of(fields(GatewayConfig), KIT_KEYS), "")
    for index, endpoint in enumerate(config.get("endpoints") or []):
        if not isinstance(endpoint, dict):
            continue
        at, owner = ("endpoints", index), f"endpoint {endpoint.get('name', f'#{index + 1}')!r}"
        check(endpoint, at, keys_of(fields(EndpointConfig), KIT_ENDPOINT_KEYS), owner)
        model = endpoint.get("model")
        check(model, at, fields(Model), owner, ("model",))
        if isinstance(model, dict) and (config_type := provider_config_type(model.get("provider"))):
            check(model.get("config"), at, fields(config_type), owner, ("model", "config"))
        check(endpoint.get("limit"), at, limit, owner, ("limit",))
        check(endpoint.get("timeouts"), at, list(TIMEOUT_KINDS), owner, ("timeouts",))
        check(endpoint.get("fallback"), at, list(FALLBACK_KEYS), owner, ("fallback",))
        check(endpoint.get("cache"), at, list(CACHE_KEYS), owner, ("cache",))
    for index, route in enumerate(config.get("routes") or []):
        if not isinstance(route, dict):
            continue
        at, owner = ("routes", index), f"route {route.get('name', f'#{index + 1}')!r}"
        check(route, at, keys_of(fields(TrafficRouteConfig), KIT_ROUTE_KEYS), owner)
        check(route.get("limit"), at, limit, owner, ("limit",))
        destinations = route.get("destinations")
        for i, destination in enumerate(destinations if isinstance(destinations, list) else []):
            check(destination, at, fields(RouteDestinationConfig), owner, ("destinations", i))
    limits = config.get("limits")
    check(limits, (), list(LIMITS_KEYS), "", ("limits",))
    if isinstance(limits, dict):
        check(limits.get("endpoint"), (), limit, "", ("limits", "endpoint"))
        check(limits.get("client"), (), list(CLIENT_FIELDS), "", ("limits", "client"))
        clients = limits.get("clients")
        for name, block in clients.items() if isinstance(clients, dict) else ():
            check(block, (), list(CLIENT_FIELDS), "", ("limits", "clients", name))
    return problems


def fields(model) -> list[str]:
    """The keys a pydantic model reads: its fields' names and aliases."""
    return [name for field, info in model.model_fields.items() for name in (field, info.alias) if name]


def keys_of(*groups) -> list[str]:
    """The keys of several groups, in order, each once."""
    return list(dict.fromkeys(key for group in groups for key in group))


def provider_config_type(provider: Any):
    """MLflow's config model for a provider name (as config.yaml spells it), or None when MLflow has none."""
    from pydantic import ValidationError

    from mlflow.exceptions import MlflowException
    from mlflow.gateway.config import Model
    from mlflow.gateway.provider_registry import provider_registry

    try:
        return provider_registry.get(Model.validate_provider(provider)).CONFIG_TYPE
    except (MlflowException, ValidationError, AttributeError, TypeError, KeyError):
        return None  # an unknown provider: EndpointConfig's own check names it


def unknown_key(key: str, valid: list[str]) -> str:
    """ "unknown key `limt` (did you mean `limit`?); keys here: ..." """
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f" (did you mean `{close[0]}`?)" if close else ""
    allowed = f"keys here: {', '.join(valid)}" if valid else "this block takes no keys"
    return f"unknown key `{key}`{hint}; {allowed}"


def validate_limits(config: dict, fail) -> None:
    """The kit's `limits:` and every endpoint's or route's `limit:` (gateway_kit.limits)."""
    from gateway_kit.limits import LimitsConfigError, read_config

    try:
        read_config(config)
    except LimitsConfigError as e:
        where = e.where
        if where[0] in ("endpoints", "routes"):
            kind = "endpoint" if where[0] == "endpoints" else "route"
            name = config[where[0]][where[1]].get("name")
            raise fail(where, f"{kind} {name!r}: {'.'.join(map(str, where[2:]))}: {e}") from None
        raise fail(where, f"{'.'.join(map(str, where))}: {e}") from None


def settings_problem(config: dict, s: settings.Settings) -> str | None:
    """Why this replica cannot run with its (valid) settings and this active config, or None: GATEWAY_AUTH=off
    with real provider keys. Warns about limits without GATEWAY_REDIS_URL."""
    from gateway_kit.keys import auth_problem
    from gateway_kit.limits import read_config

    if problem := auth_problem(s.auth, config, DEMO_KEY):
        return problem
    if not read_config(config).empty and not s.redis_url:
        log(
            "warning",
            "config.yaml sets limits but GATEWAY_REDIS_URL is not set: they are not enforced "
            "(docker-compose.prod.yml sets it; see docs/limits-and-keys.md)",
        )
    return None


# Keys of config.yaml that are the kit's, not MLflow's: checked here, used by gateway_kit, and never
# shown to MLflow (see app.mlflow_view).
KIT_KEYS: tuple[str, ...] = ("limits",)  # top level (gateway_kit.limits)
# `limit` is MLflow's own block, but MLflow counts it per worker by IP: the kit enforces it (gateway_kit.limits).
KIT_ENDPOINT_KEYS: tuple[str, ...] = (
    "limit",
    "timeouts",
    "retries",
    "fallback",
    "cache",
)  # per endpoint (gateway_kit.limits, gateway_kit.resilience, gateway_kit.cache)
# A traffic route's `limit` (gateway_kit.limits): MLflow's route model has none.
KIT_ROUTE_KEYS: tuple[str, ...] = ("limit",)


def with_dummy_keys(config: dict) -> dict:
    """A copy of `config` whose `$NAME` keys are literal, so validation needs no real key."""
    copy = deepcopy(config)
    for endpoint in copy.get("endpoints") or []:
        if isinstance(endpoint, dict):
            for field in key_refs(endpoint):
                endpoint["model"]["config"][field] = DEMO_KEY
    return copy


def check(path: Path, s: settings.Settings, need_keys: bool = True) -> dict:
    """The active configuration for `path`; raises ConfigError, or SystemExit(ExitStatus.CONFIG).
    need_keys=False checks the file alone: every endpoint is kept, whether its key is set or not."""
    raw, node = load_yaml(path)
    config = expand(raw, s.environ)
    validate(with_dummy_keys(config), node, path)
    if not need_keys or drop_unusable(config):
        return config
    url = demo_upstream(s)
    if not url:
        log("error", no_endpoint_message(raw, path))
        raise SystemExit(ExitStatus.CONFIG)
    config = expand(raw, s.environ)
    point_at_demo(config, url)
    log("warning", f"DEMO MODE: no provider key is set; every endpoint answers from the fake upstream {url}")
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway_kit.preflight", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="the gateway config (config.yaml)")
    parser.add_argument("--write", type=Path, metavar="OUT", help="write the active config here")
    parser.add_argument(
        "--variables",
        action="store_true",
        help="only list the variables the config reads, "
        "one `NAME key` or `NAME value` line each (what scripts/local_stack.sh remembers)",
    )
    parser.add_argument(
        "--no-keys",
        action="store_true",
        help="check config.yaml, pricing.yaml and the GATEWAY_* "
        "settings only, whether provider keys are set or not (scripts/deploy.sh, before it starts "
        "replicas)",
    )
    args = parser.parse_args(argv)
    if args.variables:
        try:
            raw, _ = load_yaml(args.config)
        except ConfigError as e:
            log("error", f"{e} — fix config.yaml and try again")
            return ExitStatus.CONFIG
        for name, is_key in variables(raw).items():
            print(name, "key" if is_key else "value")
        return ExitStatus.OK
    try:
        s = settings.current()
    except settings.SettingsError as e:
        log("error", str(e))
        return ExitStatus.CONFIG
    try:
        config = check(args.config, s, need_keys=not args.no_keys)
    except ConfigError as e:
        log("error", f"{e} — fix config.yaml and try again")
        return ExitStatus.CONFIG
    try:
        from gateway_kit.pricing import PricingFileError, Pricer

        Pricer()
    except PricingFileError as e:
        log("error", f"{e} — fix pricing.yaml and try again")
        return ExitStatus.CONFIG
    if problem := settings_problem(config, s):
        log("error", problem)
        return ExitStatus.CONFIG
    names = ", ".join(e["name"] for e in config["endpoints"])
    log("info", f"config valid, endpoints: {names}" if args.no_keys else f"endpoints ready: {names}")
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.write.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
        os.replace(tmp, args.write)
    return ExitStatus.OK


if __name__ == "__main__":
    raise SystemExit(main())
