"""What the admin page shows, each figure from where the kit already keeps it.

- Spend and tokens (today, this month) by client, endpoint and model: analyze_costs.py's own scan and report
  (gateway_kit.cli.costs.scan, build_report) over this month's ledger files, so the page and
  `analyze_costs.py --ledger DIR --since today --json` give the same numbers by construction.
- Last use per client, the response cache's stored misses and recent errors by class: one more pass over the
  same files with analyze_costs.py's record reader (costs.records).
- Each file's scan and figures are kept while the file does not change (inode, size, mtime), and merged as
  analyze_costs.py merges its workers' scans (costs.merged; a request found in two files: one scan of all):
  a page load reads again only the files still being written, today's.
- Limits and current use: config.yaml's limits (gateway_kit.limits.read_config) and the counters the replicas
  keep in Redis under the keys gateway_kit.limits names (rules_for, usd_key).
- Replicas: every address GATEWAY_ADMIN_REPLICAS resolves to (Docker's DNS answers a scaled service with
  every replica), each asked GET /ready: ready or not, and the config hash it serves.
- Client keys: the entries of the keys file, or of the Kubernetes Secret (admin.key_writers): client, created,
  prefix, never a hash.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import socket
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from gateway_kit import limits
from gateway_kit.cli import costs
from gateway_kit.pricing import Pricer
from gateway_kit.shared_redis import link, redis_where

_DAY_OF_FILE = re.compile(r"-(\d{4}-\d\d-\d\d)\.jsonl(?:\.gz)?$")
RECENT_ERRORS = timedelta(hours=24)


# ------------------------------------------------------------------------------------------- the ledger
def month_inputs(ledger: Path, now: datetime) -> list[costs.Input]:
    """The ledger files that can hold this month's records: usage-<replica>-<day>.jsonl of a day of this month
    (a record is written the day it ends, never before the day it started), and any file without a day."""
    got = costs.Collected()
    costs.add_ledger(got, ledger)
    first = now.strftime("%Y-%m-01")
    return [i for i in got.inputs if not (m := _DAY_OF_FILE.search(i.path.name)) or m.group(1) >= first]


@dataclass
class Usage:
    today: dict[str, Any]  # analyze_costs.py's report (--since today)
    month: dict[str, Any]  # ... (--since <the 1st>)
    last_use: dict[str, str]  # client -> ts of its latest record this month
    cache_hits: int = 0
    cache_misses: int = 0  # answers the provider gave and the cache stored
    errors: list[dict[str, Any]] = field(default_factory=list)  # class, count, last, in the last 24 hours

    @property
    def hit_ratio(self) -> float | None:
        looked_up = self.cache_hits + self.cache_misses
        return self.cache_hits / looked_up if looked_up else None


@dataclass
class _FileFigures:
    """What one ledger file holds for this month: its scan (with request-id fingerprints, to merge) and the
    figures the report has not. Kept while the file's inode, size and mtime stay the same: only the files of
    today are read again on the next page load."""

    stamp: tuple[int, int, int]
    scan: costs.Scan
    last_use: dict[str, str]
    misses: int
    failed: list[tuple[str, str]]  # (ts, error class) of each failed record


_files: dict[tuple[Path, str, str | None], _FileFigures] = {}  # (file, month start, pricing file) ->


def _file_figures(inp: costs.Input, opts: costs.Options) -> _FileFigures:
    st = inp.path.stat()
    stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
    key = (inp.path, opts.since or "", opts.pricing_file)
    found = _files.get(key)
    if found is not None and found.stamp == stamp:
        return found
    # One process scans every file, so the fingerprints are hash(); see costs.scan's keep_ids.
    found = _FileFigures(stamp, costs.scan([inp], opts, keep_ids="fork"), {}, 0, [])
    ts_at, status_at, client_at, cache_at = (costs.GROUPS.index(n) for n in ("ts", "status", "client", "cache"))
    for g in costs.records(inp):
        ts = g[ts_at]
        if ts < opts.since:
            continue
        client = g[client_at]
        if client and ts > found.last_use.get(client, ""):
            found.last_use[client] = ts
        if g[cache_at] == "miss":
            found.misses += 1
        if g[status_at] not in costs.OK_STATUSES:
            found.failed.append((ts, _error_class(g[1], g[status_at])))
    _files[key] = found
    return found


def usage(ledger: Path, pricing_file: str | None, now: datetime) -> Usage:
    """This month's and today's reports, and the figures the report has not, from one ledger (blocking: run
    it in a thread)."""
    pricer = Pricer(pricing_file)
    inputs = month_inputs(ledger, now)
    label = [f"ledger {ledger}"]
    month_opts = costs.Options(since=costs.parse_when(now.strftime("%Y-%m-01"), now=now), pricing_file=pricing_file)
    parts = [_file_figures(inp, month_opts) for inp in inputs]
    for gone in set(_files) - {(i.path, month_opts.since or "", pricing_file) for i in inputs}:
        _files.pop(gone, None)  # files of an earlier month, removed, or priced with another file
    scanned = None
    if parts:  # merged() adds into its first part: it gets copies, the kept scans stay as they were
        scanned = costs.merged([copy.deepcopy(p.scan) for p in parts], month_opts)
    if scanned is None:  # no file, or a request in two files: one scan of them all, as analyze_costs.py does
        scanned = costs.scan(inputs, month_opts)
    today = now.date().isoformat()
    # analyze_costs.py groups records by day (the first 10 characters of `ts`): today's groups are what
    # `--since today` counts.
    todays = costs.Scan(groups={k: v for k, v in scanned.groups.items() if k[0] == today})
    today_opts = costs.Options(since=costs.parse_when("today", now=now), pricing_file=pricing_file)
    result = Usage(
        today=costs.build_report(todays, today_opts, None, pricer, label),
        month=costs.build_report(scanned, month_opts, None, pricer, label),
        last_use={},
    )
    result.cache_hits = result.month["cache"]["hits"]
    result.cache_misses = sum(p.misses for p in parts)
    recent = (now - RECENT_ERRORS).strftime("%Y-%m-%dT%H:%M:%S")
    errors: Counter[str] = Counter()
    last_error: dict[str, str] = {}
    for p in parts:
        for client, ts in p.last_use.items():
            result.last_use[client] = max(ts, result.last_use.get(client, ""))
        for ts, kind in p.failed:
            if ts >= recent:
                errors[kind] += 1
                last_error[kind] = max(ts, last_error.get(kind, ""))
    latest_first = sorted(errors, key=last_error.__getitem__, reverse=True)
    result.errors = [
        {"class": k, "count": errors[k], "last": last_error[k]} for k in sorted(latest_first, key=lambda k: -errors[k])
    ]  # the most frequent first; of as many, the latest first
    return result


def _error_class(text: str, status: str) -> str:
    """A failed record's error class (`refused:invalid_gateway_key`, `upstream_stream_cut` ...), else http_<status>."""
    try:
        error = json.loads(text).get("error")
    except ValueError:
        error = None
    return str(error) if error else f"http_{status or '?'}"


# ------------------------------------------------------------------------------------------- keys and limits
def key_entries(entries: list[dict]) -> list[dict[str, str]]:
    """Client keys as the page shows them: client, created, prefix; never the hash."""
    return [{"client": e["client"], "created": e.get("created") or "", "prefix": e.get("prefix", "?")} for e in entries]


def limits_config(config_path: str) -> limits.LimitsConfig:
    with open(config_path, encoding="utf-8") as f:
        return limits.read_config(yaml.safe_load(f) or {})


@dataclass(frozen=True)
class LimitUse:
    client: str
    name: str  # client_calls, client_tokens_per_minute, client_usd_per_day
    limit: float
    unit: str
    period: str
    used: float | None  # None: Redis did not answer
    resets_in: float | None  # seconds; None: no counter yet


async def limit_use(config: limits.LimitsConfig, clients: list[str], redis_url: str, timeout: float) -> list[LimitUse]:
    """Each client's limits with what the replicas counted so far, read from Redis in one pipeline."""
    now = datetime.now(UTC).timestamp()
    rules = [(c, r) for c in clients for r in limits.rules_for(config, None, c)]
    if not rules:
        return []
    keys = [limits.usd_key(r.client, now) if r.name == "client_usd_per_day" else r.key for _, r in rules]
    unknown = [LimitUse(c, r.name, r.limit, r.unit, r.period, None, None) for c, r in rules]
    if not redis_url:
        return unknown
    try:
        pipe = link(redis_url, timeout).client().pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
            pipe.pttl(key)
        values = await pipe.execute()
    except Exception:  # noqa: BLE001 - Redis down or unreachable: the page says so instead of the figures
        return unknown
    out = []
    for i, (client, rule) in enumerate(rules):
        raw, pttl = values[2 * i], values[2 * i + 1]
        resets_in = pttl / 1000 if isinstance(pttl, int) and pttl > 0 else None
        used = float(raw) if raw is not None else 0.0
        out.append(LimitUse(client, rule.name, rule.limit, rule.unit, rule.period, used, resets_in))
    return out


def redis_shown(url: str) -> str:
    return redis_where(url) if url else "not set (GATEWAY_REDIS_URL)"


# ------------------------------------------------------------------------------------------- replicas
@dataclass(frozen=True)
class Replica:
    address: str
    replica: str  # its X-Gateway-Replica
    ready: bool
    detail: str  # the checks /ready reported, or why it could not be asked
    config: str = ""  # the config hash /ready reported (gateway_kit.reload.config_hash)


def replica_addresses(targets: str) -> tuple[list[str], list[str]]:
    """Every host:port GATEWAY_ADMIN_REPLICAS names, each host resolved to all its addresses; and the names
    that did not resolve."""
    found: list[str] = []
    unresolved: list[str] = []
    for target in (t.strip() for t in targets.split(",")):
        if not target:
            continue
        host, _, port = target.rpartition(":")
        if not host or not port.isdigit():
            unresolved.append(target)
            continue
        try:
            infos = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
        except OSError:
            unresolved.append(target)
            continue
        for *_, sockaddr in infos:
            ip = sockaddr[0]
            address = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
            if address not in found:
                found.append(address)
    return sorted(found), unresolved


async def replicas(targets: str, timeout: float = 2.0) -> tuple[list[Replica], list[str]]:
    """Each replica's readiness (GET /ready), asked all at once."""
    import aiohttp

    addresses, unresolved = await asyncio.to_thread(replica_addresses, targets)
    client_timeout = aiohttp.ClientTimeout(total=timeout)

    async def ask(session: aiohttp.ClientSession, address: str) -> Replica:
        try:
            async with session.get(f"http://{address}/ready") as answer:
                replica = answer.headers.get("X-Gateway-Replica", "?")
                try:
                    body = await answer.json(content_type=None)
                    checks, config = body.get("checks") or {}, str(body.get("config_hash") or "")
                except (ValueError, aiohttp.ClientError, AttributeError):
                    checks, config = {}, ""
                detail = ", ".join(f"{k}: {v}" for k, v in sorted(checks.items())) or f"HTTP {answer.status}"
                return Replica(address, replica, answer.status == 200, detail, config)
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            return Replica(address, "?", False, f"no answer ({type(e).__name__})")

    async with aiohttp.ClientSession(timeout=client_timeout, trust_env=False) as session:
        found = await asyncio.gather(*(ask(session, a) for a in addresses))
    return list(found), unresolved
