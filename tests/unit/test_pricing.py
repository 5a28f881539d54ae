"""gateway_kit.pricing: every price checked against genai-prices called directly, pricing.yaml, unknown models."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
from dataclasses import FrozenInstanceError
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import genai_prices
import pytest

from gateway_kit import pricing
from gateway_kit.pricing import Cost, Pricer, PricingFileError, Usage

REPO = Path(__file__).resolve().parents[2]


def genai_usd(
    model: str, provider: str | None, prompt: int, completion: int, cached: int = 0, reasoning: int = 0
) -> float:
    """The independent answer: genai-prices' own calc_price, no kit code involved."""
    usage = genai_prices.Usage(
        input_tokens=prompt, cache_read_tokens=cached, output_tokens=completion, output_reasoning_tokens=reasoning
    )
    calc = genai_prices.calc_price(usage, model, provider_id=provider)
    return float(calc.total_price)


@pytest.fixture
def no_pricing_file(tmp_path, monkeypatch):
    """Run where no pricing.yaml is found, so only genai-prices prices."""
    monkeypatch.delenv("GATEWAY_PRICING_FILE", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(pricing, "DEFAULT_PRICING_FILES", (tmp_path / "pricing.yaml",))
    return Pricer()


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pricing.yaml"
    path.write_text(textwrap.dedent(text))
    return path


# -- the API other modules depend on -----------------------------------------------------------------------


def test_the_shared_api_keeps_its_shape():
    assert [p.name for p in inspect.signature(Pricer.cost).parameters.values()] == [
        "self",
        "model",
        "provider",
        "usage",
    ]
    assert [p.name for p in inspect.signature(Pricer.__init__).parameters.values()] == ["self", "overrides_path"]
    assert Usage() == Usage(prompt_tokens=0, completion_tokens=0, cached_tokens=0, reasoning_tokens=0)
    with pytest.raises(FrozenInstanceError):
        Usage().prompt_tokens = 1  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        Cost(1.0, "x").usd = 2.0  # type: ignore[misc]


def test_importing_pricing_usage_and_the_clis_never_imports_mlflow():
    code = (
        "import sys, gateway_kit.pricing, gateway_kit.usage, gateway_kit.cli.costs, gateway_kit.cli.evaluate, "
        "gateway_kit.keys; print('mlflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_prices_work_with_the_network_cut_off():
    """genai-prices ships its price list; the kit never starts its updater. Any socket use fails here."""
    code = textwrap.dedent("""
        import socket
        def refuse(*a, **k):
            raise OSError("network use is forbidden in this test")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse
        from gateway_kit.pricing import Pricer, Usage
        print(Pricer().cost("gpt-4o-mini", "openai", Usage(1_000_000, 1_000_000)))
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "usd=0.75" in out.stdout and "genai-prices 0.2.3" in out.stdout


# -- genai-prices ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model, provider, prompt, completion, cached, reasoning",
    [
        ("gpt-4o-mini", "openai", 1234, 567, 0, 0),
        ("gpt-4o-mini", "openai", 5000, 300, 4096, 0),  # cached input priced separately
        ("gpt-4o-mini-2024-07-18", "openai", 1000, 1000, 0, 0),  # the dated name the upstream answers with
        ("gpt-4o-mini", "azure", 1000, 1000, 200, 0),
        ("gpt-3.5-turbo-instruct", "openai", 700, 90, 0, 0),
        ("text-embedding-3-small", "openai", 8000, 0, 0, 0),
        ("claude-3-5-haiku-latest", "anthropic", 3000, 500, 2000, 0),
        ("o3-mini", "openai", 2000, 3000, 0, 2500),  # reasoning tokens
        ("gpt-4", None, 10, 20, 0, 0),  # no provider: genai-prices matches the model name
        ("claude-sonnet-4-5", "anthropic", 250_000, 1000, 0, 0),  # tiered: above 200k input tokens
    ],
)
def test_cost_equals_genai_prices_own_calculation(
    no_pricing_file, model, provider, prompt, completion, cached, reasoning
):
    cost = no_pricing_file.cost(model, provider, Usage(prompt, completion, cached, reasoning))
    assert cost.source == f"genai-prices {genai_prices.__version__}"
    assert cost.usd == pytest.approx(genai_usd(model, provider, prompt, completion, cached, reasoning), rel=1e-9)


def test_gpt_4o_mini_costs_15_cents_in_60_cents_out_per_million(no_pricing_file):
    assert no_pricing_file.cost("gpt-4o-mini", "openai", Usage(prompt_tokens=1_000_000)).usd == pytest.approx(0.15)
    assert no_pricing_file.cost("gpt-4o-mini", "openai", Usage(completion_tokens=1_000_000)).usd == pytest.approx(0.60)
    assert no_pricing_file.cost(
        "gpt-4o-mini", "openai", Usage(prompt_tokens=1_000_000, cached_tokens=1_000_000)
    ).usd == pytest.approx(0.075)


def test_a_request_without_tokens_costs_nothing_on_a_known_model(no_pricing_file):
    assert no_pricing_file.cost("gpt-4o-mini", "openai", Usage()) == Cost(
        0.0, f"genai-prices {genai_prices.__version__}"
    )


@pytest.mark.parametrize(
    "model, provider",
    [
        ("my-private-llm", "openai"),
        ("gpt-4o", "anthropic"),  # a provider genai-prices knows, without this model: not borrowed from OpenAI
        ("llama3.1:8b", "ollama"),  # self-hosted: never priced from a public list
        ("gpt-4o-mini", "mlflow-model-serving"),
        (None, "openai"),
        ("", None),
    ],
)
def test_an_unknown_model_is_unknown_never_zero(no_pricing_file, model, provider):
    assert no_pricing_file.cost(model, provider, Usage(100, 100)) == Cost(None, "unknown")


def test_garbage_token_counts_count_as_zero(no_pricing_file):
    cost = no_pricing_file.cost("gpt-4o-mini", "openai", Usage(-5, None, "x", True))  # type: ignore[arg-type]
    assert cost.usd == 0.0


def test_a_cached_count_above_the_prompt_is_capped_not_an_error(no_pricing_file):
    capped = no_pricing_file.cost("gpt-4o-mini", "openai", Usage(100, 0, cached_tokens=500))
    assert capped.usd == pytest.approx(genai_usd("gpt-4o-mini", "openai", 100, 0, cached=100))


def test_each_model_is_looked_up_once_then_served_from_the_cache(no_pricing_file, monkeypatch):
    calls = []
    original = Pricer._from_genai_prices

    def counting(self, model, provider):
        calls.append((model, provider))
        return original(self, model, provider)

    monkeypatch.setattr(Pricer, "_from_genai_prices", counting)
    for n in range(100):
        no_pricing_file.cost("gpt-4o-mini", "openai", Usage(n, n))
        no_pricing_file.cost("nope", "openai", Usage(n, n))
    assert sorted(calls) == [("gpt-4o-mini", "openai"), ("nope", "openai")]


def test_a_dated_price_change_is_picked_up_on_its_date():
    """Prices with a start date are linear until the next change, then resolved again."""
    from genai_prices.types import ConditionalPrice, ModelInfo, ModelPrice, StartDateConstraint, ClauseEquals

    today = datetime.now(timezone.utc)
    tomorrow = today.date() + timedelta(days=1)
    model = ModelInfo(
        id="m",
        match=ClauseEquals(equals="m"),
        prices=[
            ConditionalPrice(prices=ModelPrice(input_mtok=Decimal(1), output_mtok=Decimal(2))),
            ConditionalPrice(
                constraint=StartDateConstraint(start_date=tomorrow),
                prices=ModelPrice(input_mtok=Decimal(3), output_mtok=Decimal(4)),
            ),
        ],
    )
    linear, expires = pricing._linear_until(model, today)
    assert linear
    assert expires == datetime.combine(tomorrow, datetime.min.time(), tzinfo=timezone.utc).timestamp()
    past = ModelInfo(
        id="p",
        match=ClauseEquals(equals="p"),
        prices=[
            ConditionalPrice(
                constraint=StartDateConstraint(start_date=date(2020, 1, 1)),
                prices=ModelPrice(input_mtok=Decimal(3), output_mtok=Decimal(4)),
            ),
        ],
    )
    assert pricing._linear_until(past, today) == (True, None)


def test_describe_gives_the_price_per_million_tokens(no_pricing_file):
    assert no_pricing_file.describe("gpt-4o-mini", "openai") == (
        "$0.15 in / $0.075 cached / $0.6 out per 1M tokens (genai-prices 0.2.3)"
    )
    assert no_pricing_file.describe("nope") == "unknown price"


# -- pricing.yaml ------------------------------------------------------------------------------------------


def test_pricing_yaml_prices_a_self_hosted_model(tmp_path):
    path = write_yaml(
        tmp_path,
        """
        models:
          ollama/llama3.1:8b: {input_mtok: 0.10, cached_input_mtok: 0.05, output_mtok: 0.40, reasoning_mtok: 0.80}
    """,
    )
    cost = Pricer(path).cost("llama3.1:8b", "ollama", Usage(1000, 2000, cached_tokens=400, reasoning_tokens=500))
    expected = (600 * 0.10 + 400 * 0.05 + 1500 * 0.40 + 500 * 0.80) / 1e6
    assert cost == Cost(pytest.approx(expected, rel=1e-12), "pricing.yaml")


def test_a_provider_scoped_entry_applies_to_that_provider_only(tmp_path):
    path = write_yaml(
        tmp_path,
        """
        models:
          anthropic/claude-3-5-haiku-latest: {input_mtok: 0.5, output_mtok: 2}
    """,
    )
    p = Pricer(path)
    assert p.cost("claude-3-5-haiku-latest", "anthropic", Usage(1_000_000)).usd == pytest.approx(0.5)
    assert p.cost("claude-3-5-haiku-latest", "aws", Usage(1_000_000)).source != "pricing.yaml"


def test_a_negotiated_multiplier_applies_to_every_dated_version(tmp_path):
    path = write_yaml(
        tmp_path,
        """
        models:
          gpt-4o-mini: {multiplier: 0.8}
    """,
    )
    p = Pricer(path)
    for name in ("gpt-4o-mini", "gpt-4o-mini-2024-07-18", "GPT-4o-mini"):
        cost = p.cost(name, "openai", Usage(3000, 1000, cached_tokens=1000))
        assert cost.usd == pytest.approx(0.8 * genai_usd("gpt-4o-mini", "openai", 3000, 1000, cached=1000))
        assert cost.source == "genai-prices 0.2.3 via pricing.yaml"


def test_azure_deployment_names_map_to_the_model_they_run(tmp_path):
    path = write_yaml(
        tmp_path,
        """
        deployments:
          chat-prod-eastus: gpt-4o-mini
          finance-gpt4o: {model: gpt-4o, input_mtok: 2.0, output_mtok: 8.0}
    """,
    )
    p = Pricer(path)
    mapped = p.cost("chat-prod-eastus", "azure", Usage(10_000, 2_000, cached_tokens=5_000))
    assert mapped.usd == pytest.approx(genai_usd("gpt-4o-mini", "azure", 10_000, 2_000, cached=5_000))
    assert mapped.source == "genai-prices 0.2.3 via pricing.yaml"
    agreed = p.cost("finance-gpt4o", "azure", Usage(1_000_000, 1_000_000))
    assert agreed == Cost(pytest.approx(10.0), "pricing.yaml")


def test_overriding_output_moves_reasoning_when_the_model_has_no_separate_reasoning_price(tmp_path):
    path = write_yaml(
        tmp_path,
        """
        models:
          cheap-o3: {model: o3-mini, output_mtok: 1.0}
    """,
    )
    cost = Pricer(path).cost("cheap-o3", "openai", Usage(0, 1_000_000, reasoning_tokens=500_000))
    assert cost.usd == pytest.approx(1.0)


def test_the_shipped_example_pricing_yaml_loads_and_prices_its_entries():
    p = Pricer(REPO / "pricing.yaml")
    assert p.cost("llama3.1:8b", "ollama", Usage(10, 10)) == Cost(0.0, "pricing.yaml")
    assert p.cost("chat-prod-eastus", "azure", Usage(10, 10)).usd == pytest.approx(
        genai_usd("gpt-4o-mini", "azure", 10, 10)
    )


def test_the_pricing_file_comes_from_the_environment(tmp_path, monkeypatch):
    path = write_yaml(tmp_path, "models:\n  house-model: {input_mtok: 1, output_mtok: 1}\n")
    monkeypatch.setenv("GATEWAY_PRICING_FILE", str(path))
    assert Pricer().cost("house-model", None, Usage(1_000_000)).usd == pytest.approx(1.0)
    monkeypatch.setenv("GATEWAY_PRICING_FILE", str(tmp_path / "missing.yaml"))
    with pytest.raises(PricingFileError, match="missing.yaml .from GATEWAY_PRICING_FILE.: no such file"):
        Pricer()


def test_without_any_pricing_file_only_genai_prices_is_used(no_pricing_file):
    assert no_pricing_file.overrides_path is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("models:\n  m: {input_mtok: -1, output_mtok: 1}\n", r"models\.m\.input_mtok: expected a number ≥ 0"),
        ("models:\n  m: {input: 1, output: 1}\n", r"models\.m: unknown key\(s\) input, output"),
        ("modelz:\n  m: gpt-4o\n", r"unknown top-level key\(s\) modelz"),
        ("models: [gpt-4o]\n", r"`models:` must map names"),
        ("models:\n  m: {model: gpt-4o\n", r"not valid YAML"),
        ("models:\n  m: {}\n", r"models\.m: give input_mtok and output_mtok"),
    ],
)
def test_a_bad_pricing_file_says_which_entry_is_wrong(tmp_path, text, message):
    path = tmp_path / "pricing.yaml"
    path.write_text(text)
    with pytest.raises(PricingFileError, match=message) as e:
        Pricer(path)
    assert str(path) in str(e.value)


def test_an_entry_that_only_adjusts_an_unknown_model_leaves_it_unknown(tmp_path):
    path = write_yaml(tmp_path, "models:\n  no-such-model: {multiplier: 0.5}\n")
    assert Pricer(path).cost("no-such-model", "openai", Usage(10, 10)) == Cost(None, "unknown")


def test_entries_that_refer_to_each_other_in_a_circle_are_unknown(tmp_path):
    path = write_yaml(tmp_path, "models:\n  a: {model: b}\n  b: {model: a}\n")
    assert Pricer(path).cost("a", None, Usage(10, 10)) == Cost(None, "unknown")
