"""What a request cost: genai-prices for public models, pricing.yaml for everything else.

Shared by the gateway (one price per request), evaluate_gateway.py and analyze_costs.py, so it must not
import mlflow. genai-prices is imported on first use, not at import time.

    pricer = Pricer()                                    # finds pricing.yaml, see find_pricing_file()
    pricer.cost("gpt-4o-mini", "openai", Usage(prompt_tokens=1200, completion_tokens=300, cached_tokens=1000))
    # Cost(usd=0.000285, source='genai-prices 0.2.3')
    pricer.cost("my-llama", "ollama", Usage(prompt_tokens=10))
    # Cost(usd=None, source='unknown')        <- never a silent $0

Token semantics are OpenAI's: prompt_tokens includes cached_tokens, completion_tokens includes
reasoning_tokens. Each kind has its own price: input, cached input, output, reasoning (a model without a
separate cached or reasoning price charges those tokens at its input or output price, as genai-prices does).

Where a price comes from, first match wins:
1. pricing.yaml `models:` by "provider/model", then by "model" (case-insensitive);
2. pricing.yaml `deployments:` (Azure OpenAI deployment names) by name;
3. genai-prices' bundled data (offline: it never fetches unless genai_prices.UpdatePrices is started, which
   this kit never does), looked up by the provider's genai-prices id and the model as the upstream named it
   ("gpt-4o-mini-2024-07-18" matches "gpt-4o-mini"). Self-hosted providers (ollama, mlflow-model-serving,
   huggingface-text-generation-inference) are never looked up there: their models need a pricing.yaml entry.
Anything else costs `Cost(None, "unknown")`.

Speed: a (model, provider) pair is resolved once and cached. For the usual linear price (a fixed price per
token of each kind) the resolved form is four per-token rates read back from genai-prices, so a request
costs about 2 µs; a price with a future start date is resolved again on that date. Models with tiered
(size-dependent) or time-of-day prices go through genai-prices on every call (about 0.15 ms).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from gateway_kit import settings

__all__ = ["Cost", "Pricer", "PricingFileError", "Usage", "find_pricing_file", "UNKNOWN"]

log = logging.getLogger("gateway_kit.pricing")

PRICING_FILE_ENV = "GATEWAY_PRICING_FILE"
DEFAULT_PRICING_FILES = (Path("pricing.yaml"), Path("/app/pricing.yaml"))

# pricing.yaml price keys, in USD per million tokens (genai-prices' "mtok" unit).
PRICE_KEYS = ("input_mtok", "cached_input_mtok", "output_mtok", "reasoning_mtok")
ENTRY_KEYS = frozenset(PRICE_KEYS) | {"model", "provider", "multiplier", "note"}

# MLflow gateway provider names -> genai-prices provider ids, where genai-prices' own matching misses.
PROVIDER_ALIASES = {
    "azure": "azure",
    "azure_openai": "azure",
    "azureopenai": "azure",
    "azure-openai": "azure",
    "togetherai": "together",
    "xai": "x-ai",
    "databricks-model-serving": "databricks",
}
# Providers that serve your own models: a public price list cannot know what they cost you.
SELF_HOSTED_PROVIDERS = frozenset(
    {"ollama", "mlflow-model-serving", "huggingface-text-generation-inference", "vllm", "self-hosted", "local"}
)

_MTOK = 1_000_000


@dataclass(frozen=True)
class Usage:
    """Tokens of one request. prompt_tokens includes cached_tokens; completion_tokens includes reasoning_tokens."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """What a usage record calls total_tokens: prompt plus completion."""
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Cost:
    """USD cost of one request; usd is None when the price is unknown (source "unknown")."""

    usd: float | None
    source: str


UNKNOWN = Cost(None, "unknown")


class PricingFileError(ValueError):
    """pricing.yaml is missing, unreadable or malformed; the message names the file and the entry."""


@dataclass(frozen=True)
class _Rates:
    """USD per token of each kind, plus a fixed fee per request; linear in the token counts."""

    input: float
    cached_input: float
    output: float
    reasoning: float
    per_request: float
    source: str
    expires: float | None = None  # epoch seconds when a dated price change takes effect; resolve again then

    def usd(self, prompt: int, completion: int, cached: int, reasoning: int) -> float:
        if not (prompt or completion):
            return 0.0  # nothing reported, nothing billed (an error before the upstream answered)
        cached = min(cached, prompt)
        reasoning = min(reasoning, completion)
        return (
            self.per_request
            + (prompt - cached) * self.input
            + cached * self.cached_input
            + (completion - reasoning) * self.output
            + reasoning * self.reasoning
        )

    def scaled(self, factor: float, source: str) -> _Rates:
        return _Rates(
            self.input * factor,
            self.cached_input * factor,
            self.output * factor,
            self.reasoning * factor,
            self.per_request * factor,
            source,
            self.expires,
        )


@dataclass(frozen=True)
class _Exact:
    """A genai-prices model whose price is not linear (tiers, time-of-day): priced by genai-prices per call."""

    provider: Any
    model: Any
    multiplier: float
    source: str

    def usd(self, prompt: int, completion: int, cached: int, reasoning: int) -> float | None:
        if not (prompt or completion):
            return 0.0
        try:
            calc = self.model.calc_price(
                _genai_usage(prompt, completion, min(cached, prompt), min(reasoning, completion)),
                self.provider,
                genai_request_timestamp=datetime.now(timezone.utc),
            )
        except (ValueError, ArithmeticError) as e:
            log.warning("genai-prices could not price %s: %s", self.model.id, e)
            return None
        return float(calc.total_price) * self.multiplier


def find_pricing_file(explicit: str | Path | None = None) -> Path | None:
    """The pricing.yaml to use: `explicit`, else $GATEWAY_PRICING_FILE, else ./pricing.yaml or /app/pricing.yaml.

    A file named explicitly or by the environment must exist (PricingFileError otherwise); the defaults are
    optional and None means "no overrides".
    """
    named = explicit if explicit not in (None, "") else settings.read(PRICING_FILE_ENV) or None
    if named is not None:
        path = Path(named)
        if not path.exists() or path.is_dir():  # /dev/null is allowed: no overrides
            origin = "" if explicit not in (None, "") else f" (from {PRICING_FILE_ENV})"
            raise PricingFileError(f"{path}{origin}: no such file — create it or point {PRICING_FILE_ENV} elsewhere")
        return path
    return next((p for p in DEFAULT_PRICING_FILES if p.is_file()), None)


class Pricer:
    """Prices requests; one instance per process, reused (it caches every (model, provider) it has seen)."""

    def __init__(self, overrides_path: str | Path | None = None) -> None:
        self.overrides_path: Path | None = find_pricing_file(overrides_path)
        self._models: dict[str, dict[str, Any]] = {}
        self._deployments: dict[str, dict[str, Any]] = {}
        if self.overrides_path is not None:
            self._models, self._deployments = load_overrides(self.overrides_path)
        self._cache: dict[tuple[str, str | None], _Rates | _Exact | None] = {}
        self._genai: Any = None  # the genai_prices module, once imported; False if it is not installed
        self._genai_source = "genai-prices"

    # -- public API -------------------------------------------------------------------------------------

    def cost(self, model: str | None, provider: str | None, usage: Usage) -> Cost:
        """USD cost of `usage` on `model` as served by `provider`; Cost(None, "unknown") if no price is known."""
        usd, source = self.cost_tokens(
            model, provider, usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.reasoning_tokens
        )
        return UNKNOWN if usd is None else Cost(usd, source)

    def cost_tokens(
        self,
        model: str | None,
        provider: str | None,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int = 0,
        reasoning_tokens: int = 0,
    ) -> tuple[float | None, str]:
        """cost() without building a Usage: (usd or None, source). For loops over millions of records."""
        if not model:
            return None, "unknown"
        key = (model, provider)
        try:
            price = self._cache[key]
        except KeyError:
            price = self._cache[key] = self._resolve(model, provider, depth=0)
        if price is None:
            return None, "unknown"
        if price.__class__ is _Rates and price.expires is not None and time.time() >= price.expires:
            price = self._cache[key] = self._resolve(model, provider, depth=0)
            if price is None:
                return None, "unknown"
        usd = price.usd(
            _count(prompt_tokens), _count(completion_tokens), _count(cached_tokens), _count(reasoning_tokens)
        )
        return (usd, price.source) if usd is not None else (None, "unknown")

    def warm(self, pairs: Any) -> None:
        """Resolve (model, provider) pairs now, e.g. every configured endpoint at startup, so the first
        request does not pay for loading genai-prices' data (about 0.2 s)."""
        for model, provider in pairs:
            self.cost_tokens(model, provider, 0, 0)

    def knows(self, model: str | None, provider: str | None = None) -> bool:
        """True if a price is known for this model (from pricing.yaml or genai-prices)."""
        return self.cost_tokens(model, provider, 1, 1)[0] is not None

    def describe(self, model: str | None, provider: str | None = None) -> str:
        """A one-line price for people, e.g. "$0.15 in / $0.075 cached / $0.6 out per 1M tokens (genai-prices 0.2.3)"."""
        if not self.knows(model, provider):
            return "unknown price"
        price = self._cache[(model, provider)]  # type: ignore[index]
        if isinstance(price, _Exact):
            return f"tiered or time-dependent price ({price.source})"
        assert price is not None
        parts = [f"${_fmt_rate(price.input)} in"]
        if price.cached_input != price.input:
            parts.append(f"${_fmt_rate(price.cached_input)} cached")
        parts.append(f"${_fmt_rate(price.output)} out")
        if price.reasoning != price.output:
            parts.append(f"${_fmt_rate(price.reasoning)} reasoning")
        return " / ".join(parts) + f" per 1M tokens ({price.source})"

    # -- resolution -------------------------------------------------------------------------------------

    def _resolve(self, model: str, provider: str | None, depth: int) -> _Rates | _Exact | None:
        if depth > 5:
            log.error("pricing.yaml: %r refers to itself through `model:`; its price is unknown", model)
            return None
        name = model.strip().lower()
        prov = provider.strip().lower() if provider else None
        entry, entry_provider = self._entry(name, prov)
        if entry is not None and _is_complete(entry):
            return self._from_entry(entry, entry_provider, None, depth)
        found = self._from_genai_prices(name, prov)
        if found is None:
            if entry is not None:
                log.warning(
                    "pricing.yaml: %s adjusts the genai-prices price of %r, but genai-prices does not know it; "
                    "give input_mtok and output_mtok",
                    entry.get("_where", name),
                    model,
                )
            return None
        price, gp_model_id = found
        if entry is None and gp_model_id != name:
            # "gpt-4o-mini-2024-07-18" as answered, "gpt-4o-mini" in pricing.yaml: the entry still applies.
            entry, entry_provider = self._entry(gp_model_id, prov, deployments=False)
        if entry is None:
            return price
        return self._from_entry(entry, entry_provider, price, depth)

    def _entry(self, name: str, prov: str | None, deployments: bool = True) -> tuple[dict[str, Any] | None, str | None]:
        """The pricing.yaml entry for a model name, and the provider its `model:` is looked up under."""
        entry = self._models.get(f"{prov}/{name}") if prov else None
        if entry is None:
            entry = self._models.get(name)
        if entry is None and deployments and name in self._deployments:
            return self._deployments[name], "azure"
        return entry, prov

    def _from_entry(
        self, entry: dict[str, Any], default_provider: str | None, same_model: _Rates | _Exact | None, depth: int
    ) -> _Rates | _Exact | None:
        """Apply a pricing.yaml entry to its base price: its own prices, another model's, or this model's own."""
        multiplier = float(entry.get("multiplier", 1.0))
        base = same_model
        if "model" in entry:
            base = self._resolve(str(entry["model"]), entry.get("provider") or default_provider, depth + 1)
            if base is None:
                log.warning("pricing.yaml: %s: model %r has no known price", entry.get("_where"), entry["model"])
                return None
        elif _is_complete(entry):
            base = None
        has_prices = any(k in entry for k in PRICE_KEYS)
        if isinstance(base, _Exact):
            if not has_prices:
                return _Exact(base.provider, base.model, base.multiplier * multiplier, _via_yaml(base.source))
            log.warning(
                "pricing.yaml: %s: %s has tiered prices; per-token overrides apply to its base tier",
                entry.get("_where"),
                base.model.id,
            )
            base = self._probe(base.provider, base.model, base.source)
            if base is None:
                return None
        if base is None:  # a price list of its own: input_mtok and output_mtok are present (checked on load)
            rates = _Rates(
                float(entry["input_mtok"]) / _MTOK,
                float(entry.get("cached_input_mtok", entry["input_mtok"])) / _MTOK,
                float(entry["output_mtok"]) / _MTOK,
                float(entry.get("reasoning_mtok", entry["output_mtok"])) / _MTOK,
                0.0,
                "pricing.yaml",
            )
        else:
            inp = _override(entry, "input_mtok", base.input)
            out = _override(entry, "output_mtok", base.output)
            # Cached and reasoning tokens without a price of their own follow the (overridden) input / output.
            rates = _Rates(
                inp,
                _override(entry, "cached_input_mtok", inp if base.cached_input == base.input else base.cached_input),
                out,
                _override(entry, "reasoning_mtok", out if base.reasoning == base.output else base.reasoning),
                base.per_request,
                "pricing.yaml" if has_prices else _via_yaml(base.source),
                base.expires,
            )
        return rates.scaled(multiplier, rates.source) if multiplier != 1.0 else rates

    def _genai_prices(self) -> Any:
        if self._genai is None:
            try:
                import genai_prices
                from genai_prices import data_snapshot
            except ImportError:
                log.warning(
                    "genai-prices is not installed: only pricing.yaml prices are known (pip install genai-prices)"
                )
                self._genai = False
            else:
                self._genai = data_snapshot
                self._genai_source = f"genai-prices {genai_prices.__version__}"
        return self._genai or None

    def _from_genai_prices(self, model: str, provider: str | None) -> tuple[_Rates | _Exact | None, str] | None:
        """(price, genai-prices model id) for a public model, None if genai-prices does not know it."""
        if provider in SELF_HOSTED_PROVIDERS:
            return None
        data_snapshot = self._genai_prices()
        if data_snapshot is None:
            return None
        snapshot = data_snapshot.get_snapshot()
        provider_id = PROVIDER_ALIASES.get(provider, provider) if provider else None
        if provider_id and provider_id != "litellm":
            try:
                snapshot.find_provider(None, provider_id, None)
            except LookupError:
                # A provider genai-prices does not list: match the model name alone. A provider it does list
                # but without this model stays unknown rather than borrowing another provider's price.
                provider_id = None
        try:
            gp_provider, gp_model = snapshot.find_provider_model(model, None, provider_id, None)
        except LookupError:
            return None
        now = datetime.now(timezone.utc)
        linear, expires = _linear_until(gp_model, now)
        if linear:
            rates = self._probe(gp_provider, gp_model, self._genai_source, now, expires)
            return (rates, gp_model.id) if rates is not None else None
        return _Exact(gp_provider, gp_model, 1.0, self._genai_source), gp_model.id

    def _probe(
        self, gp_provider: Any, gp_model: Any, source: str, now: datetime | None = None, expires: float | None = None
    ) -> _Rates | None:
        """Per-token rates of a linear genai-prices model, read back from genai-prices' own arithmetic."""

        def total(**tokens: int) -> Decimal:
            calc = gp_model.calc_price(_genai_usage(**tokens), gp_provider, genai_request_timestamp=now)
            return calc.total_price

        now = now or datetime.now(timezone.utc)
        m = _MTOK
        try:
            base = total()
            return _Rates(
                float((total(prompt=m) - base) / m),
                float((total(prompt=m, cached=m) - base) / m),
                float((total(completion=m) - base) / m),
                float((total(completion=m, reasoning=m) - base) / m),
                float(base),
                source,
                expires,
            )
        except (ValueError, ArithmeticError) as e:
            log.warning("genai-prices cannot price %s by token counts (%s); its price is unknown", gp_model.id, e)
            return None


def _genai_usage(prompt: int = 0, completion: int = 0, cached: int = 0, reasoning: int = 0) -> Any:
    from genai_prices import Usage as GenaiUsage

    return GenaiUsage(
        input_tokens=prompt, cache_read_tokens=cached, output_tokens=completion, output_reasoning_tokens=reasoning
    )


def _linear_until(gp_model: Any, now: datetime) -> tuple[bool, float | None]:
    """(True, expiry) if the model's price now is a fixed price per token, valid until expiry (None: for good).

    Not linear: tiered prices (the rate depends on the request's size) and time-of-day prices.
    Prices that change on a date are linear until the next change, when the Pricer resolves them again.
    """
    from genai_prices.types import ModelPrice, StartDateConstraint, TieredPrices

    prices = gp_model.prices
    if isinstance(prices, ModelPrice):
        return not any(isinstance(v, TieredPrices) for v in vars(prices).values()), None
    constraints = [cp.constraint for cp in prices if cp.constraint is not None]
    if not all(isinstance(c, StartDateConstraint) for c in constraints):
        return False, None
    if any(isinstance(v, TieredPrices) for v in vars(gp_model.get_prices(now)).values()):
        return False, None
    upcoming = [c.start_date for c in constraints if c.start_date > now.date()]
    if not upcoming:
        return True, None
    change = datetime.combine(min(upcoming), datetime.min.time(), tzinfo=timezone.utc)
    return True, change.timestamp()


def _count(value: Any) -> int:
    """A token count from a record: None, negative, bool or junk count as 0."""
    if type(value) is int:
        return value if value > 0 else 0
    try:
        n = int(value) if value is not None and not isinstance(value, bool) else 0
    except (TypeError, ValueError, OverflowError):
        return 0
    return n if n > 0 else 0


def _is_complete(entry: dict[str, Any]) -> bool:
    """An entry that is a price list of its own, or names the model to price as: no genai-prices base needed."""
    return "model" in entry or ("input_mtok" in entry and "output_mtok" in entry)


def _override(entry: dict[str, Any], key: str, default: float) -> float:
    return float(entry[key]) / _MTOK if key in entry else default


def _via_yaml(source: str) -> str:
    return source if source.endswith("via pricing.yaml") or source == "pricing.yaml" else f"{source} via pricing.yaml"


def _fmt_rate(per_token: float) -> str:
    return f"{per_token * _MTOK:.6g}"


# -- pricing.yaml ---------------------------------------------------------------------------------------


def load_overrides(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Read and check pricing.yaml: ({model key: entry}, {deployment name: entry}), keys lower-cased."""
    try:
        import yaml
    except ImportError as e:  # pragma: no cover - pyyaml is in requirements.txt
        raise PricingFileError(f"{path}: reading it needs PyYAML — pip install pyyaml") from e
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise PricingFileError(f"{path}: cannot read it ({e.strerror or e})") from e
    except yaml.YAMLError as e:
        raise PricingFileError(f"{path}: not valid YAML ({_one_line(e)})") from e
    if doc is None:
        return {}, {}
    if not isinstance(doc, dict):
        raise PricingFileError(f"{path}: expected a mapping with `models:` and/or `deployments:` at the top")
    unknown = set(doc) - {"version", "models", "deployments"}
    if unknown:
        raise PricingFileError(
            f"{path}: unknown top-level key(s) {', '.join(sorted(map(str, unknown)))} — allowed: models, deployments"
        )
    return _check_section(path, doc, "models"), _check_section(path, doc, "deployments")


def _check_section(path: Path, doc: dict[str, Any], section: str) -> dict[str, dict[str, Any]]:
    raw = doc.get(section) or {}
    if not isinstance(raw, dict):
        raise PricingFileError(f"{path}: `{section}:` must map names to prices or to a model name")
    checked: dict[str, dict[str, Any]] = {}
    for name, entry in raw.items():
        where = f"{path}: {section}.{name}"
        if isinstance(entry, str):
            entry = {"model": entry}
        if not isinstance(entry, dict):
            raise PricingFileError(f"{where}: expected a model name or a mapping of prices")
        bad = set(entry) - ENTRY_KEYS
        if bad:
            raise PricingFileError(
                f"{where}: unknown key(s) {', '.join(sorted(map(str, bad)))} — allowed: {', '.join(sorted(ENTRY_KEYS))}"
            )
        for key in (*PRICE_KEYS, "multiplier"):
            if key in entry:
                value = entry[key]
                if (
                    isinstance(value, bool)
                    or not isinstance(value, (int, float))
                    or not math.isfinite(value)
                    or value < 0
                ):
                    raise PricingFileError(f"{where}.{key}: expected a number ≥ 0 (USD per 1M tokens), got {value!r}")
        if "model" in entry and (not isinstance(entry["model"], str) or not entry["model"].strip()):
            raise PricingFileError(f"{where}.model: expected a model name")
        if not any(k in entry for k in (*PRICE_KEYS, "model", "multiplier")):
            raise PricingFileError(
                f"{where}: give input_mtok and output_mtok (USD per 1M tokens), or `model: <name>` to price it "
                "as another model, or `multiplier:` to scale its genai-prices price"
            )
        checked[str(name).strip().lower()] = {**entry, "_where": f"{section}.{name}"}
    return checked


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())
