"""The replica's settings: every GATEWAY_* variable, read from the environment once per process.

    from gateway_kit import settings
    s = settings.current()        # this process's Settings (built on first use; SettingsError if a value is bad)
    s.workers, s.metrics, s.redis_url
    settings.Settings.from_env({"GATEWAY_METRICS": "off"})   # any mapping: what tests use

One field per variable: the field `upstream_retries` is GATEWAY_UPSTREAM_RETRIES (the variable is the field's
name in capitals after GATEWAY_). docs/architecture.md's "Environment (gateway replica)" table lists every field
with its default; tests/unit/test_settings.py fails when the two differ.

One vocabulary for a switch (case and surrounding spaces do not matter):

    on:  on, true, yes, 1
    off: off, false, no, 0, none

An empty value is the same as an unset one: the default. Any other value is a SettingsError whose message names
the variable, the value, what is allowed and where to change it (`fix GATEWAY_X in .env next to
docker-compose.yml`, or wherever this launcher takes settings from). It is reported the same way wherever it
is found: preflight (what `entrypoint.sh` and `entrypoint.sh --check` run first) logs `gateway: error: <message>`
and exits 78 (ExitStatus.CONFIG); gunicorn_conf.py, read by the gunicorn master, does the same before any worker starts;
a worker started some other way fails to boot with the same message.

This module and gateway_kit.secrets (provider keys, `NAME` and `NAME_FILE`) are the only ones that read the
environment (tests/unit/test_settings.py checks it). Nothing reads it per request: modules get their values when create_app builds the app, or ask
current() at set-up. `read(name)` parses one variable as it is now, for code the command-line tools share
(the pricing and keys files, the secrets directory, the launcher's wording), which must not fail on a setting
they do not use.
"""

from __future__ import annotations

import math
import re
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from gateway_kit.exit_status import ExitStatus

PREFIX = "GATEWAY_"
ON = ("on", "true", "yes", "1")
OFF = ("off", "false", "no", "0", "none")
SWITCH = "on or off (on, true, yes, 1 / off, false, no, 0, none)"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class SettingsError(ValueError):
    """A GATEWAY_* value this replica cannot run with; str() is the whole message for the operator."""

    def __init__(self, name: str, value: str, allowed: str, default: str, where: str) -> None:
        self.name, self.value, self.allowed = name, value, allowed
        super().__init__(
            f"{name}={value!r} is not {allowed} — fix {name} in {where}, or remove it for the default ({default})"
        )


# ---------------------------------------------------------------- parsers: raw text -> value, or None if not allowed


def switch(raw: str) -> bool | None:
    word = raw.strip().lower()
    return True if word in ON else False if word in OFF else None


def text(raw: str) -> str:
    return raw


def word(raw: str) -> str:
    return raw.strip().lower()


def choice(*options: str) -> Callable[[str], str | None]:
    def parse(raw: str) -> str | None:
        value = raw.strip().lower()
        return value if value in options else None

    return parse


def auth_mode(raw: str) -> str | None:
    """auto, or a switch (on / off in any of its words)."""
    value = raw.strip().lower()
    if value == "auto":
        return value
    on = switch(value)
    return None if on is None else "on" if on else "off"


def path_or_off(raw: str) -> str | None:
    """A directory, or "" when a switch's off word turns it off."""
    return "" if raw.strip().lower() in OFF else raw


def kube_name(raw: str) -> str | None:
    """A Kubernetes object name (a DNS subdomain: lower-case letters, digits, '-' and '.')."""
    value = raw.strip()
    return value if re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", value) else None


def number(low: float, high: float = math.inf, *, whole: bool = False, above: bool = False):
    """A number from `low` (excluded with `above`) to `high`, whole with `whole`."""

    def parse(raw: str) -> float | int | None:
        try:
            value = int(raw.strip()) if whole else float(raw.strip())
        except ValueError:
            return None
        ok = math.isfinite(value) and (value > low if above else value >= low) and value <= high
        return value if ok else None

    return parse


def setting(default: Any, parse: Callable[[str], Any], allowed: str = "", doc: str | None = None) -> Any:
    """A field for GATEWAY_<NAME>: `allowed` words what parse accepts (for the error); `doc` is the default as
    docs/architecture.md writes it when it is not the value itself (a hostname, a path beside entrypoint.sh)."""
    return field(default=default, metadata={"parse": parse, "allowed": allowed, "doc": doc})


# ---------------------------------------------------------------- the settings


@dataclass(frozen=True)
class Settings:
    """Every GATEWAY_* variable the replica reads, parsed (docs/architecture.md has what each one does)."""

    # gunicorn (gunicorn_conf.py)
    host: str = setting("0.0.0.0", text)
    port: int = setting(8000, number(0, 65535, whole=True), "a port number from 0 to 65535")
    workers: int = setting(2, number(1, whole=True), "a whole number of workers, 1 or more")
    timeout: int = setting(300, number(0, whole=True), "a whole number of seconds, 0 or more")
    graceful_timeout: int = setting(30, number(0, whole=True), "a whole number of seconds, 0 or more")
    keepalive: int = setting(75, number(0, whole=True), "a whole number of seconds, 0 or more")
    access_log: bool = setting(False, switch, SWITCH)
    log_level: str = setting("info", choice(*LOG_LEVELS), "one of " + ", ".join(LOG_LEVELS))
    forwarded_allow_ips: str = setting("127.0.0.1", text)
    # where things are
    config: str = setting("config.yaml", text, doc="`config.yaml` beside entrypoint.sh (image: `/app/config.yaml`)")
    active_config: str = setting("", text, doc="set by entrypoint.sh")
    runtime_dir: str = setting("/tmp/gateway", text)
    replica_id: str = setting("", text, doc="the hostname")
    launcher: str = setting("", word, doc="unset (entrypoint.sh by hand)")
    secrets_dir: str = setting("/run/secrets", text)
    keys_file: str = setting("", text, doc="`keys/keys.json` beside entrypoint.sh (image: `/app/keys/keys.json`)")
    pricing_file: str = setting("", text, doc="`pricing.yaml` beside entrypoint.sh")
    # usage records and metrics
    usage_records: bool = setting(True, switch, SWITCH)
    ledger_dir: str = setting("ledger", path_or_off, doc="`./ledger` (image: `/var/lib/gateway-ledger`)")
    metrics: bool = setting(True, switch, SWITCH)
    metrics_flush_seconds: float = setting(1.0, number(0, 60, above=True), "a number of seconds above 0, at most 60")
    # requests and the provider calls
    max_body_mb: float = setting(10.0, number(0, above=True), "a number of megabytes above 0")  # = nginx's 10m
    fast_routes: bool = setting(True, switch, SWITCH)
    shared_upstream_client: bool = setting(True, switch, SWITCH)
    upstream_pool: int = setting(100, number(0, whole=True), "a whole number of connections, 0 or more")
    upstream_keepalive: float = setting(30.0, number(0), "a number of seconds, 0 or more")
    resilience: bool = setting(True, switch, SWITCH)
    upstream_connect_timeout: float = setting(10.0, number(0), "a number of seconds, 0 or more")
    upstream_first_byte_timeout: float = setting(300.0, number(0), "a number of seconds, 0 or more")
    upstream_total_timeout: float = setting(300.0, number(0), "a number of seconds, 0 or more")
    upstream_retries: int = setting(1, number(0, whole=True), "a whole number, 0 or more")
    upstream_backoff: float = setting(0.25, number(0), "a number of seconds, 0 or more")
    upstream_retry_max_wait: float = setting(5.0, number(0), "a number of seconds, 0 or more")
    circuit_failures: int = setting(5, number(0, whole=True), "a whole number, 0 or more (0 turns it off)")
    circuit_reset: float = setting(60.0, number(0), "a number of seconds, 0 or more")
    # Redis, limits, client keys, readiness
    redis_url: str = setting("", text, doc="unset")
    redis_timeout: float = setting(0.5, number(0, above=True), "a number of seconds above 0")
    limits_on_redis_down: str = setting("open", choice("open", "closed"), "open or closed")
    auth: str = setting("auto", auth_mode, "one of auto, on, off (on: on, true, yes, 1; off: off, false, no, 0, none)")
    ready_redis: bool = setting(False, switch, SWITCH)
    cache_max_entry_kb: int = setting(512, number(0, whole=True, above=True), "a whole number of kilobytes above 0")
    # the admin page (python -m gateway_kit.admin; its password is a secret: gateway_kit.secrets)
    admin_host: str = setting("127.0.0.1", text)
    admin_port: int = setting(8090, number(0, 65535, whole=True), "a port number from 0 to 65535")
    admin_replicas: str = setting("mlflow-gateway:8000", text)
    admin_audit_log: str = setting(
        "admin-audit.jsonl", text, doc="`./admin-audit.jsonl` (image: `/var/lib/gateway-admin/audit.jsonl`)"
    )
    admin_session_minutes: int = setting(60, number(1, 24 * 60, whole=True), "a whole number of minutes from 1 to 1440")
    admin_keys_secret: str = setting(
        "", kube_name, "a Kubernetes Secret's name (lower-case letters, digits, '-', '.')", doc="unset"
    )
    # demo mode (preflight)
    demo_upstream: str = setting("", text, doc="unset")
    demo_wait: float = setting(30.0, number(0), "a number of seconds, 0 or more")
    # Not GATEWAY_* variables: what else of the environment the replica reads at start.
    environ: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), repr=False, compare=False, metadata={"env": False}
    )  # for config.yaml's ${NAME:-default}
    trace_export: TraceExport | None = field(
        default=None, compare=False, metadata={"env": False}
    )  # OpenTelemetry's OTEL_EXPORTER_OTLP_* variables (trace_export_from): None when export is off

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Parse every GATEWAY_* variable of `environ`; SettingsError names the first bad one."""
        where = settings_at(environ.get(PREFIX + "LAUNCHER", ""))
        values: dict[str, Any] = {}
        for f in env_fields():
            name = variable(f)
            raw = environ.get(name, "")
            if not raw.strip():
                continue  # empty is unset: the default
            value = f.metadata["parse"](raw)
            if value is None:
                raise SettingsError(name, raw, f.metadata["allowed"], shown_default(f), where)
            values[f.name] = value
        if not values.get("replica_id"):
            import socket

            values["replica_id"] = socket.gethostname()
        return cls(**values, environ=MappingProxyType(dict(environ)), trace_export=trace_export_from(environ))

    @property
    def config_path(self) -> str:
        """The config the app serves: the one entrypoint.sh checked and wrote, else GATEWAY_CONFIG."""
        return self.active_config or self.config

    @property
    def ledger_on(self) -> bool:
        return self.ledger_dir != ""

    @property
    def otel_configured(self) -> bool:
        """An OTEL_* variable says OpenTelemetry will be set up (fast_routes.quiet_telemetry)."""
        return any(name.startswith("OTEL_") for name in self.environ)


def env_fields() -> list:
    """The dataclass fields that are GATEWAY_* variables, in declaration order."""
    return [f for f in fields(Settings) if f.metadata.get("env", True)]


def variable(f) -> str:
    """GATEWAY_<FIELD NAME IN CAPITALS>."""
    return PREFIX + f.name.upper()


def shown_default(f) -> str:
    """A field's default as docs/architecture.md writes it: `on`, `8000`, `0.25`, or the field's `doc`."""
    if f.metadata["doc"]:
        return f.metadata["doc"]
    value = f.default
    if isinstance(value, bool):
        return "`on`" if value else "`off`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def settings_at(launcher_name: str) -> str:
    from gateway_kit.launcher import by_name

    return by_name(launcher_name).settings_at


# ---------------------------------------------------------------- this process

_current: Settings | None = None


def current() -> Settings:
    """This process's settings, parsed from the environment the first time (SettingsError if a value is bad).
    gunicorn's master builds them before it forks, so every worker starts with them."""
    global _current  # noqa: PLW0603 - one Settings per process, by design
    if _current is None:
        _current = Settings.from_env(os.environ)
    return _current


def read(name: str) -> Any:
    """One GATEWAY_* variable as the environment holds it now (its default when unset or empty; SettingsError
    when not allowed). For the parts the command-line tools share (the pricing and keys files, the secrets
    directory, the launcher's wording): they must see a change to their environment, and not fail over a
    gateway setting they do not use."""
    f = next(f for f in env_fields() if variable(f) == name)
    raw = os.environ.get(name, "")
    if not raw.strip():
        return f.default
    value = f.metadata["parse"](raw)
    if value is None:
        raise SettingsError(
            name, raw, f.metadata["allowed"], shown_default(f), settings_at(os.environ.get(PREFIX + "LAUNCHER", ""))
        )
    return value


def fail(error: SettingsError) -> SystemExit:
    """The way a process refuses to start over a setting: the message on stderr, exit status 78."""
    import sys

    print(f"gateway: error: {error}", file=sys.stderr, flush=True)
    return SystemExit(ExitStatus.CONFIG)


# ---------------------------------------------------------------- variables of other programs

OTLP_PROTOCOL = "http/protobuf"  # the one OTLP protocol the kit's span export speaks (gateway_kit.traces)


@dataclass(frozen=True)
class TraceExport:
    """Where and how the replica exports its spans (gateway_kit.traces), from OpenTelemetry's standard variables."""

    url: str  # the collector's OTLP/HTTP traces URL: .../v1/traces
    headers: tuple[tuple[str, str], ...] = ()  # sent with every export (an API key of a hosted collector)
    timeout: float = 10.0  # seconds an export may take
    gzip: bool = False
    resource: tuple[tuple[str, str], ...] = ()  # the spans' resource attributes (service.name ...)


def trace_export_from(environ: Mapping[str, str]) -> TraceExport | None:
    """OpenTelemetry's exporter variables, as its SDKs read them: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (the URL as
    is) or OTEL_EXPORTER_OTLP_ENDPOINT (+ /v1/traces); _HEADERS (`name=value,...`, values URL-encoded),
    _TIMEOUT (milliseconds), _COMPRESSION (gzip or none), _PROTOCOL (http/protobuf only), each TRACES_ one first;
    OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES. None (no export) when no endpoint is set,
    OTEL_TRACES_EXPORTER is `none` or OTEL_SDK_DISABLED is true. SettingsError for a value the kit cannot use."""
    from urllib.parse import unquote

    def traces_or_all(suffix: str) -> tuple[str, str]:
        for name in (f"OTEL_EXPORTER_OTLP_TRACES_{suffix}", f"OTEL_EXPORTER_OTLP_{suffix}"):
            if environ.get(name, "").strip():
                return name, environ[name].strip()
        return "", ""

    def bad(name: str, value: str, allowed: str, default: str) -> SettingsError:
        return SettingsError(name, value, allowed, default, settings_at(environ.get(PREFIX + "LAUNCHER", "")))

    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    name, url = traces_or_all("ENDPOINT")
    if not url:
        return None
    if not url.startswith(("http://", "https://")):
        raise bad(name, url, "an http:// or https:// URL", "unset: no export")
    if name == "OTEL_EXPORTER_OTLP_ENDPOINT":  # the base URL: the traces' path is added
        url = url.rstrip("/") + "/v1/traces"
    name, protocol = traces_or_all("PROTOCOL")
    if protocol and protocol != OTLP_PROTOCOL:
        raise bad(name, protocol, f"{OTLP_PROTOCOL} (the kit exports OTLP over HTTP)", OTLP_PROTOCOL)
    name, raw = traces_or_all("HEADERS")
    headers = []
    for item in filter(str.strip, raw.split(",")):
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise bad(name, "<hidden>", "a list of name=value pairs separated by commas", "unset")
        headers.append((key.strip(), unquote(value.strip())))
    name, raw = traces_or_all("TIMEOUT")
    timeout = number(0, above=True)(raw) if raw else 10000
    if timeout is None:
        raise bad(name, raw, "a number of milliseconds above 0", "10000")
    name, compression = traces_or_all("COMPRESSION")
    if compression.lower() not in ("", "gzip", "none"):
        raise bad(name, compression, "gzip or none", "none")
    resource = {"service.name": "mlflow-gateway"}
    for item in filter(str.strip, environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(",")):
        key, equals, value = item.partition("=")
        if equals and key.strip():
            resource[key.strip()] = unquote(value.strip())
    if environ.get("OTEL_SERVICE_NAME", "").strip():
        resource["service.name"] = environ["OTEL_SERVICE_NAME"].strip()
    return TraceExport(url, tuple(headers), timeout / 1000, compression.lower() == "gzip", tuple(resource.items()))


def prometheus_multiproc_dir() -> str | None:
    """prometheus_client's PROMETHEUS_MULTIPROC_DIR: set (by gunicorn_conf.py) when workers share metric files."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def set_prometheus_multiproc_dir(directory: str | None) -> None:
    """Set (or, with None, remove) PROMETHEUS_MULTIPROC_DIR, for the gunicorn master's workers to inherit."""
    if directory is None:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory


def tool_variable(name: str) -> str | None:
    """A variable the command-line tools read as it is, not a gateway setting: GATEWAY_URL and GATEWAY_API_KEY
    (evaluate_gateway.py), NO_COLOR, and the gateway variables analyze_costs.py only looks at (the ledger dir)."""
    return os.environ.get(name)


PROVIDER_VARIABLES = frozenset(
    f"{provider}_{suffix}"
    for provider in ("OPENAI", "ANTHROPIC", "AZURE_OPENAI")
    for suffix in ("API_KEY", "API_KEY_FILE", "API_BASE", "DEPLOYMENT", "API_VERSION")
)


def environment_without_settings() -> dict[str, str]:
    """This process's environment without any GATEWAY_* setting and without any provider key or URL
    (PROVIDER_VARIABLES): what the tests and benchmarks start the kit's processes with (gateway_kit.procs), so
    nothing reaches a real provider and only the settings they add apply."""
    return {k: v for k, v in os.environ.items() if k not in PROVIDER_VARIABLES and not k.startswith(PREFIX)}


def tool_variables(prefix: str) -> dict[str, str]:
    """The variables starting with `prefix` of a tool the kit ships (the fake upstream's FAKE_LLM_*), which it
    takes as defaults for its flags."""
    return {name: value for name, value in os.environ.items() if name.startswith(prefix)}
