"""One usage record per request: its format, where its tokens come from, and the durable ledger.

Pure functions and small classes, no mlflow import. UsageRecord is the one model of a record: the gateway
writes it, analyze_costs.py reads it with a parser generated from its fields (RECORD_FIELDS, FIELD_TYPES), and
the gateway and evaluate_gateway.py read an answer's tokens with the same functions (usage_from_object,
usage_from_body, StreamUsage), so both count the same tokens.

A record is one JSON line, tagged so it can be picked out of mixed `docker logs` output:

    {"type":"usage","v":1,"ts":"2026-11-22T10:00:00.123Z","request_id":"3f2a...","route":"/gateway/chat/invocations",
     "endpoint":"chat","provider":"openai","model":"gpt-4o-mini-2024-07-18","status":200,"latency_ms":812.4,
     "ttft_ms":null,"stream":false,"partial":false,"prompt_tokens":1234,"completion_tokens":256,"total_tokens":1490,
     "cached_tokens":1024,"reasoning_tokens":0,"client":"team-a","replica":"mlflow-gateway-1","cost_usd":0.000264,
     "price_source":"genai-prices 0.2.3","served_by":null,"fallback_reason":null,"error":null,"cache":null,
     "saved_usd":null,"api":null,"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736",
     "config_hash":"3b9f0c2a7e41"}

Writing one (what the gateway does per request):

    ledger = Ledger.from_settings(settings)    # GATEWAY_LEDGER_DIR, GATEWAY_REPLICA_ID; None if turned off
    usage = usage_from_body(response_json)     # or StreamUsage().feed_bytes(chunk) ... .usage for a stream
    cost = pricer.cost(model, provider, usage)
    emit(UsageRecord(ts=utc_now_iso(), request_id=..., route=..., ..., cost_usd=cost.usd,
                     price_source=cost.source), ledger)

Ledger files and retention
--------------------------
`<dir>/usage-<replica>-<YYYY-MM-DD>.jsonl`, one per replica per UTC day (the day the record was written).
Every record is a single os.write() of a whole line on an O_APPEND descriptor: the kernel appends it in one
piece, so several gunicorn workers of one replica can share the file. A disk that fills mid-write, or a
SIGKILL mid-write (Linux may stop a write at a page boundary), can leave a fragment: it is ended with a newline
before the next record (by the next worker, when it opens the file), and analyze_costs.py counts it as malformed
and still reads a record another worker glued right after it. Writers hold a shared flock() while they append and
the opener an exclusive one while it looks at the last byte, so a live worker's record half copied in is never
taken for a fragment. Keep the directory on a local volume: O_APPEND is not atomic on NFS.

The kit never deletes, rotates or rewrites ledger files. A record is about 500 bytes, so a million requests a day
is about 0.5 GB a day (about 0.05 GB once gzip'd). Keep them as long as billing needs; to trim, compress or
remove whole past days yourself, for example from cron:

    LEDGER="$(docker volume inspect -f '{{ .Mountpoint }}' mlflow-gateway_gateway-ledger)"
    find "$LEDGER" -name 'usage-*.jsonl' -mtime +2 -exec gzip {} +      # never today's: it is being appended to
    find "$LEDGER" -name 'usage-*.jsonl.gz' -mtime +400 -delete

analyze_costs.py --ledger reads both .jsonl and .jsonl.gz files. docs/usage-and-costs.md says more.

If the ledger cannot be written (disk full, read-only volume, missing directory) the request is still served and
its record still goes to stdout; the failure is counted (Ledger.failures) and logged on logger
"gateway_kit.usage" at ERROR at most once a minute, with how many records were not written.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, get_args, get_origin, get_type_hints

from pydantic_core import to_json as _to_json

from gateway_kit.pricing import Usage

if TYPE_CHECKING:
    from gateway_kit.settings import Settings

__all__ = [
    "FIELD_TYPES",
    "Ledger",
    "NULLABLE",
    "RECORD_FIELDS",
    "RECORD_TYPE",
    "RECORD_VERSION",
    "REFUSED",
    "StreamUsage",
    "TOKEN_FIELDS",
    "UsageRecord",
    "emit",
    "ledger_file_name",
    "model_from_body",
    "token_fields",
    "usage_from_anthropic",
    "usage_from_body",
    "usage_from_object",
    "usage_from_openai",
    "utc_now_iso",
]

log = logging.getLogger("gateway_kit.usage")

RECORD_TYPE = "usage"
RECORD_VERSION = 1
REFUSED = "refused:"  # how a record's error starts when the gateway refused the request itself (no key, a limit)


@dataclass  # not frozen: a frozen dataclass's __init__ costs half as much again, once per request
class UsageRecord:
    """What one request used and cost. Token counts follow OpenAI: prompt includes cached, completion includes
    reasoning. cost_usd is None when the model's price is unknown (price_source "unknown"), never a silent 0.
    `content` (prompt and answer) is written only when set, and the gateway sets it only when asked to."""

    ts: str  # ISO-8601 UTC, when the request arrived: 2026-11-22T10:00:00.123Z
    request_id: str | None  # X-Request-ID, the same id nginx logs
    route: str  # the request path: /gateway/chat/invocations, /v1/chat/completions ...
    endpoint: str | None = None  # config.yaml endpoint or route name: chat, chat-split ...
    provider: str | None = None  # openai, anthropic, azure ...
    model: str | None = None  # as the upstream answered: gpt-4o-mini-2024-07-18
    status: int = 0  # HTTP status returned to the client
    latency_ms: float = 0.0  # request arrival to last byte sent
    ttft_ms: float | None = None  # streams: request arrival to first content byte
    stream: bool = False
    partial: bool = False  # a stream cut by the client or the upstream: tokens are what was received
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    client: str | None = None  # client identity when the edge provides one
    replica: str | None = None  # GATEWAY_REPLICA_ID of the replica that served it
    cost_usd: float | None = None
    price_source: str = "unknown"  # "genai-prices 0.2.3", "pricing.yaml", "... via pricing.yaml", "unknown"
    served_by: str | None = None  # the fallback endpoint that answered instead of `endpoint` (None: no fallback)
    fallback_reason: str | None = None  # why `endpoint` was left: http_500, timeout_first_byte, circuit_open ...
    error: str | None = None  # short error class or message when status is not 2xx, or a stream was cut
    content: Mapping[str, Any] | None = None  # prompt / answer, only when recording content is turned on
    cache: str | None = None  # "hit": answered from the response cache; "miss": the provider's answer, stored
    saved_usd: float | None = None  # a hit: what the provider would have charged (cost_usd is 0)
    api: str | None = None  # the API the client spoke when not chat's: "messages", "responses" (gateway_kit.dialects)
    trace_id: str | None = None  # W3C trace id: the caller's traceparent's, or the one the gateway started
    config_hash: str | None = None  # which config the replica served it with (gateway_kit.reload.config_hash)

    def to_dict(self) -> dict[str, Any]:
        """The record as written: "type" and "v" first, then every field in declaration order."""
        out: dict[str, Any] = {"type": RECORD_TYPE, "v": RECORD_VERSION, **self.__dict__}  # per request: kept lean
        for name in _FLOAT_FIELDS:
            value = out[name]
            if value is not None and not math.isfinite(value):
                out[name] = None  # NaN is not JSON
        content = out.pop("content")
        if content is not None:
            out["content"] = dict(content)
        return out

    def to_json(self) -> str:
        """One line of JSON, no newline."""
        return self.to_json_bytes().decode()

    def to_json_bytes(self) -> bytes:
        """One line of JSON in UTF-8, no newline: pydantic's encoder (already there with MLflow), about four
        times as fast as the json module's, which matters once per request."""
        return _to_json(self.to_dict(), fallback=str)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UsageRecord:
        """A record from its JSON object; unknown keys are ignored (newer writers), missing ones take defaults.

        Raises ValueError for something that is not a usage record."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a usage record is a JSON object, not {type(data).__name__}")
        kind = data.get("type", RECORD_TYPE)
        if kind != RECORD_TYPE:
            raise ValueError(f"not a usage record (type {kind!r})")
        values: dict[str, Any] = {}
        for f in _FIELDS:
            if f.name in data:
                values[f.name] = _coerce(f.name, data[f.name])
        values.setdefault("ts", "")
        values.setdefault("request_id", None)
        values.setdefault("route", "")
        return cls(**values)


# -- the record's shape, for every reader ---------------------------------------------------------------
#
# UsageRecord is the one model of a record. What its readers need is read off the dataclass, never copied:
# the fields in the order they are written, the JSON type of each (from its annotation: `float | None` is a
# float that may be null) and which are token counts. UsageRecord.from_dict, analyze_costs.py's fast parser (a
# regular expression it generates from these) and evaluate_gateway.py's results (the same token fields, from
# the same usage_from_* functions) follow them.


def _value_type(hint: Any) -> tuple[type, bool]:
    """(type of the value, may it be None) of a field's annotation: `float | None` gives (float, True)."""
    args = get_args(hint)
    nullable = type(None) in args
    if nullable:
        (hint,) = (a for a in args if a is not type(None))
    return get_origin(hint) or hint, nullable


_FIELDS = fields(UsageRecord)
_HINTS = {name: _value_type(hint) for name, hint in get_type_hints(UsageRecord).items()}
RECORD_FIELDS = tuple(f.name for f in _FIELDS if f.name != "content")  # in the order they are written
FIELD_TYPES: dict[str, type] = {name: _HINTS[name][0] for name in RECORD_FIELDS}  # str, int, float or bool
NULLABLE = frozenset(name for name in RECORD_FIELDS if _HINTS[name][1])  # may be written as null
TOKEN_FIELDS = tuple(name for name in RECORD_FIELDS if name.endswith("_tokens"))  # prompt_tokens ... reasoning_tokens
_FLOAT_FIELDS = tuple(name for name in RECORD_FIELDS if FIELD_TYPES[name] is float)


def _coerce(name: str, value: Any) -> Any:
    kind = FIELD_TYPES.get(name)
    if kind is int:
        return _int(value)
    if kind is float:
        return _float(value) if name in NULLABLE else _float(value) or 0.0
    if kind is bool:
        return value is True or value in ("true", "True", 1)
    if name == "content":
        return value if isinstance(value, Mapping) else None
    if name == "price_source":
        return str(value) if value else "unknown"
    return None if value is None else str(value)


def _int(value: Any) -> int:
    if value is None or isinstance(value, bool):
        return 0
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return 0


def _float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


_last_second: list = [None, ""]  # the formatted second last asked for: strftime once a second, not per request


def utc_now_iso(t: float | None = None) -> str:
    """ISO-8601 UTC with milliseconds and a Z: 2026-11-22T10:00:00.123Z (sorts as text)."""
    if t is None:
        t = time.time()
    second = int(t)
    if _last_second[0] != second:
        _last_second[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    return f"{_last_second[1]}.{int(t * 1000) % 1000:03d}Z"


# -- tokens from provider responses -----------------------------------------------------------------------
#
# The one place an answer's tokens are read, by the gateway (recording.py: the record) and by
# evaluate_gateway.py (its results): both give the same prompt_tokens for the same answer.


def usage_from_body(body: Any) -> Usage | None:
    """Usage of any response body the gateway returns or receives, OpenAI- or Anthropic-shaped; None if none."""
    if not isinstance(body, Mapping):
        return None
    usage = body.get("usage")
    if isinstance(usage, Mapping):
        if body.get("type") in ("message", "message_delta") and not _has_openai_counts(usage):
            return _anthropic_usage(usage)
        return usage_from_object(usage)
    if body.get("type") == "message_start":
        return usage_from_anthropic(body)
    return None


def usage_from_object(usage: Any) -> Usage | None:
    """Usage of a response's `usage` object alone (the gateway cuts it out of a body it does not parse): OpenAI's
    prompt_tokens / completion_tokens, Anthropic's when it has cache tokens, else the Responses API's
    input_tokens / output_tokens (which include cached tokens already). None if it holds no counts."""
    if usage.__class__ is not dict and not isinstance(usage, Mapping):  # a dict, nearly always: the quick test
        return None
    if not _has_openai_counts(usage) and ("cache_read_input_tokens" in usage or "cache_creation_input_tokens" in usage):
        return _anthropic_usage(usage)
    return _openai_usage(usage)


def token_fields(usage: Usage | None) -> dict[str, int | None]:
    """The record's token fields (TOKEN_FIELDS) of an answer's usage; each None when the answer had none."""
    if usage is None:
        return dict.fromkeys(TOKEN_FIELDS)
    return {name: getattr(usage, name) for name in TOKEN_FIELDS}


def usage_from_openai(body: Mapping[str, Any]) -> Usage | None:
    """Usage of an OpenAI-shaped response, final stream chunk, or Responses API object; None if it has none.

    Reads prompt_tokens_details.cached_tokens and completion_tokens_details.reasoning_tokens (and the Responses
    API's input_tokens_details / output_tokens_details)."""
    usage = body.get("usage") if isinstance(body, Mapping) else None
    return _openai_usage(usage) if isinstance(usage, Mapping) else None


def usage_from_anthropic(body: Mapping[str, Any]) -> Usage | None:
    """Usage of an Anthropic Messages response or stream event (message_start, message_delta); None if none.

    Anthropic's input_tokens leaves out cache reads and writes; here they are added back, as MLflow does, so
    prompt_tokens means the same for every provider, and cache_read_input_tokens becomes cached_tokens.
    A message_delta carries only the cumulative output_tokens: its prompt_tokens is 0 (StreamUsage merges)."""
    if not isinstance(body, Mapping):
        return None
    usage = body.get("usage")
    if not isinstance(usage, Mapping):
        message = body.get("message")
        usage = message.get("usage") if isinstance(message, Mapping) else None
    return _anthropic_usage(usage) if isinstance(usage, Mapping) else None


def _has_openai_counts(usage: Mapping[str, Any]) -> bool:
    return "prompt_tokens" in usage or "completion_tokens" in usage


def _openai_usage(usage: Mapping[str, Any]) -> Usage | None:
    # Once per request in the gateway: plain ints and dicts take the quick tests, anything else _int and isinstance.
    prompt = usage.get("prompt_tokens")
    if prompt is None:
        prompt = usage.get("input_tokens")
    completion = usage.get("completion_tokens")
    if completion is None:
        completion = usage.get("output_tokens")
    if prompt is None and completion is None:
        return None
    in_details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
    out_details = usage.get("completion_tokens_details") or usage.get("output_tokens_details")
    cached = in_details.get("cached_tokens") if _is_mapping(in_details) else None
    if cached is None:
        cached = usage.get("cached_tokens")
    reasoning = out_details.get("reasoning_tokens") if _is_mapping(out_details) else None
    return Usage(
        prompt if prompt.__class__ is int else _int(prompt),
        completion if completion.__class__ is int else _int(completion),
        cached if cached.__class__ is int else _int(cached),
        reasoning if reasoning.__class__ is int else _int(reasoning),
    )


def _is_mapping(value: Any) -> bool:
    return value.__class__ is dict or isinstance(value, Mapping)


def _anthropic_usage(usage: Mapping[str, Any]) -> Usage:
    cache_read = _int(usage.get("cache_read_input_tokens"))
    cache_write = _int(usage.get("cache_creation_input_tokens"))
    prompt = _int(usage.get("input_tokens")) + cache_read + cache_write
    details = usage.get("output_tokens_details")
    thinking = _int(details.get("thinking_tokens")) if isinstance(details, Mapping) else 0
    return Usage(prompt, _int(usage.get("output_tokens")), cache_read, thinking)


def model_from_body(body: Any) -> str | None:
    """The model the upstream answered with (an Anthropic message_start nests it in "message")."""
    if not isinstance(body, Mapping):
        return None
    model = body.get("model")
    if model is None and isinstance(body.get("message"), Mapping):
        model = body["message"].get("model")
    return model if isinstance(model, str) and model else None


_USAGE_IN_LINE = re.compile(rb'"usage"\s*:\s*\{')


class StreamUsage:
    """Tokens and model of a streamed (SSE) response, fed chunk by chunk as they pass through.

    feed_bytes() takes raw SSE bytes in any split; only the first event (for the model) and events that carry a
    usage object are parsed, so a long stream costs little. For OpenAI the usage is in the final chunk
    (MLflow asks for it with stream_options.include_usage); for Anthropic, message_start has the input and
    message_delta the cumulative output. A stream cut before its usage arrived has usage None (mark it partial).
    Never raises."""

    def __init__(self) -> None:
        self.model: str | None = None
        self._prompt = self._completion = self._cached = self._reasoning = 0
        self._seen_usage = False
        self._buffer = b""

    @property
    def usage(self) -> Usage | None:
        if not self._seen_usage:
            return None
        return Usage(self._prompt, self._completion, self._cached, self._reasoning)

    def feed_bytes(self, chunk: bytes) -> None:
        try:
            data = self._buffer + chunk if self._buffer else chunk
            lines = data.split(b"\n")
            self._buffer = lines.pop()
            if len(self._buffer) > 1_048_576:  # an event that never ends: stop buffering it
                self._buffer = b""
            for line in lines:
                if line.startswith(b"data:"):
                    self._feed_data(line[5:].strip())
        except Exception:  # noqa: BLE001 - accounting must never break the stream it watches
            log.debug("could not read usage from a stream chunk", exc_info=True)

    def close(self) -> None:
        """The stream ended: read a last event that had no trailing newline."""
        if self._buffer.startswith(b"data:"):
            self.feed_bytes(b"\n")
        self._buffer = b""

    def _feed_data(self, payload: bytes) -> None:
        if not payload or payload == b"[DONE]":
            return
        if self.model is not None and not _USAGE_IN_LINE.search(payload):
            return
        try:
            event = json.loads(payload)
        except ValueError:
            return
        self.feed_event(event)

    def feed_event(self, event: Any) -> None:
        """Take one parsed stream event (a dict)."""
        if not isinstance(event, Mapping):
            return
        if self.model is None:
            self.model = model_from_body(event)
        kind = event.get("type")
        if kind == "message_start":
            u = usage_from_anthropic(event)
            if u is not None:
                self._prompt, self._cached = u.prompt_tokens, u.cached_tokens
                self._completion = max(self._completion, u.completion_tokens)
                self._seen_usage = True
        elif kind == "message_delta":
            usage = event.get("usage")
            if isinstance(usage, Mapping):
                self._completion = _int(usage.get("output_tokens")) or self._completion
                if "input_tokens" in usage:  # newer API versions repeat the cumulative input here
                    u = usage_from_anthropic(event)
                    if u is not None and u.prompt_tokens:
                        self._prompt, self._cached = u.prompt_tokens, u.cached_tokens
                details = usage.get("output_tokens_details")
                if isinstance(details, Mapping):
                    self._reasoning = _int(details.get("thinking_tokens"))
                self._seen_usage = True
        else:
            u = usage_from_openai(event)
            if u is not None:
                self._prompt, self._completion = u.prompt_tokens, u.completion_tokens
                self._cached, self._reasoning = u.cached_tokens, u.reasoning_tokens
                self._seen_usage = True


# -- output: stdout and the ledger ------------------------------------------------------------------------


def ledger_file_name(replica: str, day: str) -> str:
    """usage-<replica>-<YYYY-MM-DD>.jsonl, the replica id reduced to [A-Za-z0-9._-]."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", replica) or "replica"
    return f"usage-{safe}-{day}.jsonl"


class Ledger:
    """Append-only JSONL usage files: one per replica per UTC day, one write() per line, never raises.

    Safe to share between threads, and between processes (gunicorn workers) of one replica. See the module
    docstring for retention."""

    def __init__(
        self,
        directory: str | Path,
        replica: str,
        *,
        clock: Callable[[], float] = time.time,
        create_dir: bool = True,
        report_every_s: float = 60.0,
    ) -> None:
        self.directory = Path(directory)
        self.replica = replica
        self.create_dir = create_dir
        self.report_every_s = report_every_s
        self.written = 0  # records appended
        self.failures = 0  # records that could not be appended, since this Ledger was made
        self._clock = clock
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._day_end = 0.0  # epoch second at which the open file's UTC day ends
        self._last_report: float | None = None
        self._unreported = 0
        self._last_error = ""

    @classmethod
    def from_settings(cls, s: Settings) -> Ledger | None:
        """The ledger in GATEWAY_LEDGER_DIR (default ./ledger; None when a switch's off word turns it off) for
        GATEWAY_REPLICA_ID (default the hostname)."""
        return cls(s.ledger_dir, s.replica_id) if s.ledger_on else None

    @property
    def path(self) -> Path:
        """The file records written now go to."""
        return self.directory / ledger_file_name(self.replica, time.strftime("%Y-%m-%d", time.gmtime(self._clock())))

    def append(self, record: UsageRecord) -> bool:
        """Append one record; False (and counted, logged at most once a minute) if it could not be written."""
        try:
            line = record.to_json()
        except Exception as e:  # noqa: BLE001 - a record that cannot be serialised must not fail the request
            with self._lock:
                self._failed(e)
            return False
        return self.append_line(line)

    def append_line(self, line: str | bytes) -> bool:
        """Append one already serialised record (a newline is added if missing)."""
        data = line if isinstance(line, bytes) else line.encode("utf-8", "replace")
        if not data.endswith(b"\n"):
            data += b"\n"
        with self._lock:
            try:
                now = self._clock()
                if self._fd is None or now >= self._day_end:
                    self._reopen(now)
                assert self._fd is not None
                fcntl.flock(self._fd, fcntl.LOCK_SH)  # shared: writers append side by side; see _reopen
                try:
                    n = os.write(self._fd, data)
                    if n != len(data):
                        # Out of space mid-line: end the fragment so the next record starts on a line of its own.
                        try:
                            os.write(self._fd, b"\n")
                        finally:
                            raise OSError(errno.ENOSPC, f"short write ({n} of {len(data)} bytes)")
                finally:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
            except Exception as e:  # noqa: BLE001 - never into the request
                self._failed(e)
                return False
            self.written += 1
            if self._last_error:
                log.warning(
                    "usage ledger: writing to %s again after %d record(s) could not be written",
                    self._path,
                    self.failures,
                )
                self._last_error = ""
                self._unreported = 0
            return True

    def close(self) -> None:
        with self._lock:
            self._close()

    def _reopen(self, now: float) -> None:
        self._close()
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        if self.create_dir:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._path = self.directory / ledger_file_name(self.replica, day)
        self._fd = os.open(self._path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._day_end = (int(now) // 86400 + 1) * 86400
        # A writer SIGKILLed in the middle of a write() can leave a fragment at the end (the kernel stops a
        # write that spans pages at a page when a fatal signal is pending). End it so our records start clean.
        # Exclusive: a live writer's record half copied in would look like a fragment too.
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            size = os.fstat(self._fd).st_size
            if size and os.pread(self._fd, 1, size - 1) != b"\n":
                os.write(self._fd, b"\n")
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass

    def _failed(self, error: BaseException) -> None:
        self.failures += 1
        self._unreported += 1
        self._last_error = str(error) or type(error).__name__
        self._close()  # open again on the next record: the volume may come back
        now = self._clock()
        if self._last_report is None or now - self._last_report >= self.report_every_s:
            self._last_report = now
            where = self._path or self.directory
            log.error(
                "usage ledger: cannot write to %s: %s — %d record(s) not written since the last report (%d in all). "
                "Requests are still served and records still go to stdout (docker logs); "
                "fix the ledger volume (free space, permissions, mount).",
                where,
                self._last_error,
                self._unreported,
                self.failures,
            )
            self._unreported = 0


_stdout_failures = 0


def emit(record: UsageRecord, ledger: Ledger | None = None, stream: TextIO | None = None) -> str:
    """Write the record as one JSON line to stdout (so `docker logs` carries it) and append it to the ledger.

    The stdout line is a single os.write() when stdout is a pipe or file, so lines from several workers sharing
    it never interleave. Never raises; returns the line."""
    global _stdout_failures
    try:
        data = record.to_json_bytes() + b"\n"
    except Exception:  # noqa: BLE001
        log.exception("usage record could not be serialised: %r", record)
        return ""
    out = stream if stream is not None else sys.stdout
    line = data[:-1].decode()
    try:
        try:
            fd = out.fileno()
        except (AttributeError, OSError, ValueError):
            fd = None
        if fd is None:
            out.write(line + "\n")
            out.flush()
        else:
            out.flush()  # keep order with anything already buffered
            os.write(fd, data)
    except Exception as e:  # noqa: BLE001 - a closed stdout must not fail the request
        _stdout_failures += 1
        if _stdout_failures == 1 or _stdout_failures % 10000 == 0:
            log.error("usage record could not be written to stdout (%s); %d so far", e, _stdout_failures)
    if ledger is not None:
        ledger.append_line(data)
    return line
