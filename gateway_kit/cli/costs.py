"""What the gateway's requests cost: a report from usage records, for people (table) or machines (JSON, CSV).

Every request through the gateway leaves one usage record (a JSON line tagged "type":"usage") on stdout, so in
`docker logs`, and in the ledger (ledger/usage-<replica>-<day>.jsonl). Read them from any mix of sources;
a request seen in several (same request id) counts once.

    python3 analyze_costs.py --ledger ledger                        # the durable ledger: the complete record
    python3 analyze_costs.py --compose                              # docker logs of every gateway replica
    python3 analyze_costs.py --container mlflow-gateway             # docker logs of one container
    python3 analyze_costs.py --response-file gateway_results.json   # evaluate_gateway.py's results
    python3 analyze_costs.py --log-file gateway.log                 # saved `docker logs` / `docker compose logs`
    docker compose logs mlflow-gateway | python3 analyze_costs.py - # stdin

    python3 analyze_costs.py --ledger ledger --since 7d --by day --endpoint chat
    python3 analyze_costs.py --ledger ledger --since 2026-11-01 --until 2026-11-30 --json > november.json
    python3 analyze_costs.py --ledger ledger --csv --details > requests.csv
    python3 analyze_costs.py --ledger ledger --plot cost.png        # needs matplotlib
    python3 analyze_costs.py --response-file gateway_results.json --model gpt-4   # what if it all ran on gpt-4?
    python3 analyze_costs.py --ledger ledger --since 1d --budget 50 # cron: exit 1 when over $50

Prices: a record carries the cost the gateway computed. Records without one (unknown model at the time, old
results files) are priced now, from genai-prices and pricing.yaml ($GATEWAY_PRICING_FILE, ./pricing.yaml, or
the kit's own). Models still without a price are listed, never counted as $0.

--model NAME is the what-if (as in the earlier kit); to keep only one model's requests, use --only-model NAME.

Exit codes: 0 report written, 1 total cost above --budget, 2 usage error (a bad flag, an unreadable source,
Docker not reachable).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import heapq
import io
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zlib
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from gateway_kit.exit_status import ExitStatus
from gateway_kit.settings import tool_variable
from gateway_kit.pricing import Pricer, PricingFileError
from gateway_kit.usage import (
    FIELD_TYPES,
    RECORD_FIELDS,
    RECORD_TYPE,
    RECORD_VERSION,
    REFUSED,
    TOKEN_FIELDS,
    token_fields,
    usage_from_object,
)

PROG = "analyze_costs.py"
KIT_DIR = Path(__file__).resolve().parents[2]  # the kit's checkout: its pricing.yaml when run from elsewhere
SEED_RESULTS_FILE = Path("gateway_results.json")
DEFAULT_COMPOSE_FILES = ("docker-compose.prod.yml",)
DEFAULT_SERVICE = "mlflow-gateway"
DETAILS_AUTO_MAX = 20  # a per-request table is shown when there are at most this many requests
PARALLEL_MIN_BYTES = 64 * 1024 * 1024  # below this, one process is faster than starting several

# Fields of an aggregate row, by index (plain lists are the fastest thing to add into).
REQ, FAILED, PROMPT, COMPL, CACHED, REASON, TOTAL, COST, UNPRICED, UNPRICED_TOK, HITS, SAVED = range(12)
ROW_FIELDS = (
    "requests",
    "failed",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "total_tokens",
    "cost_usd",
    "unpriced_requests",
    "unpriced_tokens",
    "cache_hits",
    "saved_usd",
)


class UsageError(Exception):
    """Something the user can fix: printed as `analyze_costs.py: error: <message>`, exit 2."""


# -- sources ------------------------------------------------------------------------------------------------


@dataclass
class Input:
    """One file of JSON lines to scan, belonging to a source the report names."""

    source: str  # e.g. "ledger ledger/", "container mlflow-gateway"
    path: Path
    kind: str  # "ledger" (every line should be a record) or "log" (mixed output: other lines are expected)
    display: str  # how to name the file in warnings


@dataclass
class Collected:
    inputs: list[Input] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tmpdir: tempfile.TemporaryDirectory | None = None

    def spool(self, name: str) -> Path:
        if self.tmpdir is None:
            self.tmpdir = tempfile.TemporaryDirectory(prefix="analyze_costs-")
        return Path(self.tmpdir.name) / f"{len(self.inputs)}-{re.sub(r'[^A-Za-z0-9._-]', '_', name)}.jsonl"


def collect_sources(args: argparse.Namespace) -> Collected:
    """Every source named on the command line, as files of JSON lines (docker output and stdin are spooled to
    temporary files so that every source is read the same way). Gateway-side sources come first, so that when
    a request is in several, the gateway's record is the one counted."""
    got = Collected()
    stdin_used = False
    for directory in args.ledger:
        add_ledger(got, Path(directory))
    for name in args.paths:
        if name == "-":
            stdin_used = add_stdin(got, stdin_used)
        elif Path(name).is_dir():
            add_ledger(got, Path(name))
        else:
            add_log_file(got, Path(name))
    for name in args.log_file:
        if name == "-":
            stdin_used = add_stdin(got, stdin_used)
        else:
            add_log_file(got, Path(name))
    container_failures: list[str] = []
    for name in args.container:
        try:
            add_docker(got, f"container {name}", ["docker", "logs", name], container=name)
        except UsageError as e:
            container_failures.append(str(e))
    if args.compose:
        add_compose(got, args.compose_file, args.service)
    for name in args.response_file:
        add_response_file(got, Path(name))

    if args.container and seed_fallback_applies(args, got, container_failures):
        why = container_failures[0].split(" — ")[0] if container_failures else "no usage records in its logs"
        got.notes.append(f"{why}; reading ./{SEED_RESULTS_FILE} instead (as the earlier kit did)")
        add_response_file(got, SEED_RESULTS_FILE)
    elif container_failures:
        raise UsageError(container_failures[0])
    return got


def seed_fallback_applies(args: argparse.Namespace, got: Collected, failures: list[str]) -> bool:
    """The earlier kit's `--container mlflow-gateway` fell back to ./gateway_results.json when the logs had no
    data; so does this one, when the containers were the only source and gave nothing."""
    only_containers = not (args.ledger or args.paths or args.log_file or args.compose or args.response_file)
    if not only_containers or not SEED_RESULTS_FILE.is_file():
        return False
    if failures:
        return True
    return not any(_has_usage_line(i.path) for i in got.inputs)


def _has_usage_line(path: Path) -> bool:
    with open(path, encoding="utf-8", errors="replace") as f:
        return any(_TAG in line for line in f)


def add_ledger(got: Collected, directory: Path) -> None:
    if not directory.exists():
        raise UsageError(
            f"ledger directory {directory} does not exist — pass the directory the gateway writes to "
            "($GATEWAY_LEDGER_DIR, the ledger volume), e.g. --ledger ./ledger"
        )
    if not directory.is_dir():
        raise UsageError(f"{directory} is a file, not a ledger directory — read it with --log-file {directory}")
    files = sorted(p for p in directory.rglob("usage-*.jsonl*") if p.suffix in (".jsonl", ".gz") and p.is_file())
    if not files:
        files = sorted(p for p in directory.rglob("*.jsonl*") if p.suffix in (".jsonl", ".gz") and p.is_file())
    label = f"ledger {directory}"
    got.sources.append(label)
    for p in files:
        got.inputs.append(Input(label, p, "ledger", str(p)))
    if not files:
        got.notes.append(f"{directory} holds no ledger files (usage-<replica>-<day>.jsonl)")


def add_log_file(got: Collected, path: Path) -> None:
    if not path.is_file():
        what = "is a directory — read it with --ledger" if path.is_dir() else "does not exist"
        raise UsageError(f"log file {path} {what} — export logs with `docker compose logs mlflow-gateway > {path}`")
    label = f"log-file {path}"
    got.sources.append(label)
    got.inputs.append(Input(label, path, "log", str(path)))


def add_stdin(got: Collected, already: bool) -> bool:
    if already:
        return True
    label = "stdin"
    target = got.spool("stdin")
    with open(target, "w", encoding="utf-8") as out:
        shutil.copyfileobj(io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace"), out)
    got.sources.append(label)
    got.inputs.append(Input(label, target, "log", "stdin"))
    return True


def add_docker(got: Collected, label: str, command: list[str], container: str | None = None) -> None:
    """Run a docker command whose output carries usage records, into temporary files: stdout, and stderr
    (where `docker logs` replays the container's stderr, which could carry records too)."""
    out, err = got.spool(label), got.spool(label + "-stderr")
    run_docker(command, out, err, label, container=container)
    got.sources.append(label)
    got.inputs.append(Input(label, out, "log", label))
    got.inputs.append(Input(label, err, "log", f"{label} (stderr)"))


def add_compose(got: Collected, compose_file: str | None, service: str) -> None:
    if compose_file is None:
        compose_file = next((f for f in DEFAULT_COMPOSE_FILES if Path(f).is_file()), None)
    elif not Path(compose_file).is_file():
        raise UsageError(
            f"compose file {compose_file} does not exist — pass the file you deployed with, "
            "e.g. --compose-file docker-compose.prod.yml"
        )
    file_args = ["-f", compose_file] if compose_file else []
    tail = [*file_args, "logs", "--no-color", "--timestamps", service]
    label = f"compose {service}" + (f" ({compose_file})" if compose_file else "")
    try:
        add_docker(got, label, ["docker", "compose", *tail])
    except ComposeMissing:
        if not shutil.which("docker-compose"):
            raise UsageError(
                "`docker compose` is not available (no compose plugin) and neither is docker-compose — install "
                "the Docker Compose plugin, or read the ledger with --ledger DIR / saved logs with --log-file FILE"
            ) from None
        add_docker(got, label, ["docker-compose", *tail])


class ComposeMissing(UsageError):
    pass


_DOCKER_HINT = "read the ledger with --ledger DIR, or saved logs with --log-file FILE"


def run_docker(command: list[str], out_path: Path, err_path: Path, label: str, container: str | None = None) -> None:
    """Run a docker command with its stdout and stderr streamed into files; a failure becomes a UsageError
    that says what is wrong (no docker, no engine, no such container, no compose plugin)."""
    try:
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            returncode = subprocess.run(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL).returncode
    except FileNotFoundError:
        raise UsageError(f"docker is not installed (no `{command[0]}` on PATH) — {_DOCKER_HINT}") from None
    except OSError as e:
        raise UsageError(f"cannot run {command[0]}: {e.strerror or e} — {_DOCKER_HINT}") from None
    if returncode == 0:
        return
    with open(err_path, "rb") as err:
        err.seek(max(0, err_path.stat().st_size - 4096))
        text = " ".join(err.read().decode("utf-8", "replace").split())
    low = text.lower()
    if (
        "cannot connect to the docker daemon" in low
        or "is the docker daemon running" in low
        or "error during connect" in low
    ):
        raise UsageError(f"cannot reach the Docker engine ({_tail(text)}) — start Docker, or {_DOCKER_HINT}")
    if "no such container" in low:
        raise UsageError(
            f"container {container!r} does not exist — list them with `docker ps -a`; a scaled deployment names "
            f"its replicas <project>-mlflow-gateway-N: use --compose; or {_DOCKER_HINT}"
        )
    if command[:2] == ["docker", "compose"] and (
        "unknown command" in low or "is not a docker command" in low or "unknown shorthand flag" in low
    ):
        raise ComposeMissing("docker compose is not installed")
    if "no such service" in low:
        raise UsageError(f"{label}: {_tail(text)} — name the gateway's service with --service NAME")
    raise UsageError(f"`{' '.join(command)}` failed (exit {returncode}): {_tail(text)} — {_DOCKER_HINT}")


def _tail(text: str) -> str:
    """The end of docker's error output, which is where its own message is."""
    return ("..." + text[-300:] if len(text) > 300 else text) or "no message"


def add_response_file(got: Collected, path: Path) -> None:
    """evaluate_gateway.py results ({"requests": [...]}), the earlier kit's results (a list of results with a
    "response"), or JSON lines; converted to usage records in a temporary file."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise UsageError(
            f"response file {path} does not exist — run `python3 evaluate_gateway.py` first (it writes "
            "gateway_results.json), or read the gateway's own records with --ledger / --compose"
        ) from None
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
    label = f"response-file {path}"
    try:
        doc = json.loads(text)
    except ValueError:
        got.sources.append(label)
        got.inputs.append(Input(label, path, "log", str(path)))  # JSON lines, e.g. records saved by hand
        return
    fallback_ts = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    records = records_from_results(doc, fallback_ts)
    if records is None:
        raise UsageError(
            f'{path} is JSON but not a results file (expected evaluate_gateway.py\'s {{"requests": [...]}} or '
            'a list of results with a "response") — for usage records use --log-file or --ledger'
        )
    target = got.spool(label)
    with open(target, "w", encoding="utf-8") as out:
        for rec in records:
            out.write(json.dumps(rec, separators=(",", ":")) + "\n")
    got.sources.append(label)
    got.inputs.append(Input(label, target, "ledger", str(path)))


def records_from_results(doc: Any, fallback_ts: str) -> list[dict[str, Any]] | None:
    """Usage records from a results document, or None if it is not one."""
    if isinstance(doc, dict) and doc.get("type") == RECORD_TYPE:
        return [doc]
    if isinstance(doc, dict) and isinstance(doc.get("requests"), list):
        return [r for r in (_from_evaluate(x, fallback_ts) for x in doc["requests"]) if r is not None]
    items = doc.get("results") if isinstance(doc, dict) else doc
    if isinstance(items, list):
        return [r for r in (_from_seed_result(x, fallback_ts) for x in items) if r is not None]
    return None


def _from_evaluate(x: Any, fallback_ts: str) -> dict[str, Any] | None:
    """One evaluate_gateway.py request (schemas/gateway_results.schema.json): its fields carry the record's names
    (endpoint, model, provider, status, tokens, cost_usd, replica, request_id ...), but for the time
    (started_at), the path, the error (error_class) and where the price came from (cost_source in older files);
    the tokens may also be nested in a "usage" object."""
    if not isinstance(x, dict):
        return None
    if x.get("type") == RECORD_TYPE:
        return x
    usage = x.get("usage") if isinstance(x.get("usage"), dict) else x
    status = _int_or_none(x.get("status"))
    record = {name: x.get(name) for name in RECORD_FIELDS}
    record.update(
        ts=normalize_ts(x.get("started_at") or x.get("ts")) or fallback_ts,
        request_id=x.get("request_id") or None,
        route=x.get("path") or x.get("route"),
        status=status if status is not None else 0,
        stream=bool(x.get("stream")),
        partial=x.get("error_class") == "stream_interrupted" or bool(x.get("partial")),
        price_source=x.get("cost_source") or x.get("price_source"),
        error=x.get("error_class") or (x.get("error") if isinstance(x.get("error"), str) else None),
        **{name: usage.get(name) for name in TOKEN_FIELDS},
    )
    return {"type": RECORD_TYPE, "v": RECORD_VERSION, **record, "case": x.get("case")}


def _from_seed_result(x: Any, fallback_ts: str) -> dict[str, Any] | None:
    """One result of the earlier kit: {"test_name", "success", "response": {"model", "usage"}, ...}. Its tokens
    are read from the provider's answer as the gateway reads them; its costs came from an out-of-date price
    table, so they are priced again."""
    if not isinstance(x, dict):
        return None
    if "requests" in x or x.get("type") == RECORD_TYPE:
        return _from_evaluate(x, fallback_ts)
    response = x.get("response") if isinstance(x.get("response"), dict) else {}
    usage = response.get("usage") if isinstance(response.get("usage"), dict) else x.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    status = _int_or_none(x.get("status_code") if x.get("status_code") is not None else x.get("status"))
    success = x.get("success")
    if status is None:
        status = 200 if success is True or (success is None and usage and not x.get("error")) else 0
    return {
        "type": RECORD_TYPE,
        "v": RECORD_VERSION,
        "ts": normalize_ts(x.get("timestamp") or x.get("started_at")) or fallback_ts,
        "request_id": x.get("request_id") or None,
        "endpoint": x.get("endpoint") or "chat",
        "model": response.get("model") or x.get("model"),
        "provider": x.get("provider"),
        "status": status,
        "latency_ms": _seconds_to_ms(x.get("response_time")) if "latency_ms" not in x else x.get("latency_ms"),
        **token_fields(usage_from_object(usage)),
        "cost_usd": None,
        "error": x.get("error") if isinstance(x.get("error"), str) else None,
        "case": x.get("test_name") or x.get("name") or x.get("case"),
    }


def _seconds_to_ms(value: Any) -> float | None:
    try:
        return float(value) * 1000.0
    except (TypeError, ValueError):
        return None


def _int_or_none(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# -- time -----------------------------------------------------------------------------------------------------


def normalize_ts(value: Any) -> str:
    """A timestamp as the records write it (2026-11-22T10:00:00.123Z, UTC), or "" if it is not one."""
    if value is None or value == "":
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        dt = datetime.fromtimestamp(float(value), timezone.utc)
    else:
        text = str(value).strip()
        try:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "T", 1))
        except ValueError:
            return ""
        dt = dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


_RELATIVE = re.compile(r"(\d+)\s*(m|min|h|d|w)")


def parse_when(text: str, *, end_of_day: bool = False, now: datetime | None = None) -> str:
    """--since / --until: an ISO date or time (UTC unless it has an offset), "today", "yesterday", or an age like
    30m, 24h, 7d, 2w. A date alone is its start, or with end_of_day its end. Returns a comparable prefix."""
    now = now or datetime.now(timezone.utc)
    t = text.strip().lower()
    if m := _RELATIVE.fullmatch(t):
        n, unit = int(m.group(1)), m.group(2)
        delta = {
            "m": timedelta(minutes=n),
            "min": timedelta(minutes=n),
            "h": timedelta(hours=n),
            "d": timedelta(days=n),
            "w": timedelta(weeks=n),
        }[unit]
        return (now - delta).strftime("%Y-%m-%dT%H:%M:%S")
    if t in ("today", "yesterday"):
        day = now.date() - timedelta(days=1 if t == "yesterday" else 0)
        t = day.isoformat()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", t):
        day = datetime.fromisoformat(t).replace(tzinfo=timezone.utc)
        return (day + timedelta(days=1 if end_of_day else 0)).strftime("%Y-%m-%dT%H:%M:%S")
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace(" ", "T", 1))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time — use 2026-11-22, 2026-11-22T10:00, 2026-11-22T10:00:00+07:00, today, "
            "or an age: 30m, 24h, 7d, 2w"
        ) from None
    dt = dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}"


@dataclass
class Options:
    """What the scan needs from the command line (picklable, for worker processes)."""

    by_hour: bool = False
    since: str | None = None
    until: str | None = None
    models: frozenset[str] | None = None
    endpoints: frozenset[str] | None = None
    clients: frozenset[str] | None = None
    what_if: str | None = None
    pricing_file: str | None = None
    top: int = 5
    details: bool = False


@dataclass
class SourceStats:
    records: int = 0  # usage records counted
    duplicates: int = 0  # records of a request already counted
    filtered: int = 0  # outside --since/--until/--only-model/--endpoint/--client
    malformed: int = 0  # lines that look like usage records but are not valid ones
    malformed_at: list[str] = field(default_factory=list)  # "file:line" of the first few
    foreign: int = 0  # other lines (gateway logs, nginx, ...)
    foreign_at: list[str] = field(default_factory=list)  # "file:line" of the first few

    def merge(self, other: SourceStats) -> None:
        self.records += other.records
        self.duplicates += other.duplicates
        self.filtered += other.filtered
        self.malformed += other.malformed
        self.malformed_at.extend(other.malformed_at)
        self.foreign += other.foreign
        self.foreign_at.extend(other.foreign_at)


@dataclass
class Scan:
    """The result of scanning (part of) the inputs; scans of disjoint parts merge."""

    groups: dict[tuple[str, Any, Any, Any, Any], list[Any]] = field(default_factory=dict)
    stats: dict[str, SourceStats] = field(default_factory=dict)
    first: str | None = None
    last: str | None = None
    partial: int = 0
    refused: int = 0  # failed requests the gateway refused itself (no or bad key, over a limit)
    top: list[tuple[float, int, dict[str, Any]]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)  # per-request rows (all, or the first 21)
    rows_complete: bool = True
    id_hashes: array | None = None  # fingerprints of the request ids counted, to check parts are disjoint

    def merge(self, other: Scan, opts: Options) -> None:
        for key, row in other.groups.items():
            mine = self.groups.get(key)
            if mine is None:
                self.groups[key] = row
            else:
                for i in range(len(row)):
                    mine[i] += row[i]
        for name, st in other.stats.items():
            self.stats.setdefault(name, SourceStats()).merge(st)
        if other.first and (self.first is None or other.first < self.first):
            self.first = other.first
        if other.last and (self.last is None or other.last > self.last):
            self.last = other.last
        self.partial += other.partial
        self.refused += other.refused
        self.top = heapq.nlargest(opts.top, self.top + other.top, key=lambda t: t[0])
        self.rows.extend(other.rows)
        self.rows_complete = self.rows_complete and other.rows_complete


# -- scanning: the hot loop ---------------------------------------------------------------------------------
#
# Every record becomes one tuple of strings ("" for null or missing), in the order of GROUPS: the text before
# the record on its line, the record's JSON text, then the fields the report reads. Records as the gateway writes
# them are cut out of a block of text by one regular expression, _FAST, generated from the record's model
# (gateway_kit.usage: RECORD_FIELDS in the order they are written, FIELD_TYPES); findall gives its groups as
# these tuples. Anything else (another writer, an evaluate_gateway.py result, a docker prefix the pattern does
# not expect) goes through json.loads and _as_groups, which checks and normalises it into the same tuple. scan()
# unpacks each tuple in the order of GROUPS and adds it into plain lists without further checks; _row reads one
# by name, with the record's JSON, for the few requests shown one by one.

GROUPS = (
    "prefix",
    "text",
    "ts",
    "request_id",
    "endpoint",
    "provider",
    "model",
    "status",
    "partial",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "client",
    "cost_usd",
    "cache",
    "saved_usd",
)
_TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z")
_TAG = f'"{RECORD_TYPE}"'  # in every record's JSON text, as the value of "type"
_RECORD_START = '{"type":' + _TAG + ","
_CAPTURING = re.compile(r"\((?!\?)")  # the opening of a capturing group


def _last_nullable(names: tuple[str, ...]) -> frozenset[str]:
    """The last fields of a record whose default is None, in a row. One the report reads and a record lacks is
    "" in its groups, as a null one is."""
    from gateway_kit.usage import UsageRecord

    defaults = {f.name: f.default for f in fields(UsageRecord)}
    at = len(names)
    while at > 0 and defaults[names[at - 1]] is None:
        at -= 1
    return frozenset(names[at:])


_MAY_BE_MISSING = _last_nullable(RECORD_FIELDS)


def _fast_record_pattern() -> re.Pattern[str]:
    """One line holding a record exactly as UsageRecord.to_json() writes it, after an optional prefix
    (`docker logs --timestamps`, `docker compose logs`), newline included. One named group per name in GROUPS.

    It takes a record in about half the time of json.loads, and only what json.loads would read the same way:
    strings without escapes, plain numbers, null. The timestamp must be canonical UTC. The last fields whose
    default is null (those added in later versions, such as trace_id) may be missing, as an older writer left
    them: each is optional after the one before it."""
    by_type = {
        str: r'(?:"([^"\\\x00-\x1f]*)"|null)',
        int: r"(?:(\d+)|null)",
        float: r"(?:(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)|null)",
        bool: r"(true|false)",
    }
    body, optional = "", 0
    for name in RECORD_FIELDS:
        value = f'"({_TS.pattern})"' if name == "ts" else by_type[FIELD_TYPES[name]]
        # A field the report does not read is checked, not captured: fewer strings to make per record.
        value = _CAPTURING.sub(f"(?P<{name}>" if name in GROUPS else "(?:", value)
        if name in _MAY_BE_MISSING:
            body += "(?:"
            optional += 1
        body += f',"{name}":{value}'
    body += ")?" * optional
    head = re.escape(f'{_RECORD_START}"v":{RECORD_VERSION}')
    pattern = re.compile(r"^(?P<prefix>[^{\n]*)(?P<text>" + head + body + r"\})[ \t\r]*(?:\n|\Z)", re.MULTILINE)
    if tuple(sorted(pattern.groupindex, key=pattern.groupindex.get)) != GROUPS or pattern.groups != len(GROUPS):
        raise ImportError(
            "analyze_costs.py: GROUPS must name fields of gateway_kit.usage.UsageRecord in the order they are "
            "written (scan() unpacks a record's groups in that order)"
        )
    return pattern


_FAST = _fast_record_pattern()
OK_STATUSES = frozenset(str(code) for code in range(200, 400))  # as text, the way records are read
_REFUSED = re.compile(r'"error"\s*:\s*"' + re.escape(REFUSED))  # in a failed record's JSON text
_CHUNK_CHARS = 4 * 1024 * 1024


def _as_groups(prefix: str, text: str, d: dict[str, Any]) -> tuple[Any, ...]:
    """A parsed record as a tuple of GROUPS, the shape of the fast pattern's; ValueError if a field cannot be one."""
    out: list[Any] = [prefix, text]
    for name in GROUPS[2:]:
        v = d.get(name)
        kind = FIELD_TYPES[name]
        if name == "ts":
            v = v if v.__class__ is str and _TS.fullmatch(v) else normalize_ts(v)
        elif v is None:
            v = ""
        elif name == "status":
            v = _status_text(v)
        elif kind is int:
            v = _count_text(v, name)
        elif kind is float:
            v = _number_text(v, name)
        elif kind is bool:
            v = "true" if v is True or v == "true" else "false"
        else:
            v = str(v)
        out.append(v)
    return tuple(out)


def _count_text(v: Any, name: str) -> str:
    if isinstance(v, bool):
        raise ValueError(f"{name} is not a number")
    n = int(v)
    if n < 0:
        raise ValueError(f"{name} is negative")
    return str(n) if n else ""


def _number_text(v: Any, name: str) -> str:
    if isinstance(v, bool):
        raise ValueError(f"{name} is not a number")
    x = float(v)
    if x - x != 0.0:
        raise ValueError(f"{name} is not a finite number")
    return repr(x)


def _status_text(v: Any) -> str:
    """HTTP status as text; "ok"/"success" count as 200, other words as 0 (failed)."""
    if isinstance(v, bool):
        return "0"
    if isinstance(v, (int, float)):
        return str(int(v))
    s = str(v).strip().lower()
    if s.isdigit():
        return str(int(s))
    return "200" if s in ("ok", "success", "succeeded", "passed") else "0"


def _chunks(f: Any) -> Iterator[tuple[str, int]]:
    """(block of whole lines, line number of its first line), from an open text file."""
    line = 1
    carry = ""
    while True:
        block = f.read(_CHUNK_CHARS)
        if not block:
            if carry:
                yield carry + "\n", line
            return
        block = carry + block
        cut = block.rfind("\n") + 1
        if cut == 0:
            carry = block
            continue
        chunk, carry = block[:cut], block[cut:]
        yield chunk, line
        line += chunk.count("\n")


def _chunk_records(chunk: str, first_line: int, inp: Input, st: SourceStats) -> list[tuple[Any, ...]]:
    """The records of a block, in order. Lines that are not records are counted into st: foreign (other log
    lines) or, in a ledger, malformed."""
    records = _FAST.findall(chunk)
    if len(records) == chunk.count("\n"):
        return records  # every line is a record as the gateway writes it: the usual ledger block
    records = []
    pos = 0
    lines_before = 0  # newlines in chunk[:pos]
    for m in _FAST.finditer(chunk):
        start = m.start()
        if start != pos:
            _slow_lines(chunk[pos:start], first_line + lines_before, inp, st, records)
            lines_before += chunk.count("\n", pos, start)
        records.append(m.groups(""))
        pos = m.end()
        lines_before += 1
    if pos < len(chunk):
        _slow_lines(chunk[pos:], first_line + lines_before, inp, st, records)
    return records


def _slow_lines(text: str, first_line: int, inp: Input, st: SourceStats, records: list[tuple[Any, ...]]) -> None:
    """Lines the fast pattern did not take: read with json.loads into records, or counted as not records."""
    is_ledger = inp.kind == "ledger"
    for k, line in enumerate(text.split("\n")):
        if not line or line.isspace():
            continue
        brace = line.find("{")
        while True:
            js = line[brace:] if brace >= 0 else ""
            problem = _slow_record(line[:brace], js, records) if _TAG in js else None
            if problem is None and not is_ledger:
                st.foreign += 1  # another program's log line
                if len(st.foreign_at) < 5:
                    st.foreign_at.append(f"{inp.display}:{first_line + k}")
            elif problem != "":
                st.malformed += 1  # a damaged record, or in a ledger anything that is not a record
                if len(st.malformed_at) < 10:
                    st.malformed_at.append(f"{inp.display}:{first_line + k}")
            # A writer killed mid-write leaves a fragment, and another worker of the replica may append a whole
            # record right after it: the fragment is lost, the record is read.
            glued = line.find(_RECORD_START, brace + 1) if problem else -1
            if glued < 0:
                break
            brace = glued


def _slow_record(prefix: str, js: str, records: list[tuple[Any, ...]]) -> str | None:
    """Append the record in js to records and return ""; None if js is not a usage record; else what is wrong."""
    try:
        d = json.loads(js)
    except ValueError:
        return "not JSON"
    if d.__class__ is not dict or d.get("type") != RECORD_TYPE:
        return None
    try:
        records.append(_as_groups(prefix, js, d))
    except (ValueError, TypeError, OverflowError) as e:
        return str(e)
    return ""


def records(inp: Input) -> Iterator[tuple[Any, ...]]:
    """Every usage record of one input as a tuple of GROUPS, in file order, read as scan() reads them (lines that
    are not records are skipped). For readers that want other figures than the report's (the admin page's last
    use per client and errors by class)."""
    opener = gzip.open if inp.path.suffix == ".gz" else open
    with opener(inp.path, "rt", encoding="utf-8", errors="replace") as f:
        for chunk, first_line in _chunks(f):
            yield from _chunk_records(chunk, first_line, inp, SourceStats())


def _row(g: tuple[Any, ...], cost: float | None, p: int, c: int, cached: int, r: int) -> dict[str, Any]:
    """One request for the report's tables, from its GROUPS and the record's JSON (only for the requests shown
    one by one)."""
    f = dict(zip(GROUPS, g))
    d = json.loads(f["text"])
    replica = d.get("replica")
    if not replica and "|" in f["prefix"]:
        replica = f["prefix"].split("|", 1)[0].strip()  # `docker compose logs` names the replica
    latency = d.get("latency_ms")
    return {
        "ts": f["ts"] or None,
        "request_id": f["request_id"] or None,
        "endpoint": f["endpoint"] or None,
        "provider": f["provider"] or None,
        "model": f["model"] or None,
        "client": f["client"] or None,
        "replica": str(replica) if replica else None,
        "status": int(f["status"]) if f["status"] else None,
        "stream": d.get("stream") is True,
        "partial": f["partial"] == "true",
        "prompt_tokens": p,
        "completion_tokens": c,
        "cached_tokens": cached,
        "reasoning_tokens": r,
        "cost_usd": cost,
        "latency_ms": latency if isinstance(latency, (int, float)) and not isinstance(latency, bool) else None,
        "case": str(d["case"]) if d.get("case") is not None else None,
        "error": str(d["error"]) if d.get("error") is not None else None,
        "cache": f["cache"] or None,
        "saved_usd": float(f["saved_usd"]) if f["saved_usd"] else None,
    }


def scan(inputs: list[Input], opts: Options, keep_ids: str = "") -> Scan:
    """Read every input, count each usage record once (by request id), and add it into its group.

    keep_ids ("fork" or "spawn": how this worker process was started) also returns fingerprints of the request
    ids counted, so that scan_all can check that workers reading different files did not share a request."""
    out = Scan()
    pricer = Pricer(opts.pricing_file) if opts.pricing_file else Pricer()
    cost_tokens = pricer.cost_tokens
    what_if = opts.what_if
    since, until = opts.since, opts.until
    models, endpoints, clients = opts.models, opts.endpoints, opts.clients
    filtering = bool(since or until or models or endpoints or clients)
    bucket_len = 13 if opts.by_hour else 10
    top_n, keep_all_rows = opts.top, opts.details
    top, rows, groups = out.top, out.rows, out.groups
    top_min = 0.0 if top_n else float("inf")  # a request enters the top list above this cost
    rows_open = True
    ok_statuses = OK_STATUSES
    seen: set[str] = set()
    seen_add = seen.add
    seq = itertools.count()
    first = "\U0010ffff"
    last = ""
    partial = 0
    refused = 0
    refused_in = _REFUSED.search

    for inp in inputs:
        st = out.stats.setdefault(inp.source, SourceStats())
        opener = gzip.open if inp.path.suffix == ".gz" else open
        try:
            f = opener(inp.path, "rt", encoding="utf-8", errors="replace")
        except OSError as e:
            raise UsageError(f"cannot read {inp.display}: {e.strerror or e}") from None
        records = duplicates = filtered = 0
        with f:
            try:
                for chunk, first_line in _chunks(f):
                    for g in _chunk_records(chunk, first_line, inp, st):
                        # GROUPS, in order (js: the record's JSON text)
                        (
                            _,
                            js,
                            ts,
                            rid,
                            endpoint,
                            provider,
                            model,
                            status,
                            pv,
                            p,
                            c,
                            tot,
                            cached,
                            r,
                            client,
                            cost,
                            hit,
                            saved,
                        ) = g
                        if rid:
                            if rid in seen:
                                duplicates += 1
                                continue
                            seen_add(rid)
                        if filtering and (
                            (since is not None and ts < since)
                            or (until is not None and ts >= until)
                            or (models is not None and model not in models)
                            or (endpoints is not None and endpoint not in endpoints)
                            or (clients is not None and client not in clients)
                        ):
                            filtered += 1
                            continue
                        records += 1
                        p = int(p) if p else 0
                        c = int(c) if c else 0
                        tot = int(tot) if tot else p + c
                        if ts < first:
                            first = ts
                        if ts > last:
                            last = ts
                        key = (ts[:bucket_len], model, endpoint, client, provider)
                        grp = groups.get(key)
                        if grp is None:
                            grp = groups[key] = [0, 0, 0, 0, 0, 0, 0, 0.0, 0, 0, 0, 0.0]
                        grp[0] += 1
                        if status not in ok_statuses:
                            grp[1] += 1  # failed
                            if refused_in(js):
                                refused += 1
                        grp[2] += p
                        grp[3] += c
                        grp[6] += tot
                        if cached and cached != "0":  # usually 0: skip the conversion
                            cached = int(cached)
                            grp[4] += cached
                        else:
                            cached = 0
                        if r and r != "0":
                            r = int(r)
                            grp[5] += r
                        else:
                            r = 0
                        if pv == "true":
                            partial += 1
                        if hit == "hit":  # answered from the response cache: $0, and what it saved
                            grp[HITS] += 1
                            if what_if is not None:
                                saved = cost_tokens(what_if, None, p, c, cached, r)[0]
                            elif saved:
                                saved = float(saved)
                            else:
                                saved = cost_tokens(model, provider, p, c, cached, r)[0]
                            grp[SAVED] += saved or 0.0
                            cost = 0.0
                        elif what_if is not None:
                            cost = cost_tokens(what_if, None, p, c, cached, r)[0]
                        elif not cost:
                            cost = cost_tokens(model, provider, p, c, cached, r)[0]
                        else:
                            cost = float(cost)
                        if cost is not None:
                            grp[7] += cost
                            if cost > top_min:
                                item = (cost, next(seq), _row(g, cost, p, c, cached, r))
                                if len(top) < top_n:
                                    heapq.heappush(top, item)
                                else:
                                    heapq.heapreplace(top, item)
                                if len(top) == top_n:
                                    top_min = top[0][0]
                        elif tot:
                            grp[8] += 1
                            grp[9] += tot
                        if rows_open:
                            rows.append(_row(g, cost, p, c, cached, r))
                            if not keep_all_rows and len(rows) > DETAILS_AUTO_MAX:
                                rows_open = False
            except (OSError, EOFError, zlib.error) as e:  # unreadable, or a damaged .gz
                raise UsageError(f"cannot read {inp.display}: {e} — check the file, or leave it out") from None
        st.records += records
        st.duplicates += duplicates
        st.filtered += filtered
        st.malformed_at.sort(key=_file_line_order)
        st.foreign_at.sort(key=_file_line_order)
    out.first = first if last else None
    out.last = last or None
    out.partial = partial
    out.refused = refused
    out.rows_complete = rows_open
    if keep_ids:
        out.id_hashes = _id_hashes(seen, forked=keep_ids == "fork")
    return out


def _file_line_order(where: str) -> tuple[str, int]:
    name, _, line = where.rpartition(":")
    return (name, int(line)) if line.isdigit() else (where, 0)


def _scan_files(job: tuple[list[Input], Options, str]) -> Scan:
    inputs, opts, start_method = job
    return scan(inputs, opts, keep_ids=start_method)


def scan_all(inputs: list[Input], opts: Options, workers: int | None) -> Scan:
    """Scan in one process, or, for a large ledger, in several.

    A ledger is many files (one per replica per day): each worker process reads a share of whole files. If a
    request turns up in files read by different workers, it would be counted twice, so the inputs are then
    read again by one process. Several sources (a ledger and logs often hold the same requests) are read by
    one process from the start."""
    if workers is None:
        size = sum(_size(i.path) for i in inputs)
        workers = min(os.cpu_count() or 1, 4) if size >= PARALLEL_MIN_BYTES else 1
    workers = min(workers, len(inputs))
    if workers <= 1 or len({i.source for i in inputs}) > 1:
        return scan(inputs, opts)
    import multiprocessing

    start_method = "fork" if sys.platform.startswith("linux") else "spawn"
    with multiprocessing.get_context(start_method).Pool(workers) as pool:
        parts = pool.map(_scan_files, [(share, opts, start_method) for share in _share_files(inputs, workers)])
    return merged(parts, opts) or scan(inputs, opts)


def merged(parts: list[Scan], opts: Options) -> Scan | None:
    """One scan of parts that each read other files (scanned with keep_ids), merged into the first; None when
    two parts counted the same request (then read the files again in one scan). scan_all merges its workers'
    parts with it; the admin page its scans of single files, kept while a file does not change."""
    if _same_request_in_two(parts):
        return None
    total = parts[0]
    for other in parts[1:]:
        total.merge(other, opts)
    total.id_hashes = None
    return total


def _share_files(inputs: list[Input], n: int) -> list[list[Input]]:
    """n lists of whole files with about the same number of bytes each (largest first, into the lightest)."""
    shares: list[tuple[int, int, list[Input]]] = [(0, k, []) for k in range(n)]
    for inp in sorted(inputs, key=lambda i: -_size(i.path)):
        size, k, files = heapq.heappop(shares)
        files.append(inp)
        heapq.heappush(shares, (size + _size(inp.path), k, files))
    return [files for _, _, files in sorted(shares, key=lambda s: s[1]) if files]


def _same_request_in_two(parts: list[Scan]) -> bool:
    """True if two parts counted the same request id (or two ids share a fingerprint: then read again)."""
    ids = sorted((p.id_hashes if p.id_hashes is not None else array("q") for p in parts), key=len)
    seen: set[int] = set(ids[0])
    if len(seen) != len(ids[0]):
        return True
    for more in ids[1:]:
        if not seen.isdisjoint(more):
            return True
        if more is not ids[-1]:
            seen.update(more)
    return False


def _id_hashes(ids: Iterable[str], forked: bool) -> array:
    """64-bit fingerprints of request ids, equal in every worker. Forked workers share the parent's str hash
    salt, so hash() will do; spawned ones do not, and use crc32 and adler32 of the id instead."""
    if forked:
        return array("q", map(hash, ids))
    out = array("q")
    append = out.append
    crc32, adler32 = zlib.crc32, zlib.adler32
    for rid in ids:
        b = rid.encode()
        append(((crc32(b) << 32) | adler32(b)) - (1 << 63))
    return out


def _size(path: Path) -> int:
    try:
        size = path.stat().st_size
    except OSError:
        return 0
    return size * 8 if path.suffix == ".gz" else size


# -- report -----------------------------------------------------------------------------------------------


def _rollup(groups: dict[tuple, list], index: int, label_none: str = "(none)") -> list[dict[str, Any]]:
    acc: dict[Any, list[Any]] = {}
    for key, g in groups.items():
        k = key[index]
        a = acc.get(k)
        if a is None:
            acc[k] = list(g)
        else:
            for i in range(len(g)):
                a[i] += g[i]
    out = []
    for k, a in acc.items():
        row = {"key": label_none if k is None or k == "" else str(k)}
        row.update(_row_numbers(a))
        out.append(row)
    return out


def _row_numbers(a: list[Any]) -> dict[str, Any]:
    row = dict(zip(ROW_FIELDS, a))
    row["ok"] = a[REQ] - a[FAILED]
    row["cost_usd"] = round(a[COST], 10)
    row["saved_usd"] = round(a[SAVED], 10)
    return row


def build_report(
    result: Scan, opts: Options, budget: float | None, pricer: Pricer, sources: list[str]
) -> dict[str, Any]:
    """The report (what --json prints) of a scan; the admin page (gateway_kit.admin) shows the same."""
    totals = [0, 0, 0, 0, 0, 0, 0, 0.0, 0, 0, 0, 0.0]
    for g in result.groups.values():
        for i in range(len(g)):
            totals[i] += g[i]
    by_cost = lambda row: (-row["cost_usd"], row["key"])  # noqa: E731
    unknown = {}
    for (_, model, _, _, provider), g in result.groups.items():
        if g[UNPRICED]:
            u = unknown.setdefault(
                (model, provider),
                {"model": model or "(none)", "provider": provider or None, "requests": 0, "tokens": 0},
            )
            u["requests"] += g[UNPRICED]
            u["tokens"] += g[UNPRICED_TOK]
    bucket_name = "hour" if opts.by_hour else "day"
    by_time = sorted(_rollup(result.groups, 0, "(no time)"), key=lambda row: row["key"])
    if opts.by_hour:
        for row in by_time:
            if len(row["key"]) == 13:
                row["key"] = row["key"].replace("T", " ") + ":00"
    ok = totals[REQ] - totals[FAILED]
    report: dict[str, Any] = {
        "sources": [
            {"source": name, **{k: v for k, v in vars(result.stats.get(name, SourceStats())).items()}}
            for name in sources
        ],
        "period": {"first": result.first, "last": result.last, "since": opts.since, "until": opts.until},
        "requests": {
            "total": totals[REQ],
            "ok": ok,
            "failed": totals[REQ] - ok,
            "partial": result.partial,
            "refused": result.refused,
        },
        "tokens": {
            "prompt": totals[PROMPT],
            "completion": totals[COMPL],
            "cached": totals[CACHED],
            "reasoning": totals[REASON],
            "total": totals[TOTAL],
        },
        "cost": {
            "total_usd": round(totals[COST], 10),
            "average_usd_per_successful_request": round(totals[COST] / ok, 10) if ok else 0.0,
            "unpriced_requests": totals[UNPRICED],
            "priced_as": opts.what_if,
            "price_of_priced_as": pricer.describe(opts.what_if) if opts.what_if else None,
        },
        "cache": {"hits": totals[HITS], "saved_usd": round(totals[SAVED], 10)},
        "by": bucket_name,
        "by_model": sorted(_rollup(result.groups, 1), key=by_cost),
        "by_endpoint": sorted(_rollup(result.groups, 2), key=by_cost),
        "by_client": sorted(_rollup(result.groups, 3), key=by_cost),
        f"by_{bucket_name}": by_time,
        "top_requests": [_round_row(r) for _, _, r in sorted(result.top, key=lambda t: (-t[0], t[1]))],
        "unknown_prices": sorted(unknown.values(), key=lambda u: (-u["tokens"], u["model"])),
        "pricing_file": str(pricer.overrides_path) if pricer.overrides_path else None,
    }
    show_rows = opts.details or (result.rows_complete and totals[REQ] <= DETAILS_AUTO_MAX)
    if show_rows:
        report["requests_detail"] = [
            _round_row(r) for r in sorted(result.rows, key=lambda r: (r["ts"], str(r["request_id"])))
        ]
    if budget is not None:
        report["budget"] = {"limit_usd": budget, "exceeded": totals[COST] > budget}
    return report


def _round_row(r: dict[str, Any]) -> dict[str, Any]:
    r = dict(r)
    if isinstance(r.get("cost_usd"), float):
        r["cost_usd"] = round(r["cost_usd"], 10)
    return r


# -- output -----------------------------------------------------------------------------------------------


def usd(x: float | None) -> str:
    if x is None:
        return "unknown"
    if abs(x) >= 100:
        return f"${x:,.2f}"
    if abs(x) >= 1:
        return f"${x:,.4f}"
    return f"${x:.6f}"


def _n(x: int) -> str:
    return f"{x:,}"


def table(headers: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    return [fmt(headers), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)]


def render_table(report: dict[str, Any], limit_rows: int = 30) -> str:
    out: list[str] = []
    req, tok, cost, period = report["requests"], report["tokens"], report["cost"], report["period"]
    line = "=" * 70
    span = f"{_short(period['first'])} → {_short(period['last'])} UTC" if period["first"] else "no requests"
    out += [line, f"Usage and cost report   {span}", line]
    for s in report["sources"]:
        extra = [f"{s['duplicates']:,} duplicates"] if s["duplicates"] else []
        if s["filtered"]:
            extra.append(f"{s['filtered']:,} outside the filters")
        if s["malformed"]:
            extra.append(f"{s['malformed']:,} malformed")
        out.append(f"Source: {s['source']}: {s['records']:,} records" + (f" ({', '.join(extra)})" if extra else ""))
    if cost["priced_as"]:
        out.append(f"What-if: every request priced as {cost['priced_as']} ({cost['price_of_priced_as']})")
    out += [
        "",
        "Request Statistics",
        f"Total Requests: {_n(req['total'])}",
        f"Successful: {_n(req['ok'])}",
        f"Failed: {_n(req['failed'])}",
    ]
    if req.get("refused"):
        out.append(f"  of which refused by the gateway (no or bad key, over a limit): {_n(req['refused'])}")
    if req["partial"]:
        out.append(f"Partial streams (cut before the end): {_n(req['partial'])}")
    out += [
        "",
        "Cost Summary",
        f"Total Prompt Tokens: {_n(tok['prompt'])} (cached: {_n(tok['cached'])})",
        f"Total Completion Tokens: {_n(tok['completion'])} (reasoning: {_n(tok['reasoning'])})",
        f"Total Tokens: {_n(tok['total'])}",
        f"Total Cost: {usd(cost['total_usd'])}",
        f"Average Cost per Request: {usd(cost['average_usd_per_successful_request'])} (per successful request)",
    ]
    if cost["unpriced_requests"]:
        out.append(f"Not in the total: {_n(cost['unpriced_requests'])} request(s) with an unknown price (see below)")
    if "budget" in report:
        b = report["budget"]
        verdict = "EXCEEDED" if b["exceeded"] else "within"
        out.append(f"Budget: {usd(b['limit_usd'])} — {verdict}")

    def breakdown(title: str, rows: list[dict[str, Any]], key_name: str) -> None:
        if not rows:
            return
        total_cost = cost["total_usd"] or 0.0
        shown = rows[:limit_rows]
        body = [
            [
                r["key"],
                _n(r["requests"]),
                _n(r["failed"]),
                _n(r["prompt_tokens"]),
                _n(r["completion_tokens"]),
                _n(r["total_tokens"]),
                _cost_cell(r),
                f"{100 * r['cost_usd'] / total_cost:.1f}%" if total_cost and r["cost_usd"] else "-",
            ]
            for r in shown
        ]
        out.extend(["", title])
        out.extend(
            table(
                [key_name, "requests", "failed", "prompt", "completion", "tokens", "cost", "share"],
                body,
                right={1, 2, 3, 4, 5, 6, 7},
            )
        )
        if len(rows) > len(shown):
            out.append(f"... and {len(rows) - len(shown)} more (--json or --csv lists them all)")

    breakdown("By model", report["by_model"], "model")
    breakdown("By endpoint", report["by_endpoint"], "endpoint")
    breakdown("By client", report["by_client"], "client")
    by_key = f"by_{report['by']}"
    breakdown(f"By {report['by']}", report[by_key], report["by"])
    if report["cache"]["hits"]:
        savings(out, report)

    if report["top_requests"] and req["total"] > 1:
        out.extend(["", f"Most expensive requests (top {len(report['top_requests'])})"])
        out.extend(_request_table(report["top_requests"]))
    if "requests_detail" in report:
        out.extend(["", "Requests"])
        out.extend(_request_table(report["requests_detail"]))
    if report["unknown_prices"]:
        out.extend(["", "Unknown prices (these requests are not in the total)"])
        for u in report["unknown_prices"]:
            prov = f" (provider {u['provider']})" if u["provider"] else ""
            out.append(f"  {u['model']}{prov}: {_n(u['requests'])} request(s), {_n(u['tokens'])} tokens")
        where = report["pricing_file"]
        if not where or not Path(where).is_file():
            where = "pricing.yaml (at the repository root, or $GATEWAY_PRICING_FILE)"
        name = report["unknown_prices"][0]["model"]
        out += [
            f"  Add a price to {where} in USD per 1M tokens and run this again:",
            "    models:",
            f"      {name}:",
            "        input_mtok: ...    # USD per 1M prompt tokens",
            "        output_mtok: ...   # USD per 1M completion tokens",
            f"  or price it as a public model:  {name}: {{model: gpt-4o-mini}}",
        ]
    return "\n".join(out) + "\n"


def savings(out: list[str], report: dict[str, Any]) -> None:
    """The response cache's hits and what they saved (what the provider would have charged), by endpoint and
    client; only the groups that had a hit."""
    cache = report["cache"]
    out += [
        "",
        "Response cache (hits cost $0; saved: what the provider would have charged)",
        f"Hits: {_n(cache['hits'])} of {_n(report['requests']['total'])} requests, saved {usd(cache['saved_usd'])}",
    ]
    for title, group in (("endpoint", "by_endpoint"), ("client", "by_client")):
        rows = sorted((r for r in report[group] if r["cache_hits"]), key=lambda r: (-r["saved_usd"], r["key"]))
        body = [[r["key"], _n(r["cache_hits"]), _n(r["requests"]), usd(r["saved_usd"])] for r in rows]
        out.extend(["", f"Saved by {title}"])
        out.extend(table([title, "hits", "requests", "saved"], body, right={1, 2, 3}))


def _cost_cell(row: dict[str, Any]) -> str:
    """A group's cost: "unknown" if it has requests without a price and nothing priced, "+ ?" if some."""
    if not row["unpriced_requests"]:
        return usd(row["cost_usd"])
    return f"{usd(row['cost_usd'])} + ?" if row["cost_usd"] else "unknown"


def _short(ts: str | None) -> str:
    return ts[:19].replace("T", " ") if ts else "-"


def _request_table(rows: list[dict[str, Any]]) -> list[str]:
    body = [
        [
            _short(r["ts"]),
            str(r.get("request_id") or "-")[:36],
            str(r.get("case") or r.get("endpoint") or "-"),
            str(r.get("model") or "-"),
            str(r.get("status") if r.get("status") is not None else "-"),
            _n(r["prompt_tokens"]),
            _n(r["completion_tokens"]),
            usd(r["cost_usd"]),
        ]
        for r in rows
    ]
    return table(
        ["time", "request id", "endpoint", "model", "status", "prompt", "completion", "cost"], body, right={4, 5, 6, 7}
    )


CSV_GROUP_FIELDS = [
    "group",
    "key",
    "requests",
    "ok",
    "failed",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "total_tokens",
    "cost_usd",
    "unpriced_requests",
    "cache_hits",
    "saved_usd",
]
CSV_REQUEST_FIELDS = [
    "ts",
    "request_id",
    "endpoint",
    "provider",
    "model",
    "client",
    "replica",
    "status",
    "stream",
    "partial",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "cost_usd",
    "latency_ms",
    "case",
    "error",
    "cache",
    "saved_usd",
]


def render_csv(report: dict[str, Any], details: bool) -> str:
    """--details: one row per request. Otherwise one row per group (total, model, endpoint, client, day/hour)."""
    buf = io.StringIO()
    if details:
        w = csv.DictWriter(buf, fieldnames=CSV_REQUEST_FIELDS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in report["requests_detail"]:
            w.writerow(r)
        return buf.getvalue()
    w = csv.DictWriter(buf, fieldnames=CSV_GROUP_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    req, tok, cost = report["requests"], report["tokens"], report["cost"]
    w.writerow(
        {
            "group": "total",
            "key": "all",
            "requests": req["total"],
            "ok": req["ok"],
            "failed": req["failed"],
            "prompt_tokens": tok["prompt"],
            "completion_tokens": tok["completion"],
            "cached_tokens": tok["cached"],
            "reasoning_tokens": tok["reasoning"],
            "total_tokens": tok["total"],
            "cost_usd": cost["total_usd"],
            "unpriced_requests": cost["unpriced_requests"],
            "cache_hits": report["cache"]["hits"],
            "saved_usd": report["cache"]["saved_usd"],
        }
    )
    for group in ("model", "endpoint", "client", report["by"]):
        for r in report[f"by_{group}"]:
            w.writerow({"group": group, **r})
    return buf.getvalue()


def check_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(
            "--plot needs matplotlib, which is not installed — pip install matplotlib (it is not a dependency "
            "of the kit), or leave out --plot"
        ) from None


def write_plot(result: Scan, report: dict[str, Any], path: str) -> None:
    """Cost per day (or hour) by model: one line per model (the 8 most expensive; the rest as "other")."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_bucket_model: dict[tuple[str, str], float] = {}
    for (bucket, model, _, _, _), g in result.groups.items():
        k = (bucket, model or "(none)")
        by_bucket_model[k] = by_bucket_model.get(k, 0.0) + g[COST]
    buckets = sorted({b for b, _ in by_bucket_model})
    top_models = [r["key"] for r in report["by_model"][:8]]
    series: dict[str, list[float]] = {m: [0.0] * len(buckets) for m in top_models}
    index = {b: i for i, b in enumerate(buckets)}
    for (b, m), v in by_bucket_model.items():
        name = m if m in series else "other"
        series.setdefault(name, [0.0] * len(buckets))[index[b]] += v
    labels = [b.replace("T", " ") + (":00" if len(b) == 13 else "") for b in buckets]
    fig, ax = plt.subplots(figsize=(10, 5))
    for name, values in series.items():
        ax.plot(labels, values, marker="o", label=name)
    ax.set_title(f"Cost per {report['by']} by model (USD)")
    ax.set_ylabel("USD")
    ax.tick_params(axis="x", rotation=45)
    ax.legend(loc="upper left", fontsize="small")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror or e} — choose another --plot path") from None
    finally:
        plt.close(fig)


# -- command line ------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("sources (any mix; a request in several counts once)")
    src.add_argument("paths", nargs="*", metavar="PATH", help="a ledger directory, a log file, or - for stdin")
    src.add_argument(
        "--ledger",
        action="append",
        default=[],
        metavar="DIR",
        help="ledger directory (usage-<replica>-<day>.jsonl[.gz]); default $GATEWAY_LEDGER_DIR when no source is given",
    )
    src.add_argument(
        "--container",
        action="append",
        default=[],
        metavar="NAME",
        help="`docker logs NAME` of one container, e.g. mlflow-gateway",
    )
    src.add_argument(
        "--compose", action="store_true", help="`docker compose logs` of every replica of the gateway service"
    )
    src.add_argument(
        "--compose-file",
        metavar="FILE",
        help="compose file for --compose (default: docker-compose.prod.yml if present)",
    )
    src.add_argument(
        "--service", default=DEFAULT_SERVICE, help=f"compose service for --compose (default: {DEFAULT_SERVICE})"
    )
    src.add_argument(
        "--log-file",
        action="append",
        default=[],
        metavar="FILE",
        help="saved logs: JSON lines, `docker logs --timestamps` or `docker compose logs` output; - is stdin",
    )
    src.add_argument(
        "--response-file",
        action="append",
        default=[],
        metavar="FILE",
        help="evaluate_gateway.py results, e.g. gateway_results.json",
    )

    flt = p.add_argument_group("filters")
    flt.add_argument(
        "--since",
        type=parse_when,
        metavar="WHEN",
        help="from this time on (UTC): 2026-11-22, 2026-11-22T10:00, today, or an age: 24h, 7d",
    )
    flt.add_argument(
        "--until",
        type=lambda s: parse_when(s, end_of_day=True),
        metavar="WHEN",
        help="before this time (a date alone includes that whole day)",
    )
    flt.add_argument(
        "--only-model",
        action="append",
        default=[],
        metavar="NAME",
        help="only requests answered by this model (repeatable); --model is the what-if",
    )
    flt.add_argument(
        "--endpoint",
        action="append",
        default=[],
        metavar="NAME",
        help="only this endpoint or route, e.g. chat (repeatable)",
    )
    flt.add_argument("--client", action="append", default=[], metavar="NAME", help="only this client (repeatable)")

    rep = p.add_argument_group("report")
    rep.add_argument("--by", choices=("day", "hour"), default="day", help="time buckets (default: day)")
    fmt = rep.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="the report as JSON (sorted keys, indented)")
    fmt.add_argument("--csv", action="store_true", help="CSV: one row per group, or one per request with --details")
    rep.add_argument(
        "--details", action="store_true", help="list every request (shown anyway when there are at most 20)"
    )
    rep.add_argument(
        "--top",
        type=_non_negative_int,
        default=5,
        metavar="N",
        help="how many of the most expensive requests to list (default: 5)",
    )
    rep.add_argument("--plot", metavar="FILE.png", help="draw cost over time by model (needs matplotlib)")
    rep.add_argument("--model", metavar="NAME", help="what-if: price every request as this model, e.g. gpt-4")
    rep.add_argument(
        "--budget",
        type=_non_negative_float,
        metavar="USD",
        help="exit 1 when the total cost of the period is above this (for a cron alert)",
    )
    rep.add_argument(
        "--pricing",
        metavar="FILE",
        help="pricing.yaml with custom prices (default: $GATEWAY_PRICING_FILE, ./pricing.yaml, or the kit's own)",
    )
    rep.add_argument(
        "--workers",
        type=_non_negative_int,
        metavar="N",
        help="processes reading large inputs (default: automatic; 1 for one process)",
    )
    rep.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _non_negative(kind: type) -> Any:
    """An argparse type: a `kind` (float or int) of 0 or more."""
    noun = "a whole number" if kind is int else "a number"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if value < 0 or value != value:  # value != value: NaN
            raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
        return value

    return parse


_non_negative_float = _non_negative(float)
_non_negative_int = _non_negative(int)


def _load_dotenv() -> None:
    """Defaults from ./.env (GATEWAY_LEDGER_DIR, GATEWAY_PRICING_FILE), if python-dotenv is installed; the
    environment and flags win."""
    try:
        from dotenv import find_dotenv, load_dotenv
    except ImportError:
        return
    load_dotenv(find_dotenv(usecwd=True), override=False)


def default_pricing_file(explicit: str | None) -> str | None:
    if explicit or tool_variable("GATEWAY_PRICING_FILE"):
        return explicit  # Pricer reads $GATEWAY_PRICING_FILE itself
    for candidate in (Path("pricing.yaml"), KIT_DIR / "pricing.yaml"):
        if candidate.is_file():
            return str(candidate)
    return None


def no_source_given(args: argparse.Namespace) -> bool:
    return not (args.paths or args.ledger or args.container or args.compose or args.log_file or args.response_file)


def default_sources(args: argparse.Namespace, notes: list[str]) -> None:
    """No source named: $GATEWAY_LEDGER_DIR, ./ledger, or ./gateway_results.json, saying which."""
    env_dir = (tool_variable("GATEWAY_LEDGER_DIR") or "").strip()
    if env_dir and env_dir.lower() not in ("off", "none") and Path(env_dir).is_dir():
        args.ledger.append(env_dir)
        notes.append(f"no source given; reading the ledger at {env_dir} ($GATEWAY_LEDGER_DIR)")
    elif Path("ledger").is_dir():
        args.ledger.append("ledger")
        notes.append("no source given; reading the ledger at ./ledger")
    elif SEED_RESULTS_FILE.is_file():
        args.response_file.append(str(SEED_RESULTS_FILE))
        notes.append(f"no source given; reading ./{SEED_RESULTS_FILE}")
    else:
        raise UsageError(
            "no source given — read the gateway's records with --ledger DIR, --compose or --container NAME, "
            "saved logs with --log-file FILE (or - for stdin), or evaluate_gateway.py results with --response-file FILE"
        )


def warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def note(message: str) -> None:
    print(f"{PROG}: note: {message}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    notes: list[str] = []
    if no_source_given(args):
        default_sources(args, notes)
    if args.plot:
        check_matplotlib()
    pricing_file = default_pricing_file(args.pricing)
    try:
        pricer = Pricer(pricing_file)
    except PricingFileError as e:
        raise UsageError(
            str(e) if " — " in str(e) else f"{e} — fix it, or choose another file with --pricing"
        ) from None
    if args.model and not pricer.knows(args.model):
        raise UsageError(
            f"--model {args.model}: no price known for this model — check the name (e.g. gpt-4o-mini, gpt-4, "
            "claude-3-5-haiku-latest) or add it to pricing.yaml"
        )
    opts = Options(
        by_hour=args.by == "hour",
        since=args.since,
        until=args.until,
        models=frozenset(args.only_model) or None,
        endpoints=frozenset(args.endpoint) or None,
        clients=frozenset(args.client) or None,
        what_if=args.model,
        pricing_file=str(pricer.overrides_path) if pricer.overrides_path else None,
        top=args.top,
        details=args.details,
    )
    got = collect_sources(args)
    try:
        for n in notes + got.notes:
            note(n)
        result = scan_all(got.inputs, opts, args.workers)
    finally:
        if got.tmpdir is not None:
            got.tmpdir.cleanup()

    for name in got.sources:
        st = result.stats.get(name)
        if st is None:
            continue
        for where_list, keep in ((st.malformed_at, 10), (st.foreign_at, 5)):  # workers each kept their first few
            where_list.sort(key=_file_line_order)
            del where_list[keep:]
        if st.malformed:
            where = ", ".join(st.malformed_at) + (" ..." if st.malformed > len(st.malformed_at) else "")
            warn(f"{name}: skipped {st.malformed:,} malformed line(s): {where}")
        if st.foreign:
            where = ", ".join(st.foreign_at) + (" ..." if st.foreign > len(st.foreign_at) else "")
            note(f"{name}: skipped {st.foreign:,} line(s) that are not usage records (other log output): {where}")

    report = build_report(result, opts, args.budget, pricer, got.sources)
    total_records = report["requests"]["total"]
    if total_records == 0:
        filtered = sum(st.filtered for st in result.stats.values())
        if filtered:
            warn(f"no usage data found in the period and filters given ({filtered:,} record(s) outside them)")
        else:
            warn(
                f"no usage data found in {', '.join(got.sources) or 'the sources given'} — send requests through "
                "the gateway (e.g. python3 evaluate_gateway.py), then read its records with --ledger ./ledger or "
                "--compose; the gateway writes one usage record per request"
            )
    if report["unknown_prices"]:
        names = ", ".join(u["model"] for u in report["unknown_prices"][:5])
        warn(
            f"no price for {names}: {report['cost']['unpriced_requests']:,} request(s) not in the total — "
            "add them to pricing.yaml (the report says how)"
        )

    if args.plot:
        write_plot(result, report, args.plot)
        note(f"plot written to {args.plot}")
    if args.json:
        text = json.dumps(report, sort_keys=True, indent=2) + "\n"
    elif args.csv:
        text = render_csv(report, args.details)
    else:
        text = render_table(report)
    sys.stdout.write(text)
    sys.stdout.flush()

    if args.budget is not None and report["budget"]["exceeded"]:
        print(
            f"{PROG}: budget exceeded: {usd(report['cost']['total_usd'])} > {usd(args.budget)} "
            f"for {_short(report['period']['first'])} → {_short(report['period']['last'])}",
            file=sys.stderr,
        )
        return ExitStatus.FAILED
    return ExitStatus.OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _load_dotenv()
    try:
        return run(args)
    except UsageError as e:
        if args.debug:
            raise
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return ExitStatus.USAGE
    except BrokenPipeError:  # `... | head`: the reader has what it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return ExitStatus.OK
    except KeyboardInterrupt:
        return ExitStatus.INTERRUPTED
    except Exception as e:  # noqa: BLE001 - a bad file or a bug: one line, the traceback only with --debug
        if args.debug:
            raise
        print(f"{PROG}: error: {type(e).__name__}: {e} — run again with --debug for the traceback", file=sys.stderr)
        return ExitStatus.USAGE


if __name__ == "__main__":
    raise SystemExit(main())
