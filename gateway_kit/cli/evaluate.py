"""Evaluate and load-test a running MLflow AI Gateway: does it answer correctly, how fast, at what cost.

Functional mode (the default) sends every test case once (or --repeat times) and prints a pass/fail
table that explains each failure. Load mode (--requests, --duration or --rate) measures throughput,
latency percentiles, time to first token, errors by class and the spread over gateway replicas, and
says whether the gateway or this generator was the bottleneck. Every run writes a results file
(--output; format: schemas/gateway_results.schema.json) that analyze_costs.py reads.

examples:
  python3 evaluate_gateway.py                                    # built-in cases, http://localhost:5000
  GATEWAY_URL=http://host:5000 python3 evaluate_gateway.py
  python3 evaluate_gateway.py --test-file test_cases.json --output results.json
  python3 evaluate_gateway.py --test-file examples/test_cases.yaml --repeat 3
  python3 evaluate_gateway.py --wait 60                          # right after a deploy
  python3 evaluate_gateway.py --concurrency 8 --requests 500     # closed loop: 8 requests in flight
  python3 evaluate_gateway.py --concurrency 8 --duration 60
  python3 evaluate_gateway.py --rate 50 --duration 30            # open loop: 50 arrivals/s, answered or not
  python3 evaluate_gateway.py --rate 20 --duration 60 --max-error-rate 1% --max-p95-ms 2000   # CI gate
  python3 evaluate_gateway.py --json | jq .summary

test cases (--test-file, JSON or YAML; see examples/test_cases.yaml):
  a list of cases, or {"cases": [...]}. A case has a name; endpoint: NAME (POST /gateway/NAME/invocations)
  or model: NAME (POST /v1/chat/completions, /v1/completions or /v1/embeddings), by default the
  endpoint chat, completions or embeddings; messages, prompt or input (or payload: a raw request body);
  optional params (temperature, max_tokens, stream, ...) and expect (status, contains, not_contains,
  regex, json, max_latency_ms, min_completion_tokens, max_completion_tokens). contains / not_contains
  ignore case. Load mode cycles through the cases in order.

environment (also read from .env in the working directory; flags win):
  GATEWAY_URL      the gateway's base URL (default http://localhost:5000)
  GATEWAY_API_KEY  sent as "Authorization: Bearer ..." when set; never printed or stored

exit codes:
  0    every request passed and every threshold held
  1    a request failed (an error, or an answer that missed an expectation) or a threshold was crossed
       (--max-error-rate, default 0; --max-p95-ms)
  2    usage error: a bad flag or an invalid test file; nothing was sent
  3    the gateway could not be reached (GET /health failed)
  130  interrupted (Ctrl-C); the requests that finished are saved
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import queue
import re
import signal
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import requests
import yaml
from dotenv import dotenv_values, find_dotenv

from gateway_kit.exit_status import ExitStatus
from gateway_kit.pricing import Pricer, Usage
from gateway_kit.settings import tool_variable
from gateway_kit.usage import TOKEN_FIELDS, StreamUsage, token_fields, usage_from_body

PROG = "evaluate_gateway.py"
TOOL_VERSION = "2.0.0"
SCHEMA_VERSION = 1
SCHEMA_PATH = "schemas/gateway_results.schema.json"
DEFAULT_URL = "http://localhost:5000"
DEFAULT_OUTPUT = "gateway_results.json"
NEXT_COMMAND = "scripts/check_gateway.sh"

KINDS = ("chat", "completions", "embeddings")
V1_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "embeddings": "/v1/embeddings"}
ERROR_CLASSES = (
    "quota",
    "rate_limited",
    "auth",
    "bad_request",
    "upstream_5xx",
    "gateway_5xx",
    "timeout",
    "connection_error",
    "stream_interrupted",
)
# Words a provider uses when the account, not the request rate, is the problem (OpenAI's
# insufficient_quota 429, Anthropic's "credit balance is too low" 400, billing 402/403s).
QUOTA_MARKERS = (
    "insufficient_quota",
    "exceeded your current quota",
    "billing",
    "credit balance",
    "insufficient credit",
    "insufficient_credit",
)
# MLflow's own 5xx details that are not a provider's message passed through.
GATEWAY_OWN_DETAILS = ("gateway upstream connection blocked", "invalid gateway upstream url")
HEALTH_ATTEMPT_TIMEOUT_S = 5.0
SLOW_START_MS = 10.0  # open-loop start lag under this is scheduler noise, never a bottleneck
CPU_SATURATED_CORES = 0.85  # one Python process tops out near one core (the GIL)
MAX_OPEN_LOOP_WORKERS = 512
PROGRESS_AFTER_S = 1.0
MAX_SHOWN_ERRORS = 20


class UsageError(Exception):
    """A bad flag or test file: exit 2 before anything is sent."""


class GatewayUnreachable(Exception):
    """The health check failed: exit 3."""


# ---------------------------------------------------------------- test cases


@dataclass(frozen=True)
class Expect:
    status: tuple[int, ...] | None = None  # None: any 2xx
    contains: tuple[str, ...] = ()
    not_contains: tuple[str, ...] = ()
    regex: str | None = None
    json: bool = False
    max_latency_ms: float | None = None
    min_completion_tokens: int | None = None
    max_completion_tokens: int | None = None

    @property
    def checks_text(self) -> bool:
        return bool(self.contains or self.not_contains or self.regex or self.json)


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # chat | completions | embeddings
    target: str  # endpoint name, or the model name sent to /v1
    via_model: bool  # True: OpenAI-compatible /v1 route with "model": target
    body: dict[str, Any]  # the request body, without "model"
    expect: Expect = field(default_factory=Expect)

    @property
    def path(self) -> str:
        return V1_PATHS[self.kind] if self.via_model else f"/gateway/{self.target}/invocations"

    @property
    def stream(self) -> bool:
        return self.body.get("stream") is True

    def request_body(self) -> dict[str, Any]:
        return {"model": self.target, **self.body} if self.via_model else self.body

    def content(self) -> Any:
        """What the user wrote (stored only with --store-content)."""
        return next((self.body[k] for k in ("messages", "prompt", "input") if k in self.body), None)


BUILTIN_CASES: list[dict[str, Any]] = [
    {
        "name": "simple-question",
        "endpoint": "chat",
        "messages": [{"role": "user", "content": "Connectivity check: reply with the single word pong."}],
        "params": {"temperature": 0, "max_tokens": 20},
        "expect": {"status": 200, "contains": "pong", "min_completion_tokens": 1},
    },
    {
        "name": "multi-turn-context",
        "endpoint": "chat",
        "messages": [
            {"role": "user", "content": "My favourite colour is teal. Please remember it."},
            {"role": "assistant", "content": "Noted: your favourite colour is teal."},
            {"role": "user", "content": "What is my favourite colour? Reply with the colour only."},
        ],
        "params": {"temperature": 0, "max_tokens": 64},
        "expect": {"status": 200, "contains": "teal"},
    },
    {
        "name": "embeddings",
        "endpoint": "embeddings",
        "input": "The MLflow AI Gateway routes requests to LLM providers.",
        "expect": {"status": 200},
    },
]

CASE_FIELDS = (
    "name",
    "description",
    "endpoint",
    "model",
    "kind",
    "messages",
    "prompt",
    "input",
    "payload",
    "params",
    "expect",
)
# Without endpoint: or model:, a case goes to the kit's endpoint of its kind (config.yaml's names).
DEFAULT_ENDPOINTS = {"chat": "chat", "completions": "completions", "embeddings": "embeddings"}
CONTENT_FIELDS = {"messages": "chat", "prompt": "completions", "input": "embeddings"}
EXPECT_FIELDS = (
    "status",
    "contains",
    "not_contains",
    "regex",
    "json",
    "max_latency_ms",
    "min_completion_tokens",
    "max_completion_tokens",
)
TEXT_EXPECTATIONS = ("contains", "not_contains", "regex", "json", "min_completion_tokens", "max_completion_tokens")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9._-]+$")
ROLES = ("system", "user", "assistant", "tool", "developer")


def _type_name(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _shown(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


FieldPath = tuple[Any, ...]


def _path_text(path: FieldPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


class CaseFileErrors:
    """Collects every problem in a test file, each with its file, line, case and field."""

    def __init__(self, source: str, lines: dict[FieldPath, int]) -> None:
        self.source, self.lines, self.messages = source, lines, []

    def add(self, path: FieldPath, problem: str, case_label: str | None = None, depth: int = 0) -> None:
        """path: from the top of the file; depth: how much of it leads to the case (not shown as field)."""
        line = next((self.lines[path[:n]] for n in range(len(path), -1, -1) if path[:n] in self.lines), None)
        where = f"{self.source}:{line}" if line else self.source
        field_text = _path_text(path[depth:]) if case_label else _path_text(path)
        who = f"case {case_label}: " if case_label else ""
        self.messages.append(f"{where}: {who}{field_text + ': ' if field_text else ''}{problem}")


def yaml_lines(text: str) -> dict[FieldPath, int]:
    """Line (1-based) of every mapping key and list item, by path, from YAML's node marks.

    JSON is YAML too, so this also gives lines for JSON files; on any parse trouble it returns {}.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.YAMLError:
        return {}
    finally:
        loader.dispose()
    lines: dict[FieldPath, int] = {}

    def walk(n: yaml.Node, path: FieldPath) -> None:
        if isinstance(n, yaml.MappingNode):
            for key, value in n.value:
                child = path + (key.value if isinstance(key, yaml.ScalarNode) else str(key.value),)
                lines[child] = key.start_mark.line + 1
                walk(value, child)
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                lines[path + (i,)] = item.start_mark.line + 1
                walk(item, path + (i,))

    if node is not None:
        lines[()] = node.start_mark.line + 1
        walk(node, ())
    return lines


def parse_case_file(path: Path) -> tuple[Any, dict[FieldPath, int]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"test file {path} does not exist — check the path; examples/test_cases.yaml shows the format")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read test file {path}: {e}")
    is_json = path.suffix.lower() == ".json" or (
        path.suffix.lower() not in (".yaml", ".yml") and text.lstrip()[:1] in ("{", "[")
    )
    if is_json:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UsageError(
                f"{path}:{e.lineno}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg} — nothing was sent"
            )
        return data, yaml_lines(text)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = (
            f"{path}:{mark.line + 1}: invalid YAML at line {mark.line + 1}, column {mark.column + 1}"
            if mark
            else f"{path}: invalid YAML"
        )
        raise UsageError(f"{where}: {e.problem or e.context} — nothing was sent")
    except yaml.YAMLError as e:
        raise UsageError(f"{path}: invalid YAML: {e} — nothing was sent")
    finally:
        loader.dispose()
    return data, yaml_lines(text)


def validate_cases(data: Any, lines: dict[FieldPath, int], source: str) -> list[Case]:
    """Turn a parsed test file into cases, or raise UsageError listing every problem."""
    errors = CaseFileErrors(source, lines)
    root: FieldPath = ()
    if isinstance(data, dict):
        unknown = [k for k in data if k != "cases"]
        for key in unknown:
            errors.add((key,), f"unknown top-level field (expected only 'cases'){_suggest(key, ['cases'])}")
        items, root = data.get("cases"), ("cases",)
        if items is None:
            errors.add(root, "missing: the file needs a 'cases' list")
            items = []
    else:
        items = data
    if not isinstance(items, list) or not items:
        if not errors.messages:
            errors.add(root, f"expected a non-empty list of cases, got {_type_name(items)}")
        raise UsageError(_error_report(errors))
    cases: list[Case] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(items):
        path = root + (index,)
        label = f"[{index}]"
        if not isinstance(raw, dict):
            errors.add(path, f"expected a mapping (a case), got {_type_name(raw)}", f"cases{label}")
            continue
        name = raw.get("name", f"case-{index + 1}")
        label = f"{_shown(name)} (cases{label})"
        if not isinstance(name, str) or not name.strip():
            errors.add(path + ("name",), f"expected a non-empty string, got {_type_name(name)}", label)
            name = f"case-{index + 1}"
        elif name in seen:
            errors.add(
                path + ("name",), f"duplicate name (also cases[{seen[name]}]); names must be unique", label, len(path)
            )
        seen.setdefault(name, index)
        case = _validate_case(raw, name, path, label, errors)
        if case is not None:
            cases.append(case)
    if errors.messages:
        raise UsageError(_error_report(errors))
    return cases


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _error_report(errors: CaseFileErrors) -> str:
    shown = errors.messages[:MAX_SHOWN_ERRORS]
    more = len(errors.messages) - len(shown)
    count = len(errors.messages)
    head = f"{errors.source}: {count} problem{'s' if count != 1 else ''} in the test cases; nothing was sent"
    lines = [head, *("  " + m for m in shown)]
    if more:
        lines.append(f"  ... and {more} more")
    lines.append("  the format is described in --help and examples/test_cases.yaml")
    return "\n".join(lines)


def _validate_case(raw: dict[str, Any], name: str, path: FieldPath, label: str, errors: CaseFileErrors) -> Case | None:
    ok = True

    def bad(field_path: FieldPath, problem: str) -> None:
        nonlocal ok
        ok = False
        errors.add(path + field_path, problem, label, len(path))

    for key in raw:
        if key not in CASE_FIELDS:
            bad((key,), f"unknown field{_suggest(key, CASE_FIELDS)} (fields: {', '.join(CASE_FIELDS)})")

    # where the request goes
    endpoint, model = raw.get("endpoint"), raw.get("model")
    if endpoint is not None and model is not None:
        bad(("model",), "give endpoint (POST /gateway/NAME/invocations) or model (POST /v1/...), not both")
    target_key = "model" if endpoint is None and model is not None else "endpoint"
    target = endpoint if endpoint is not None else model
    if target is not None and (not isinstance(target, str) or not NAME_PATTERN.match(target)):
        bad((target_key,), f"expected an endpoint name (letters, digits, . _ -), got {_shown(target)}")

    # what is sent
    present = [k for k in ("messages", "prompt", "input", "payload") if k in raw]
    kind = raw.get("kind")
    if kind is not None and kind not in KINDS:
        bad(("kind",), f"expected one of {', '.join(KINDS)}, got {_shown(kind)}")
        kind = None
    body: dict[str, Any] = {}
    if len(present) != 1:
        bad(
            (present[1],) if len(present) > 1 else (),
            "needs exactly one of messages (chat), prompt (completions), input (embeddings) or payload"
            + (f"; found {', '.join(present)}" if present else ""),
        )
    else:
        key = present[0]
        value = raw[key]
        if key == "payload":
            if not isinstance(value, dict) or not value:
                bad((key,), f"expected a mapping (the raw request body), got {_type_name(value)}")
            else:
                body = dict(value)
                inferred = next((CONTENT_FIELDS[k] for k in CONTENT_FIELDS if k in value), None)
                if kind is None and inferred is None:
                    bad((key,), "cannot tell the request kind: add kind: chat|completions|embeddings")
                kind = kind or inferred
                for reserved in ("model",):
                    if reserved in value:
                        bad((key, reserved), "leave model out; use the case's model: field")
        else:
            inferred = CONTENT_FIELDS[key]
            if kind is not None and kind != inferred:
                bad(("kind",), f"'{kind}' does not match {key} (which means {inferred})")
            kind = inferred
            problem = _check_content(key, value, path + (key,), errors, label)
            if problem:
                bad((key,), problem)
            body[key] = value

    # parameters
    params = raw.get("params", {})
    if not isinstance(params, dict):
        bad(("params",), f"expected a mapping (temperature, max_tokens, stream, ...), got {_type_name(params)}")
        params = {}
    for key, value in params.items():
        problem = _check_param(key, value)
        if problem:
            bad(("params", key), problem)
    if kind == "embeddings" and params.get("stream") is True:
        bad(("params", "stream"), "embeddings cannot stream")
    body.update(params)

    # expectations
    expect = _validate_expect(raw.get("expect", {}), kind, bad)
    if target is None and kind is not None:
        target = DEFAULT_ENDPOINTS[kind]  # as the earlier kit: everything went to /gateway/chat/...
    if not ok or kind is None or not isinstance(target, str):
        return None
    return Case(name=name, kind=kind, target=target, via_model=target_key == "model", body=body, expect=expect)


def _check_content(key: str, value: Any, path: FieldPath, errors: CaseFileErrors, label: str) -> str | None:
    if key == "prompt":
        if isinstance(value, str) and value:
            return None
        return f"expected a non-empty string, got {_type_name(value)}"
    if key == "input":
        if isinstance(value, str) and value:
            return None
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return None
        return f"expected a string or a list of strings, got {_type_name(value)}"
    if not isinstance(value, list) or not value:
        return f"expected a non-empty list of {{role, content}} messages, got {_type_name(value)}"
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            errors.add(
                path + (i,),
                f"expected a mapping with role and content, got {_type_name(message)}",
                label,
                len(path) - 1,
            )
            continue
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            errors.add(
                path + (i, "role"), f"expected one of {', '.join(ROLES)}, got {_shown(role)}", label, len(path) - 1
            )
        if not isinstance(content, (str, list)):
            errors.add(path + (i, "content"), f"expected a string, got {_type_name(content)}", label, len(path) - 1)
    return None


def _check_param(key: str, value: Any) -> str | None:
    if key in ("messages", "prompt", "input", "model"):
        return f"'{key}' belongs on the case, not in params"
    if key in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        return None if _is_number(value) else f"expected a number, got {_type_name(value)} {_shown(value)}"
    if key in ("max_tokens", "n", "max_completion_tokens"):
        if not _is_int(value):
            return f"expected an integer, got {_type_name(value)} {_shown(value)}"
        return None if value > 0 else f"expected a positive integer, got {value}"
    if key == "stream":
        if isinstance(value, bool):
            return None
        return f"expected true or false, got {_type_name(value)} {_shown(value)}"
    if key == "stop":
        if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            return None
        return f"expected a string or a list of strings, got {_type_name(value)}"
    return None  # anything else goes to the gateway as it is


def _validate_expect(raw: Any, kind: str | None, bad: Callable[[FieldPath, str], None]) -> Expect:
    if raw is None or raw == {}:
        return Expect()
    if not isinstance(raw, dict):
        bad(("expect",), f"expected a mapping of expectations, got {_type_name(raw)}")
        return Expect()
    values: dict[str, Any] = {}
    for key, value in raw.items():
        where = ("expect", key)
        if key not in EXPECT_FIELDS:
            bad(where, f"unknown expectation{_suggest(key, EXPECT_FIELDS)} (known: {', '.join(EXPECT_FIELDS)})")
            continue
        if kind == "embeddings" and key in TEXT_EXPECTATIONS:
            bad(where, "an embeddings answer is a vector, not text; only status and max_latency_ms apply")
            continue
        if key == "status":
            statuses = value if isinstance(value, list) else [value]
            if not statuses or not all(_is_int(s) and 100 <= s <= 599 for s in statuses):
                bad(where, f"expected an HTTP status (100-599) or a list of them, got {_shown(value)}")
                continue
            values[key] = tuple(statuses)
        elif key in ("contains", "not_contains"):
            items = value if isinstance(value, list) else [value]
            if not items or not all(isinstance(s, str) and s for s in items):
                bad(where, f"expected a non-empty string or a list of them, got {_type_name(value)} {_shown(value)}")
                continue
            values[key] = tuple(items)
        elif key == "regex":
            if not isinstance(value, str):
                bad(where, f"expected a regular expression string, got {_type_name(value)}")
                continue
            try:
                re.compile(value)
            except re.error as e:
                bad(where, f"invalid regular expression: {e}")
                continue
            values[key] = value
        elif key == "json":
            if not isinstance(value, bool):
                bad(where, f"expected true or false, got {_type_name(value)} {_shown(value)}")
                continue
            values[key] = value
        elif key == "max_latency_ms":
            if not _is_number(value) or value <= 0:
                bad(where, f"expected a positive number of milliseconds, got {_shown(value)}")
                continue
            values[key] = float(value)
        else:  # min/max_completion_tokens
            if not _is_int(value) or value < 0:
                bad(where, f"expected a non-negative integer, got {_type_name(value)} {_shown(value)}")
                continue
            values[key] = value
    low, high = values.get("min_completion_tokens"), values.get("max_completion_tokens")
    if low is not None and high is not None and low > high:
        bad(("expect", "max_completion_tokens"), f"is below min_completion_tokens ({high} < {low})")
    return Expect(**values)


def load_cases(test_file: str | None) -> list[Case]:
    if test_file is None:
        return validate_cases(BUILTIN_CASES, {}, "built-in cases")
    path = Path(test_file)
    data, lines = parse_case_file(path)
    return validate_cases(data, lines, str(path))


# ---------------------------------------------------------------- one request


@dataclass(frozen=True)
class Settings:
    url: str
    timeout: float
    headers: dict[str, str]
    run_id: str
    store_content: bool
    endpoints: dict[str, dict[str, str]]  # name -> {"model", "provider"} from GET /api/2.0/endpoints/


@dataclass(frozen=True)
class ErrorInfo:
    cls: str
    side: str  # provider | gateway | client | network | unknown
    message: str


@dataclass(frozen=True)
class Record:
    """One request as it happened; the results file's per-request entry.

    Field names follow the gateway's usage records (gateway_kit/usage.py: route, flat token counts,
    cost_usd, price_source, partial) so analyze_costs.py reads both the same way. The token counts are read
    from the answer by the gateway's own functions (usage_from_body, StreamUsage), so they are the record's.
    """

    seq: int
    case: str
    kind: str
    endpoint: str
    route: str  # the path: /gateway/<endpoint>/invocations or /v1/...
    stream: bool
    started_at: str
    latency_ms: float
    status: int | None
    outcome: str  # pass | fail | error
    error_class: str | None = None
    error_side: str | None = None
    error: str | None = None
    retry_after: str | None = None
    failures: tuple[str, ...] = ()
    model: str | None = None
    provider: str | None = None
    queue_ms: float | None = None
    ttft_ms: float | None = None
    chunks: int | None = None
    inter_chunk_ms: dict[str, float] | None = None
    partial: bool = False  # a stream that broke after it began
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    cost_usd: float | None = None
    price_source: str | None = None
    replica: str | None = None
    upstream_addr: str | None = None
    request_id: str | None = None
    embedding_dims: int | None = None
    prompt: Any = None
    answer: str | None = None

    @property
    def has_usage(self) -> bool:
        return any(getattr(self, name) is not None for name in TOKEN_FIELDS)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["failures"] = list(self.failures)
        if data["prompt"] is None:
            del data["prompt"]
        if data["answer"] is None:
            del data["answer"]
        return data


class StreamDeadline(Exception):
    """A stream went on longer than --timeout."""


@dataclass
class Reply:
    """What came back, before it is judged."""

    status: int | None = None
    headers: Any = None
    body: bytes = b""
    text: str | None = None  # the answer text (chat / completions)
    usage: Usage | None = None  # None: the answer carried no usage
    model: str | None = None
    provider: str | None = None
    ttft_ms: float | None = None
    gaps_ms: list[float] = field(default_factory=list)
    chunks: int | None = None
    dims: int | None = None
    parse_problem: str | None = None


def send_case(
    session: requests.Session, case: Case, seq: int, settings: Settings, scheduled: float | None = None
) -> tuple[Record, list[float]]:
    """Send one request and judge it; returns the record and the stream's inter-chunk gaps."""
    request_id = f"eval-{settings.run_id}-{seq}"
    headers = {**settings.headers, "X-Request-ID": request_id}
    if case.stream:
        headers["Accept"] = "text/event-stream"
    started_at = datetime.now(UTC).isoformat(timespec="milliseconds")
    t0 = time.perf_counter()
    queue_ms = round((t0 - scheduled) * 1000, 3) if scheduled is not None else None
    reply, error = Reply(), None
    response = None
    try:
        response = session.post(
            settings.url + case.path,
            json=case.request_body(),
            headers=headers,
            timeout=(min(10.0, settings.timeout), settings.timeout),
            stream=case.stream,
            allow_redirects=False,
        )
        reply.status, reply.headers = response.status_code, response.headers
        content_type = response.headers.get("Content-Type", "")
        if case.stream and response.status_code == 200 and "text/event-stream" in content_type:
            read_stream(response, case.kind, t0, t0 + settings.timeout, reply)
        else:
            reply.body = response.content
    except (requests.RequestException, StreamDeadline) as e:
        error = classify_exception(e, reply)
    finally:
        if response is not None:
            response.close()
    latency_ms = (time.perf_counter() - t0) * 1000
    if error is None and reply.status is not None:
        if reply.chunks is None:
            parse_body(case.kind, reply)
        error = classify_response(reply.status, reply.headers, reply.body)
        if error is None and case.stream and reply.chunks == 0:
            error = ErrorInfo("stream_interrupted", "unknown", "the stream ended without a single event")
    record = judge(case, seq, settings, reply, error, started_at, latency_ms, queue_ms, request_id)
    return record, reply.gaps_ms


def read_stream(response: requests.Response, kind: str, t0: float, deadline: float, reply: Reply) -> None:
    """Read server-sent events as they arrive, timestamping each one (for TTFT and inter-chunk gaps)."""
    buffer, pieces, last, events = b"", [], None, 0
    usage = StreamUsage()  # the gateway's own reader of a stream's tokens
    reply.chunks = 0  # from here on a broken connection is a cut stream, not a failed request
    try:
        # chunk_size=None hands over each network chunk as soon as it arrives (a size would wait to fill it).
        for chunk in response.iter_content(chunk_size=None):
            now = time.perf_counter()
            if now > deadline:
                raise StreamDeadline(f"the stream was still going after {deadline - t0:.0f} s")
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                line = line.rstrip(b"\r")
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    continue
                try:
                    event = json.loads(data)
                except ValueError:
                    reply.parse_problem = "a stream event was not JSON"
                    continue
                if not isinstance(event, dict):
                    continue
                events += 1
                usage.feed_event(event)
                reply.model = event.get("model") or reply.model
                reply.provider = event.get("provider") or reply.provider
                piece = stream_piece(kind, event)
                if piece:
                    if last is None:
                        reply.ttft_ms = round((now - t0) * 1000, 3)
                    else:
                        reply.gaps_ms.append(round((now - last) * 1000, 3))
                    last = now
                    pieces.append(piece)
                reply.chunks = events
    finally:
        reply.usage = usage.usage  # what arrived, also when the stream broke
    reply.chunks = events
    reply.text = "".join(pieces)


def stream_piece(kind: str, event: dict[str, Any]) -> str:
    choices = event.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    choice = choices[0]
    if kind == "chat":
        delta = choice.get("delta") or {}
        content = delta.get("content") if isinstance(delta, dict) else None
    else:
        content = choice.get("text")
    return content if isinstance(content, str) else ""


def parse_body(kind: str, reply: Reply) -> None:
    """Answer text, usage, model and provider from a non-streaming 2xx body."""
    if reply.status is None or not 200 <= reply.status < 300:
        return
    try:
        data = json.loads(reply.body)
    except ValueError:
        reply.parse_problem = "the response body is not JSON"
        return
    if not isinstance(data, dict):
        reply.parse_problem = "the response body is not a JSON object"
        return
    reply.usage = usage_from_body(data)
    reply.model = data.get("model") if isinstance(data.get("model"), str) else None
    reply.provider = data.get("provider") if isinstance(data.get("provider"), str) else None
    try:
        if kind == "embeddings":
            reply.dims = len(data["data"][0]["embedding"])
        elif kind == "chat":
            reply.text = data["choices"][0]["message"]["content"] or ""
        else:
            reply.text = data["choices"][0]["text"] or ""
    except (KeyError, IndexError, TypeError):
        reply.parse_problem = f"the response has no {kind} answer where the gateway puts it"


# ---------------------------------------------------------------- error classes


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def error_message(body: bytes) -> str:
    """The most specific message in an error body: MLflow's detail, an {error: {message}}, or the text."""
    data = _json_or_none(body)
    if isinstance(data, dict):
        detail, err = data.get("detail"), data.get("error")
        if isinstance(detail, str) and detail:
            return detail[:300]
        if isinstance(detail, dict) and isinstance(detail.get("message"), str):
            return detail["message"][:300]
        if isinstance(detail, list) and detail:
            return json.dumps(detail)[:300]
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"][:300]
        if isinstance(err, str):
            return err[:300]
    text = re.sub(r"<[^>]+>", " ", body.decode("utf-8", "replace"))
    return " ".join(text.split())[:300]


def provider_error_passed_through(body: bytes) -> bool:
    """True when a 5xx body carries the provider's error rather than the gateway's own failure.

    MLflow 3.17.2 answers an upstream error status with that status and {"detail": "<the provider's
    message>"}; gateway_kit.app answers an unreachable, slow or garbled provider with
    {"error": {"type": "upstream_..."}}. The gateway's own failures are a bare text/plain
    "Internal Server Error" (stock MLflow: also a provider that dropped the connection or sent
    garbage), nginx's {"error": {"type": "gateway_unavailable"}}, or an MLflow error_code detail.
    """
    data = _json_or_none(body)
    if not isinstance(data, dict):
        return False
    err, detail = data.get("error"), data.get("detail")
    if isinstance(err, dict) and str(err.get("type", "")).startswith("upstream_"):
        return True
    return isinstance(detail, str) and bool(detail) and not detail.lower().startswith(GATEWAY_OWN_DETAILS)


def classify_response(status: int, headers: Any, body: bytes) -> ErrorInfo | None:
    if 200 <= status < 300:
        return None
    message = error_message(body)
    lowered = body.decode("utf-8", "replace").lower()
    mlflow_detail = isinstance(_json_or_none(body), dict) and "detail" in _json_or_none(body)
    if 300 <= status < 400:
        where = (headers or {}).get("Location", "?")
        return ErrorInfo("bad_request", "client", f"HTTP {status} redirect to {where}: check --url (http or https?)")
    if 400 <= status < 500:
        if any(marker in lowered for marker in QUOTA_MARKERS):
            return ErrorInfo("quota", "provider", message)
        if status == 429:
            # MLflow's own per-endpoint limit (slowapi) says "Rate limit exceeded: N per M".
            side = "gateway" if "rate limit exceeded:" in lowered and not mlflow_detail else "provider"
            return ErrorInfo("rate_limited", side, message)
        if status in (401, 403):
            # MLflow passes the provider's 401/403 on as {"detail": ...}; anything else is the edge.
            return ErrorInfo("auth", "provider" if mlflow_detail else "gateway", message)
        return ErrorInfo("bad_request", "client", message)
    if status >= 500 and provider_error_passed_through(body):
        return ErrorInfo("upstream_5xx", "provider", message)
    return ErrorInfo("gateway_5xx", "gateway", message or f"HTTP {status}")


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain, seen, todo = [], set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen or not isinstance(e, BaseException):
            continue
        seen.add(id(e))
        chain.append(e)
        todo.extend(
            [
                e.__cause__,
                e.__context__,
                getattr(e, "reason", None),
                *(a for a in e.args if isinstance(a, BaseException)),
            ]
        )
    return chain


def describe_connection_problem(exc: BaseException) -> str:
    """Say in words what went wrong on the way to the gateway: refused, DNS, timeout, reset."""
    chain = _exception_chain(exc)
    names = {type(e).__name__ for e in chain}
    if any(isinstance(e, socket.gaierror) for e in chain) or "NameResolutionError" in names:
        host = next(
            (getattr(e, "conn", None).host for e in chain if getattr(getattr(e, "conn", None), "host", None)), None
        )
        return f"DNS lookup failed{f' for {host}' if host else ''} (no such host?)"
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return "connection refused (nothing listens on that host and port)"
    if isinstance(exc, requests.ConnectTimeout) or "ConnectTimeoutError" in names:
        return "timed out connecting (host down or firewalled?)"
    if isinstance(exc, (requests.ReadTimeout, StreamDeadline)) or "ReadTimeoutError" in names:
        return "timed out waiting for the answer"
    if any(isinstance(e, ConnectionResetError) for e in chain):
        return "connection reset by the server"
    if names & {"RemoteDisconnected", "ProtocolError", "ChunkedEncodingError"}:
        return "the server closed the connection before the answer was complete"
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS handshake failed (https against an http port?)"
    return f"{type(exc).__name__}: {exc}"[:200]


def classify_exception(exc: BaseException, reply: Reply) -> ErrorInfo:
    names = {type(e).__name__ for e in _exception_chain(exc)}
    message = describe_connection_problem(exc)
    if (
        isinstance(exc, (requests.Timeout, StreamDeadline))
        or "ReadTimeoutError" in names
        or "ConnectTimeoutError" in names
    ):
        return ErrorInfo("timeout", "unknown", message)
    if reply.status == 200 and reply.chunks is not None:
        return ErrorInfo(
            "stream_interrupted", "unknown", f"the stream broke after HTTP 200 and {reply.chunks} event(s): {message}"
        )
    if reply.status == 200 and (reply.headers or {}).get("Content-Type", "").startswith("text/event-stream"):
        return ErrorInfo("stream_interrupted", "unknown", f"the stream broke after HTTP 200: {message}")
    return ErrorInfo("connection_error", "network" if reply.status is None else "gateway", message)


# ---------------------------------------------------------------- expectations


def strip_code_fence(text: str) -> str:
    match = re.fullmatch(r"\s*```[A-Za-z]*\s*\n(.*?)\n?```\s*", text, re.DOTALL)
    return match.group(1) if match else text


def check_expectations(case: Case, reply: Reply, error: ErrorInfo | None, latency_ms: float) -> tuple[list[str], bool]:
    """Failed expectations in words, and whether the status was one the case expected."""
    e = case.expect
    failures: list[str] = []
    status = reply.status
    if e.status is not None:
        status_ok = status in e.status
        if not status_ok:
            wanted = " or ".join(map(str, e.status))
            got = status if status is not None else "no response"
            failures.append(
                f"status: expected {wanted}, got {got}" + (f" ({error.cls}: {error.message})" if error else "")
            )
    else:
        status_ok = error is None
        if error is not None:
            got = status if status is not None else "no response"
            failures.append(f"status: expected 2xx, got {got} ({error.cls}: {error.message})")
    if not status_ok:
        return failures, False
    if error is not None and error.cls in ("timeout", "connection_error", "stream_interrupted"):
        failures.append(f"{error.cls}: {error.message}")
        return failures, True
    is_success = status is not None and 200 <= status < 300
    text = reply.text if is_success else error_message(reply.body)
    if e.checks_text and text is None:
        failures.append(f"no answer text to check ({reply.parse_problem or 'empty response'})")
    elif text is not None:
        lowered = text.lower()
        failures += [f"contains {s!r}: not in the answer" for s in e.contains if s.lower() not in lowered]
        failures += [f"not_contains {s!r}: found in the answer" for s in e.not_contains if s.lower() in lowered]
        if e.regex is not None and re.search(e.regex, text) is None:
            failures.append(f"regex /{e.regex}/: no match in the answer")
        if e.json:
            try:
                json.loads(strip_code_fence(text))
            except ValueError as err:
                failures.append(
                    f"json: the answer is not valid JSON ({getattr(err, 'msg', err)}"
                    f"{f' at character {err.pos}' if hasattr(err, 'pos') else ''})"
                )
    if e.max_latency_ms is not None and latency_ms > e.max_latency_ms:
        failures.append(f"max_latency_ms {e.max_latency_ms:g}: took {latency_ms:.0f} ms")
    if e.min_completion_tokens is not None or e.max_completion_tokens is not None:
        completion = reply.usage.completion_tokens if reply.usage else None
        if completion is None:
            failures.append("completion tokens: the response reported no usage")
        else:
            if e.min_completion_tokens is not None and completion < e.min_completion_tokens:
                failures.append(f"min_completion_tokens {e.min_completion_tokens}: got {completion}")
            if e.max_completion_tokens is not None and completion > e.max_completion_tokens:
                failures.append(f"max_completion_tokens {e.max_completion_tokens}: got {completion}")
    if is_success and reply.parse_problem and not failures and not case.expect.checks_text:
        failures.append(reply.parse_problem)
    return failures, True


def judge(
    case: Case,
    seq: int,
    settings: Settings,
    reply: Reply,
    error: ErrorInfo | None,
    started_at: str,
    latency_ms: float,
    queue_ms: float | None,
    request_id: str,
) -> Record:
    failures, status_expected = check_expectations(case, reply, error, latency_ms)
    if error is not None and not (status_expected and case.expect.status is not None):
        outcome = "error"
    else:
        outcome = "fail" if failures else "pass"
    headers = reply.headers or {}
    configured = settings.endpoints.get(case.target, {})
    gaps = reply.gaps_ms
    return Record(
        seq=seq,
        case=case.name,
        kind=case.kind,
        endpoint=case.target,
        route=case.path,
        stream=case.stream,
        started_at=started_at,
        latency_ms=round(latency_ms, 3),
        status=reply.status,
        outcome=outcome,
        error_class=error.cls if error else None,
        error_side=error.side if error else None,
        error=error.message if error else None,
        retry_after=headers.get("Retry-After"),
        failures=tuple(failures),
        model=reply.model or configured.get("model"),
        provider=reply.provider or configured.get("provider"),
        queue_ms=queue_ms,
        ttft_ms=reply.ttft_ms,
        chunks=reply.chunks if case.stream else None,
        inter_chunk_ms=(
            {
                "count": len(gaps),
                "mean": round(sum(gaps) / len(gaps), 3),
                "p50": round(percentile(sorted(gaps), 50), 3),
                "max": max(gaps),
            }
            if gaps
            else None
        ),
        partial=bool(error and error.cls == "stream_interrupted" and reply.chunks),
        **token_fields(reply.usage),
        replica=headers.get("X-Gateway-Replica"),
        upstream_addr=headers.get("X-Upstream-Addr"),
        request_id=headers.get("X-Request-ID") or request_id,
        embedding_dims=reply.dims,
        prompt=case.content() if settings.store_content else None,
        answer=reply.text if settings.store_content else None,
    )


# ---------------------------------------------------------------- cost


class CostBook:
    """Prices usage with the kit's shared pricing (gateway_kit.pricing), made when the run ends.

    If the pricer cannot start (a broken pricing.yaml), the run is not lost: records keep tokens, model
    and provider, and cost stays null, for analyze_costs.py to price later.
    """

    def __init__(self) -> None:
        self.problem: str | None = None
        self._cache: dict[tuple[Any, ...], tuple[float | None, str]] = {}
        try:
            self._pricer: Pricer | None = Pricer()
        except Exception as e:  # noqa: BLE001 - a broken pricing file or price data: degrade to tokens only
            self._pricer = None
            self.problem = f"gateway_kit.pricing unavailable ({type(e).__name__}: {e})"[:200]

    def price(self, record: Record) -> Record:
        if not record.has_usage:
            return record
        if self._pricer is None:
            return replace(record, cost_usd=None, price_source=self.problem)
        key = (
            record.model,
            record.provider,
            record.prompt_tokens,
            record.completion_tokens,
            record.cached_tokens,
            record.reasoning_tokens,
        )
        if key not in self._cache:
            try:
                cost = self._pricer.cost(
                    record.model,
                    record.provider,
                    Usage(
                        prompt_tokens=record.prompt_tokens or 0,
                        completion_tokens=record.completion_tokens or 0,
                        cached_tokens=record.cached_tokens or 0,
                        reasoning_tokens=record.reasoning_tokens or 0,
                    ),
                )
                usd = getattr(cost, "usd", None)
                self._cache[key] = (float(usd) if _is_number(usd) else None, str(getattr(cost, "source", "")))
            except Exception as e:  # noqa: BLE001 - one bad price must not lose the run's results
                self._cache[key] = (None, f"pricing failed ({type(e).__name__}: {e})"[:200])
        usd, source = self._cache[key]
        return replace(record, cost_usd=usd, price_source=source)


# ---------------------------------------------------------------- running


class Progress:
    """A one-line progress bar on stderr, only on a terminal and only once a run lasts a while."""

    def __init__(self, enabled: bool, total: int | None, duration: float | None) -> None:
        self.enabled, self.total, self.duration = enabled, total, duration
        self.start = time.monotonic()
        self.last_draw = 0.0
        self.drawn = False

    def update(self, done: int, errors: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        elapsed = now - self.start
        if elapsed < PROGRESS_AFTER_S or now - self.last_draw < 0.1:
            return
        self.last_draw = now
        if self.total:
            fraction = min(done / self.total, 1.0)
            tail = f"{done}/{self.total}"
        elif self.duration:
            fraction = min(elapsed / self.duration, 1.0)
            tail = f"{elapsed:.0f}s/{self.duration:.0f}s, {done} done"
        else:
            fraction, tail = 0.0, f"{done} done"
        bar = "#" * int(fraction * 30)
        rate = done / elapsed if elapsed else 0.0
        sys.stderr.write(f"\r[{bar:<30}] {fraction * 100:3.0f}% {tail}  {rate:.1f} req/s  errors {errors}  ")
        sys.stderr.flush()
        self.drawn = True

    def finish(self) -> None:
        if self.drawn:
            sys.stderr.write("\r" + " " * 100 + "\r")
            sys.stderr.flush()


class Runner:
    """Sends the requests (one thread per in-flight request) and keeps every finished record."""

    def __init__(self, cases: list[Case], settings: Settings, progress: Progress) -> None:
        self.cases, self.settings, self.progress = cases, settings, progress
        self.records: list[Record] = []
        self.gaps_ms: list[float] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        # Set by Ctrl-C / SIGTERM (see interrupt()): the run ends now; requests in flight are left behind.
        self.interrupted = threading.Event()
        self.errors = 0
        self.local = threading.local()
        self.workers_started = 0
        self.send_starts: list[float] = []
        self.crashes: list[BaseException] = []
        self.queued = 0  # open-loop arrivals that found every worker busy

    def snapshot(self) -> tuple[list[Record], list[float]]:
        with self.lock:
            return sorted(self.records, key=lambda r: r.seq), list(self.gaps_ms)

    def _session(self) -> requests.Session:
        session = getattr(self.local, "session", None)
        if session is None:
            session = self.local.session = requests.Session()
        return session

    def execute(self, seq: int, scheduled: float | None = None) -> None:
        case = self.cases[seq % len(self.cases)]
        with self.lock:
            self.send_starts.append(time.perf_counter())
        try:
            record, gaps = send_case(self._session(), case, seq, self.settings, scheduled)
        except Exception as e:  # a bug, not a gateway error: stop the run and report it
            if threading.current_thread() is threading.main_thread():
                raise
            with self.lock:
                self.crashes.append(e)
            self.stop.set()
            return
        if record.status is None or record.status >= 500:
            # A failing server may close or reset the connection after answering (stock MLflow
            # behind uvicorn does, after an unhandled error): start the next request on a fresh one
            # so the reset is not blamed on an innocent request.
            self.local.session.close()
            self.local.session = None
        with self.lock:
            self.records.append(record)
            self.gaps_ms.extend(gaps)
            self.errors += record.outcome != "pass"

    def _tick(self) -> None:
        with self.lock:
            done, errors = len(self.records), self.errors
        self.progress.update(done, errors)

    def interrupt(self, signum: int = 0, frame: Any = None) -> None:
        """Signal handler: only sets flags, so no lock is ever left held by an exception raised mid-way."""
        self.interrupted.set()
        self.stop.set()

    def _wait(self, threads: list[threading.Thread]) -> None:
        for thread in threads:
            while thread.is_alive() and not self.interrupted.is_set():
                thread.join(0.1)
                self._tick()

    def run_functional(self, repeat: int) -> None:
        """Each case in order, `repeat` times, one at a time (so latencies are not contended)."""

        def one_by_one() -> None:
            for seq in range(len(self.cases) * repeat):
                if self.stop.is_set():
                    return
                self.execute(seq)

        thread = threading.Thread(target=one_by_one, daemon=True, name="functional")
        thread.start()
        self._wait([thread])

    def run_closed_loop(self, concurrency: int, total: int | None, duration: float | None) -> None:
        """`concurrency` workers each send their next request as soon as the previous one answers."""
        counter = iter(range(total if total is not None else sys.maxsize))
        deadline = time.perf_counter() + duration if duration is not None else None
        take = threading.Lock()

        def worker() -> None:
            while not self.stop.is_set():
                with take:
                    if deadline is not None and time.perf_counter() >= deadline:
                        return
                    seq = next(counter, None)
                if seq is None:
                    return
                self.execute(seq)

        threads = [threading.Thread(target=worker, daemon=True, name=f"load-{i}") for i in range(concurrency)]
        self.workers_started = len(threads)
        for thread in threads:
            thread.start()
        self._wait(threads)

    def run_open_loop(self, rate: float, total: int | None, duration: float | None, max_workers: int) -> None:
        """Arrivals every 1/rate seconds by the clock, answered or not; a worker thread per request in flight.

        Workers are started as needed up to max_workers. When all are busy an arrival waits in the
        queue: its queue_ms shows it, and the summary calls the run generator-bound.
        """
        arrivals: queue.Queue[tuple[int, float] | None] = queue.Queue()
        threads: list[threading.Thread] = []
        busy = [0]

        def worker() -> None:
            while True:
                item = arrivals.get()
                if item is None:
                    return
                try:
                    self.execute(*item)
                finally:
                    with self.lock:
                        busy[0] -= 1

        start = time.perf_counter() + 0.05
        seq = 0
        while not self.stop.is_set():
            scheduled = start + seq / rate
            if total is not None and seq >= total:
                break
            if duration is not None and scheduled - start >= duration:
                break
            while (delay := scheduled - time.perf_counter()) > 0:
                time.sleep(min(delay, 0.1))
                self._tick()
            with self.lock:
                busy[0] += 1
                need_worker = busy[0] > len(threads) and len(threads) < max_workers
                self.queued += busy[0] > len(threads) and not need_worker
            if need_worker:
                thread = threading.Thread(target=worker, daemon=True, name=f"load-{len(threads)}")
                thread.start()
                threads.append(thread)
            arrivals.put((seq, scheduled))
            seq += 1
        for _ in threads:
            arrivals.put(None)
        self.workers_started = len(threads)
        self._wait(threads)


# ---------------------------------------------------------------- summary


def percentile(sorted_values: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def distribution(values: Iterable[float]) -> dict[str, float] | None:
    ordered = sorted(v for v in values if v is not None)
    if not ordered:
        return None
    stats = {f"p{p}": round(percentile(ordered, p), 3) for p in (50, 90, 95, 99)}
    stats.update(
        min=round(ordered[0], 3),
        max=round(ordered[-1], 3),
        mean=round(sum(ordered) / len(ordered), 3),
        count=len(ordered),
    )
    return stats


@dataclass(frozen=True)
class GeneratorStats:
    cpu_s: float
    wall_s: float
    workers: int
    target_rate: float | None
    send_starts: list[float]
    queued: int


def generator_summary(g: GeneratorStats, records: list[Record], throughput: float) -> dict[str, Any]:
    """How close this generator came to its own limits, so a result says who the bottleneck was."""
    n = len(records)
    cpu_per_request_ms = g.cpu_s / n * 1000 if n else None
    utilization = g.cpu_s / g.wall_s if g.wall_s > 0 else 0.0
    ceiling = 1000 / cpu_per_request_ms if cpu_per_request_ms else None
    starts = sorted(g.send_starts)
    span = starts[-1] - starts[0] if len(starts) > 1 else 0.0
    achieved = (len(starts) - 1) / span if span > 0 else None
    lags = sorted(r.queue_ms for r in records if r.queue_ms is not None)
    lag_p95 = percentile(lags, 95) if lags else None
    latency_p50 = percentile(sorted(r.latency_ms for r in records), 50) if records else 0.0
    reasons = []
    if utilization >= CPU_SATURATED_CORES:
        reasons.append(f"its CPU was saturated ({utilization:.2f} cores; one Python process tops out near 1)")
    if g.target_rate and achieved is not None and achieved < 0.95 * g.target_rate:
        reasons.append(f"it sent {achieved:.1f} req/s of the {g.target_rate:g} asked")
    if g.queued:
        reasons.append(f"{g.queued} arrivals waited for a worker (all {g.workers} busy; raise --concurrency)")
    if lag_p95 is not None and lag_p95 > max(SLOW_START_MS, 0.1 * latency_p50):
        reasons.append(f"arrivals started late: p95 {lag_p95:.0f} ms after their scheduled time")
    if not g.target_rate and ceiling and throughput > 0.8 * ceiling:
        reasons.append(f"throughput {throughput:.0f} req/s is near its CPU ceiling of ~{ceiling:.0f} req/s")
    bound = bool(reasons)
    if bound:
        note = (
            "generator-bound: " + "; ".join(reasons) + ". The gateway may do better than these figures"
            " show: spread the load over several generator processes or machines."
        )
    else:
        note = "the generator kept up; the figures describe the gateway."
    return {
        "cpu_s": round(g.cpu_s, 3),
        "cpu_per_request_ms": round(cpu_per_request_ms, 3) if cpu_per_request_ms else None,
        "cpu_utilization": round(utilization, 3),
        "ceiling_rps": round(ceiling, 1) if ceiling else None,
        "target_rate": g.target_rate,
        "achieved_rate": round(achieved, 2) if achieved else None,
        "workers": g.workers,
        "queued": g.queued,
        "start_lag_ms": distribution(lags),
        "bound": bound,
        "note": note,
    }


SIDE_TEXT = {
    "provider": "the provider refused",
    "gateway": "the gateway failed",
    "client": "the gateway rejected the request as invalid",
    "network": "could not talk to the gateway",
    "unknown": "no complete answer",
}


def verdict(records: list[Record]) -> tuple[str, str, list[str]]:
    """Which side failed, in one sentence, plus hints.

    ("provider", "the gateway works; the provider refused: quota (3)", [])
    """
    if not records:
        return "none", "no request finished", []
    errors = [r for r in records if r.outcome == "error"]
    failed = sum(r.outcome == "fail" for r in records)
    answered = sum(r.status is not None for r in records)
    if not errors:
        text = f"the gateway works: all {len(records)} requests answered as expected"
        if failed:
            text = f"the gateway works; {failed} of {len(records)} answers missed an expectation (see failures)"
        return "none", text, []
    by_side: dict[str, Counter[str]] = {}
    for r in errors:
        by_side.setdefault(r.error_side or "unknown", Counter())[r.error_class or "?"] += 1
    parts = []
    for side in ("gateway", "network", "provider", "client", "unknown"):
        if side in by_side:
            classes = ", ".join(f"{cls} ({n})" for cls, n in by_side[side].most_common())
            parts.append(f"{SIDE_TEXT[side]}: {classes}")
    if set(by_side) <= {"provider", "client"} and answered:
        main = "provider" if "provider" in by_side else "client"
        text = "the gateway works; " + "; ".join(parts)
    else:
        main = next(s for s in ("gateway", "network", "unknown", "provider", "client") if s in by_side)
        text = "; ".join(parts)
    hints = []
    if any(r.error_class == "gateway_5xx" and r.error == "Internal Server Error" for r in errors):
        hints.append(
            "a bare 'Internal Server Error' is stock MLflow's answer to its own failures and also"
            " to a provider that dropped the connection, timed out or sent garbage: the gateway log"
            " tells which (gateway_kit.app answers those with 502/504 upstream_* instead)"
        )
    if any(r.error_class == "stream_interrupted" for r in errors):
        hints.append(
            "MLflow 3.17.2 sends HTTP 200 before a stream's first chunk, so a provider error in a"
            " stream shows only as a cut stream: run the case without stream to see the provider's"
            " status"
        )
    if any(r.error_class == "rate_limited" and r.retry_after for r in errors):
        waits = sorted({r.retry_after for r in errors if r.retry_after})
        hints.append(f"Retry-After: {', '.join(waits[:3])}")
    return main, text, hints


def summarize(
    records: list[Record],
    gaps_ms: list[float],
    wall_s: float,
    gen: GeneratorStats,
    cost_problem: str | None,
    max_error_rate: float,
    max_p95_ms: float | None,
) -> dict[str, Any]:
    n = len(records)
    errors = [r for r in records if r.outcome == "error"]
    latency = distribution(r.latency_ms for r in records)
    throughput = n / wall_s if wall_s > 0 else 0.0
    usage_totals: dict[str, int] = {}
    for key in TOKEN_FIELDS:
        usage_totals[key] = sum(getattr(r, key) or 0 for r in records)
    priced = [r for r in records if r.cost_usd is not None]
    sources = Counter(r.price_source for r in records if r.price_source)
    replicas = Counter(r.replica for r in records if r.replica)
    replica_source = "X-Gateway-Replica" if replicas else None
    if not replicas:
        replicas = Counter(r.upstream_addr.split(",")[-1].strip() for r in records if r.upstream_addr)
        replica_source = "X-Upstream-Addr" if replicas else None
    side, verdict_text, hints = verdict(records)
    error_rate = len(errors) / n if n else 0.0
    gates = [
        {
            "name": "max_error_rate",
            "limit": max_error_rate,
            "value": round(error_rate, 6),
            "passed": error_rate <= max_error_rate,
        }
    ]
    if max_p95_ms is not None:
        p95 = latency["p95"] if latency else None
        gates.append(
            {"name": "max_p95_ms", "limit": max_p95_ms, "value": p95, "passed": p95 is not None and p95 <= max_p95_ms}
        )
    failed = sum(r.outcome == "fail" for r in records)
    gates.append({"name": "expectations", "limit": 0, "value": failed, "passed": failed == 0})
    gates.append({"name": "finished_requests", "limit": 1, "value": n, "passed": n > 0})
    by_case = []
    for name in dict.fromkeys(r.case for r in records):
        mine = [r for r in records if r.case == name]
        dist = distribution(r.latency_ms for r in mine) or {}
        by_case.append(
            {
                "case": name,
                "requests": len(mine),
                "passed": sum(r.outcome == "pass" for r in mine),
                "failed": sum(r.outcome == "fail" for r in mine),
                "errors": sum(r.outcome == "error" for r in mine),
                "p50_ms": dist.get("p50"),
                "p95_ms": dist.get("p95"),
                "ttft_p50_ms": (distribution(r.ttft_ms for r in mine) or {}).get("p50"),
            }
        )
    return {
        "requests": n,
        "passed": sum(r.outcome == "pass" for r in records),
        "failed": failed,
        "errors": len(errors),
        "error_rate": round(error_rate, 6),
        "duration_s": round(wall_s, 3),
        "throughput_rps": round(throughput, 3),
        "latency_ms": latency,
        "ttft_ms": distribution(r.ttft_ms for r in records),
        "inter_chunk_ms": distribution(gaps_ms),
        "errors_by_class": dict(Counter(r.error_class for r in errors).most_common()),
        "failing_side": side,
        "verdict": verdict_text,
        "hints": hints,
        "replicas": dict(replicas.most_common()),
        "replica_source": replica_source,
        "usage": usage_totals,
        "cost": {
            "usd": round(sum(r.cost_usd for r in priced), 8) if priced else None,
            "priced_requests": len(priced),
            "unpriced_requests": sum(1 for r in records if r.has_usage and r.cost_usd is None),
            "sources": dict(sources),
            "problem": cost_problem,
        },
        "by_case": by_case,
        "generator": generator_summary(gen, records, throughput),
        "gates": gates,
        "passed_all": all(g["passed"] for g in gates),
    }


# ---------------------------------------------------------------- output


def atomic_write_json(path: Path, document: dict[str, Any]) -> None:
    """Write to a temporary file beside the target, then rename: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(document, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def fmt_ms(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if value >= 10_000:
        return f"{value / 1000:.2f} s"
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def fmt_usd(value: float | None) -> str:
    return "-" if value is None else f"${value:.6f}" if value < 1 else f"${value:.2f}"


def fmt_tokens(record: Record) -> str:
    if not record.has_usage:
        return "-"
    return "/".join("-" if n is None else str(n) for n in (record.prompt_tokens, record.completion_tokens))


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


class Paint:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str, colour: str) -> str:
        codes = {"green": "32", "red": "31", "yellow": "33", "bold": "1"}
        return f"\033[{codes[colour]}m{text}\033[0m" if self.enabled else text


def render_functional(records: list[Record], paint: Paint) -> str:
    rows, notes = [], []
    results = {"pass": paint("PASS", "green"), "fail": paint("FAIL", "red"), "error": paint("ERROR", "red")}
    for r in records:
        result = results[r.outcome] + (f" {r.error_class}" if r.error_class else "")
        rows.append(
            [
                r.case,
                str(r.seq + 1),
                str(r.status or "-"),
                fmt_ms(r.latency_ms),
                fmt_ms(r.ttft_ms),
                fmt_tokens(r),
                fmt_usd(r.cost_usd),
                r.replica or r.upstream_addr or "-",
                result,
            ]
        )
        for failure in r.failures:
            notes.append(f"  {r.case} #{r.seq + 1}: {failure}")
    text = table(rows, ["CASE", "#", "STATUS", "LATENCY", "TTFT", "TOKENS in/out", "COST", "REPLICA", "RESULT"])
    if notes:
        text += "\n\nWhy they failed:\n" + "\n".join(notes)
    return text


def render_summary(doc: dict[str, Any], output: str | None, paint: Paint) -> str:
    s, run = doc["summary"], doc["run"]
    lines = []
    if run["mode"] == "load":
        lat = s["latency_ms"] or {}
        lines.append(
            table(
                [
                    [
                        str(s["requests"]),
                        f"{s['throughput_rps']:.1f}",
                        fmt_ms(lat.get("p50")),
                        fmt_ms(lat.get("p90")),
                        fmt_ms(lat.get("p95")),
                        fmt_ms(lat.get("p99")),
                        fmt_ms(lat.get("max")),
                        str(s["errors"]),
                    ]
                ],
                ["REQUESTS", "REQ/S", "P50", "P90", "P95", "P99", "MAX", "ERRORS"],
            )
        )
        if s["by_case"] and len(s["by_case"]) > 1:
            lines.append("")
            lines.append(
                table(
                    [
                        [
                            c["case"],
                            str(c["requests"]),
                            str(c["passed"]),
                            str(c["errors"]),
                            fmt_ms(c["p50_ms"]),
                            fmt_ms(c["p95_ms"]),
                            fmt_ms(c["ttft_p50_ms"]),
                        ]
                        for c in s["by_case"]
                    ],
                    ["CASE", "REQUESTS", "PASSED", "ERRORS", "P50", "P95", "TTFT P50"],
                )
            )
        lines.append("")
    verdict_colour = "green" if s["failing_side"] == "none" and s["passed_all"] else "red"
    lines.append(
        f"Result:    {s['passed']} passed, {s['failed']} failed, {s['errors']} errors"
        f" of {s['requests']} requests in {s['duration_s']:.1f} s against {run['url']}"
    )
    lines.append("Verdict:   " + paint(s["verdict"], verdict_colour))
    lines += [f"Hint:      {hint}" for hint in s["hints"]]
    if s["latency_ms"]:
        lat = s["latency_ms"]
        lines.append(
            f"Latency:   p50 {fmt_ms(lat['p50'])}, p90 {fmt_ms(lat['p90'])},"
            f" p95 {fmt_ms(lat['p95'])}, p99 {fmt_ms(lat['p99'])}, max {fmt_ms(lat['max'])}"
        )
    if s["ttft_ms"]:
        t = s["ttft_ms"]
        lines.append(
            f"TTFT:      p50 {fmt_ms(t['p50'])}, p95 {fmt_ms(t['p95'])}, max {fmt_ms(t['max'])} ({t['count']} streams)"
        )
    if s["inter_chunk_ms"]:
        g = s["inter_chunk_ms"]
        lines.append(f"Chunk gap: p50 {fmt_ms(g['p50'])}, p95 {fmt_ms(g['p95'])}, max {fmt_ms(g['max'])}")
    if s["errors_by_class"]:
        lines.append("Errors:    " + ", ".join(f"{k} {v}" for k, v in s["errors_by_class"].items()))
    if s["replicas"]:
        lines.append(
            "Replicas:  " + ", ".join(f"{k} {v}" for k, v in s["replicas"].items()) + f" (from {s['replica_source']})"
        )
    u, c = s["usage"], s["cost"]
    cost_text = fmt_usd(c["usd"]) if c["usd"] is not None else "unknown"
    if c["problem"]:
        cost_text += f" ({c['problem']})"
    elif c["unpriced_requests"]:
        cost_text += f" ({c['unpriced_requests']} requests unpriced)"
    lines.append(
        f"Usage:     {u['prompt_tokens']} prompt + {u['completion_tokens']} completion tokens; cost {cost_text}"
    )
    g = s["generator"]
    if run["mode"] == "load":
        rate = f", sent {g['achieved_rate']} of {g['target_rate']:g} req/s" if g["target_rate"] else ""
        if g["start_lag_ms"]:
            rate += f", start lag p95 {fmt_ms(g['start_lag_ms']['p95'])}"
        ceiling = f", ceiling ~{g['ceiling_rps']:.0f} req/s" if g["ceiling_rps"] else ""
        lines.append(
            f"Generator: {g['cpu_per_request_ms'] or 0:.2f} ms CPU/request{ceiling},"
            f" {g['cpu_utilization']:.2f} cores, {g['workers']} workers{rate}"
        )
        lines.append("           " + paint(g["note"], "yellow" if g["bound"] else "green"))
    failed_gates = [gate for gate in s["gates"] if not gate["passed"]]
    for gate in failed_gates:
        lines.append(paint(f"Gate failed: {gate['name']} = {gate['value']} (limit {gate['limit']})", "red"))
    if run["interrupted"]:
        lines.append(paint("Interrupted: only the requests that finished are counted.", "yellow"))
    if output:
        lines.append(f"Results:   {output}")
    return "\n".join(lines)


# ---------------------------------------------------------------- gateway


def check_health(url: str, wait: float, headers: dict[str, str]) -> dict[str, Any]:
    """GET /health until it answers 200 or `wait` seconds pass, showing progress; else GatewayUnreachable."""
    start = time.monotonic()
    deadline = start + wait
    session = requests.Session()
    attempt = 0
    while True:
        attempt += 1
        remaining = deadline - time.monotonic()
        t0 = time.perf_counter()
        try:
            response = session.get(
                url + "/health",
                headers=headers,
                allow_redirects=False,
                timeout=max(1.0, min(HEALTH_ATTEMPT_TIMEOUT_S, remaining)),
            )
            if response.status_code == 200:
                return {
                    "ok": True,
                    "status": 200,
                    "latency_ms": round((time.perf_counter() - t0) * 1000, 3),
                    "waited_s": round(time.monotonic() - start, 3),
                    "attempts": attempt,
                }
            body = error_message(response.content)[:120]
            problem = f"GET /health answered HTTP {response.status_code}: {body}"
        except requests.RequestException as e:
            problem = describe_connection_problem(e)
        waited = time.monotonic() - start
        if time.monotonic() >= deadline:
            if sys.stderr.isatty() and wait > 0:
                sys.stderr.write("\n")
            tried = f"after {attempt} attempts in {waited:.0f}s" if wait else "one attempt"
            raise GatewayUnreachable(
                f"cannot reach the gateway at {url}: {problem} (GET /health, {tried}) — is it running?"
                f" Next: {NEXT_COMMAND}" + ("" if wait else " (or add --wait 60 right after a deploy)")
            )
        message = f"waiting for the gateway at {url} ({waited:.0f}s / {wait:g}s): {problem}"
        if sys.stderr.isatty():
            sys.stderr.write("\r" + message[:150].ljust(150))
        elif attempt == 1 or attempt % 5 == 0:
            sys.stderr.write(message + "\n")
        sys.stderr.flush()
        time.sleep(max(0.0, min(1.0, deadline - time.monotonic())))


def fetch_endpoints(url: str, headers: dict[str, str]) -> dict[str, dict[str, str]]:
    """Best effort: each endpoint's model and provider, so errors without a body still name them."""
    try:
        response = requests.get(url + "/api/2.0/endpoints/", headers=headers, timeout=3)
        items = response.json().get("endpoints", []) if response.status_code == 200 else []
    except (requests.RequestException, ValueError, AttributeError):
        return {}
    found = {}
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            model = item.get("model") if isinstance(item.get("model"), dict) else {}
            found[item["name"]] = {
                "model": model.get("name"),
                "provider": model.get("provider"),
                "type": item.get("endpoint_type"),
            }
    return found


# ---------------------------------------------------------------- command line


def number(kind: type = float, *, above: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite `kind` (int or float), 0 or more (more than 0 with above=True)."""
    noun = "whole number" if kind is int else "number"
    wanted = f"a positive {noun}" if above else f"zero or more (a {noun})"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if not math.isfinite(value) or value < 0 or (above and value == 0):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value

    return parse


positive_int = number(int, above=True)
positive_float = number(float, above=True)
non_negative_float = number(float)


def fraction(text: str) -> float:
    """0.05 or 5%."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction like 0.01 or a percentage like 1%, got {text!r}")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1 (or 0%..100%), got {text!r}")
    return value


def build_parser(env: dict[str, str]) -> argparse.ArgumentParser:
    doc_head, _, doc_rest = __doc__.partition("\n\n")
    description, _, examples = doc_rest.partition("\nexamples:")
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=doc_head + "\n\n" + description,
        epilog="examples:" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target = parser.add_argument_group("gateway")
    target.add_argument(
        "--url",
        default=env.get("GATEWAY_URL") or DEFAULT_URL,
        help=f"gateway base URL (default: GATEWAY_URL from the environment or .env, else {DEFAULT_URL})",
    )
    target.add_argument(
        "--wait",
        type=non_negative_float,
        default=0.0,
        metavar="SECONDS",
        help="keep retrying GET /health this long before giving up with exit 3 (default 0: try once)",
    )
    target.add_argument(
        "--timeout",
        type=positive_float,
        default=60.0,
        metavar="SECONDS",
        help="give up on a request after this many seconds without an answer; for a stream,"
        " after this long in all (default 60)",
    )
    cases = parser.add_argument_group("test cases")
    cases.add_argument(
        "--test-file",
        metavar="PATH",
        help="JSON or YAML test cases (default: the built-in simple question, multi-turn"
        " conversation and embeddings request); see examples/test_cases.yaml",
    )
    cases.add_argument(
        "--validate",
        action="store_true",
        help="check the test cases, print them and exit without sending anything (0 valid, 2 not)",
    )
    modes = parser.add_argument_group("functional mode (default)")
    modes.add_argument(
        "--repeat",
        type=positive_int,
        default=1,
        metavar="N",
        help="send every case N times, one request at a time (default 1)",
    )
    load = parser.add_argument_group("load mode (any of --requests, --duration, --rate)")
    load.add_argument(
        "--requests", type=positive_int, metavar="N", help="send N requests in all, cycling through the cases"
    )
    load.add_argument(
        "--duration",
        type=positive_float,
        metavar="SECONDS",
        help="send for this many seconds (with --requests: whichever ends first); requests"
        " in flight then finish and are counted",
    )
    load.add_argument(
        "--concurrency",
        type=positive_int,
        metavar="C",
        help="closed loop: C requests in flight, each sent when the previous answers"
        " (default 1); with --rate: the most requests in flight (default: rate x timeout,"
        f" at most {MAX_OPEN_LOOP_WORKERS})",
    )
    load.add_argument(
        "--rate",
        type=positive_float,
        metavar="R",
        help="open loop: R arrivals per second by the clock, whether or not earlier"
        " requests answered, so overload shows as latency and errors rather than as a"
        " slower generator",
    )
    gates = parser.add_argument_group("pass/fail gates (exit 1 when crossed)")
    gates.add_argument(
        "--max-error-rate",
        type=fraction,
        default=0.0,
        metavar="RATE",
        help="largest share of requests that may end in an error, as 0.01 or 1%% (default 0)",
    )
    gates.add_argument(
        "--max-p95-ms",
        type=positive_float,
        metavar="MS",
        help="largest allowed 95th percentile latency over all requests, in milliseconds",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--output",
        default=DEFAULT_OUTPUT,
        metavar="PATH",
        help=f"results file, written atomically (default {DEFAULT_OUTPUT}; schema: {SCHEMA_PATH})",
    )
    output.add_argument(
        "--json", action="store_true", help="print the results document to stdout (the human summary goes to stderr)"
    )
    output.add_argument(
        "--store-content",
        action="store_true",
        help="keep prompts and answers in the results file (off: only sizes, tokens and timings)",
    )
    output.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    output.add_argument("--debug", action="store_true", help="show tracebacks for unexpected errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {TOOL_VERSION}")
    return parser


def check_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """Flags that only make sense together; returns the mode."""
    parsed = urlparse(args.url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        parser.error(f"--url must look like http://host:port, got {args.url!r}")
    args.url = args.url.rstrip("/")
    load = args.requests is not None or args.duration is not None or args.rate is not None
    if not load:
        if args.concurrency is not None:
            parser.error("--concurrency is for load mode: add --requests N or --duration S")
        return "functional"
    if args.repeat != 1:
        parser.error("--repeat is for functional mode; in load mode use --requests N or --duration S")
    if args.rate is not None and args.requests is None and args.duration is None:
        parser.error("--rate needs --requests N or --duration S to know when to stop")
    return "load"


def check_output_path(parser: argparse.ArgumentParser, output: str) -> None:
    out = Path(output)
    if out.is_dir():
        parser.error(f"--output {output} is a directory; give a file name")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        parser.error(f"--output {output}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        parser.error(f"--output {output}: directory {parent} is not writable")


def dotenv_settings() -> dict[str, str]:
    """GATEWAY_URL and GATEWAY_API_KEY from the environment, else from .env in the working directory."""
    path = find_dotenv(usecwd=True)
    from_file = {k: v for k, v in (dotenv_values(path) if path else {}).items() if v is not None}
    names = ("GATEWAY_URL", "GATEWAY_API_KEY")
    found = {n: tool_variable(n) or from_file.get(n) for n in names}
    return {n: v for n, v in found.items() if v}


def build_document(
    args: argparse.Namespace,
    mode: str,
    cases: list[Case],
    health: dict[str, Any],
    started: datetime,
    finished: datetime,
    interrupted: bool,
    records: list[Record],
    summary: dict[str, Any],
    run_id: str,
    authenticated: bool,
) -> dict[str, Any]:
    options = {
        "repeat": args.repeat,
        "requests": args.requests,
        "duration_s": args.duration,
        "concurrency": args.concurrency,
        "rate": args.rate,
        "timeout_s": args.timeout,
        "wait_s": args.wait,
        "max_error_rate": args.max_error_rate,
        "max_p95_ms": args.max_p95_ms,
        "store_content": args.store_content,
        "test_file": args.test_file,
        "output": args.output,
        "auth": "bearer" if authenticated else "none",
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": PROG, "version": TOOL_VERSION},
        "run": {
            "id": run_id,
            "url": args.url,
            "mode": mode,
            "started_at": started.isoformat(timespec="milliseconds"),
            "finished_at": finished.isoformat(timespec="milliseconds"),
            "duration_s": round((finished - started).total_seconds(), 3),
            "interrupted": interrupted,
            "options": options,
            "cases": [
                {"name": c.name, "kind": c.kind, "endpoint": c.target, "route": c.path, "stream": c.stream}
                for c in cases
            ],
            "host": {"hostname": socket.gethostname(), "python": sys.version.split()[0]},
        },
        "health": health,
        "requests": [r.as_json() for r in records],
        "summary": summary,
    }


def fail(message: str) -> None:
    sys.stderr.write(f"{PROG}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    env = dotenv_settings()
    parser = build_parser(env)
    args = parser.parse_args(argv)
    mode = check_flags(parser, args)
    if not args.validate:
        check_output_path(parser, args.output)
    try:
        cases = load_cases(args.test_file)
    except UsageError as e:
        fail(str(e))
        return ExitStatus.USAGE
    if args.validate:
        print(
            table(
                [[c.name, c.kind, c.path, "yes" if c.stream else "no"] for c in cases],
                ["CASE", "KIND", "PATH", "STREAM"],
            )
        )
        source = args.test_file or "built-in cases"
        print(f"{len(cases)} valid case{'s' if len(cases) != 1 else ''} in {source}")
        return ExitStatus.OK

    api_key = env.get("GATEWAY_API_KEY")
    headers = {"User-Agent": f"evaluate_gateway/{TOOL_VERSION}"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    human = sys.stderr if args.json else sys.stdout
    paint = Paint(human.isatty() and not tool_variable("NO_COLOR"))
    try:
        health = check_health(args.url, args.wait, headers)
    except GatewayUnreachable as e:
        fail(str(e))
        return ExitStatus.UNREACHABLE
    except KeyboardInterrupt:
        fail("interrupted during the health check; nothing was sent")
        return ExitStatus.INTERRUPTED
    endpoints = fetch_endpoints(args.url, headers)
    if endpoints:
        for case in cases:
            if not case.via_model and case.target not in endpoints:
                sys.stderr.write(
                    f"{PROG}: warning: case {case.name!r}: the gateway has no endpoint"
                    f" {case.target!r} (it has: {', '.join(sorted(endpoints))})\n"
                )

    run_id = uuid.uuid4().hex[:8]
    settings = Settings(
        url=args.url,
        timeout=args.timeout,
        headers=headers,
        run_id=run_id,
        store_content=args.store_content,
        endpoints=endpoints,
    )
    total = args.requests if mode == "load" else len(cases) * args.repeat
    progress = Progress(sys.stderr.isatty() and not args.no_progress, total, args.duration)
    runner = Runner(cases, settings, progress)
    workers = (
        (args.concurrency or 1)
        if args.rate is None
        else (args.concurrency or max(1, min(MAX_OPEN_LOOP_WORKERS, math.ceil(args.rate * args.timeout))))
    )
    started = datetime.now(UTC)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    # Ctrl-C, or SIGTERM (CI cancelling the job), ends the run; the requests that finished are saved.
    signal.signal(signal.SIGINT, runner.interrupt)
    signal.signal(signal.SIGTERM, runner.interrupt)
    if mode == "functional":
        runner.run_functional(args.repeat)
    elif args.rate is not None:
        runner.run_open_loop(args.rate, args.requests, args.duration, workers)
    else:
        runner.run_closed_loop(workers, args.requests, args.duration)
    interrupted = runner.interrupted.is_set()
    wall_s, cpu_s = time.perf_counter() - wall0, time.process_time() - cpu0
    if runner.crashes:
        raise runner.crashes[0]
    finished = datetime.now(UTC)
    progress.finish()
    records, gaps = runner.snapshot()
    if mode == "load" and args.rate is not None:
        workers = runner.workers_started or workers

    costs = CostBook()
    records = [costs.price(r) for r in records]
    gen = GeneratorStats(
        cpu_s=cpu_s,
        wall_s=wall_s,
        workers=workers,
        target_rate=args.rate,
        send_starts=runner.send_starts,
        queued=runner.queued,
    )
    summary = summarize(records, gaps, wall_s, gen, costs.problem, args.max_error_rate, args.max_p95_ms)
    if interrupted:
        exit_code = ExitStatus.INTERRUPTED
    else:
        exit_code = ExitStatus.OK if summary["passed_all"] else ExitStatus.FAILED
    summary["exit_code"] = exit_code
    document = build_document(
        args, mode, cases, health, started, finished, interrupted, records, summary, run_id, bool(api_key)
    )
    try:
        atomic_write_json(Path(args.output), document)
        written = args.output
    except OSError as e:
        fail(f"cannot write {args.output}: {e}")
        written = None

    if mode == "functional":
        human.write(render_functional(records, paint) + "\n\n")
    human.write(render_summary(document, written, paint) + "\n")
    human.flush()
    if args.json:
        sys.stdout.write(json.dumps(document, indent=2, sort_keys=True) + "\n")
        sys.stdout.flush()
    if interrupted:
        fail(f"interrupted: saved the {len(records)} requests that finished" + (f" to {written}" if written else ""))
    return exit_code if written else ExitStatus.FAILED


def entry() -> int:
    debug = "--debug" in sys.argv[1:]
    try:
        return main()
    except KeyboardInterrupt:
        fail("interrupted")
        return ExitStatus.INTERRUPTED
    except Exception as e:  # anything unexpected: one line, unless --debug
        if debug:
            raise
        fail(f"unexpected {type(e).__name__}: {e} — re-run with --debug for the traceback")
        return ExitStatus.FAILED


if __name__ == "__main__":
    raise SystemExit(entry())
