"""Usage records as units: the record format, and tokens read from provider answers and streams."""

from __future__ import annotations

import json

import pytest

from gateway_kit.cli import costs
from gateway_kit.pricing import Usage
from gateway_kit.usage import (
    FIELD_TYPES,
    NULLABLE,
    RECORD_FIELDS,
    TOKEN_FIELDS,
    StreamUsage,
    UsageRecord,
    model_from_body,
    token_fields,
    usage_from_anthropic,
    usage_from_body,
    usage_from_object,
    usage_from_openai,
    utc_now_iso,
)

DAY1 = 1795341600.0  # 2026-11-22T10:00:00Z


def record(n: int = 0, **fields) -> UsageRecord:
    base = dict(
        ts=utc_now_iso(DAY1 + n),
        request_id=f"req-{n}",
        route="/gateway/chat/invocations",
        endpoint="chat",
        provider="openai",
        model="gpt-4o-mini",
        status=200,
        latency_ms=12.5,
        prompt_tokens=10,
        completion_tokens=5,
        total_tokens=15,
        replica="r1",
    )
    base.update(fields)
    return UsageRecord(**base)


# -- the record ----------------------------------------------------------------------------------------------


def test_a_record_is_one_tagged_json_line_with_every_field():
    line = record(cost_usd=0.000123, price_source="genai-prices 0.2.3").to_json()
    assert "\n" not in line
    assert line.startswith('{"type":"usage","v":1,"ts":"2026-11-22T10:00:00.000Z","request_id":"req-0",')
    data = json.loads(line)
    assert list(data) == ["type", "v", *RECORD_FIELDS]
    assert set(RECORD_FIELDS) == {
        "ts",
        "request_id",
        "route",
        "endpoint",
        "provider",
        "model",
        "status",
        "latency_ms",
        "ttft_ms",
        "stream",
        "partial",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cached_tokens",
        "reasoning_tokens",
        "client",
        "replica",
        "cost_usd",
        "price_source",
        "served_by",
        "fallback_reason",
        "error",
        "cache",
        "saved_usd",
        "api",
        "trace_id",
        "config_hash",
    }


def test_a_record_round_trips_and_ignores_fields_it_does_not_know():
    r = record(stream=True, partial=True, ttft_ms=80.0, client="team-a", error="client_disconnected")
    data = json.loads(r.to_json())
    assert UsageRecord.from_dict(data) == r
    assert UsageRecord.from_dict({**data, "added_in_a_later_version": 1}) == r


def test_from_dict_refuses_what_is_not_a_usage_record():
    with pytest.raises(ValueError, match="not a usage record"):
        UsageRecord.from_dict({"type": "access", "ts": "x"})
    with pytest.raises(ValueError):
        UsageRecord.from_dict(["not", "a", "dict"])  # type: ignore[arg-type]


def test_the_model_says_the_json_type_of_every_field_as_written():
    full = record(ttft_ms=80.0, stream=True, client="team-a", cost_usd=0.5, served_by="azure-chat", error="x")
    for r in (record(request_id=None, endpoint=None, provider=None, model=None), full):
        for name, value in json.loads(r.to_json()).items():
            if name in ("type", "v"):
                continue
            if value is None:
                assert name in NULLABLE, name
            else:
                assert type(value) is FIELD_TYPES[name] or (FIELD_TYPES[name] is float and type(value) is int), name
    assert TOKEN_FIELDS == ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens", "reasoning_tokens")


@pytest.mark.parametrize("prefix", ["", "2026-11-22T10:00:00.123456789Z ", "mlflow-gateway-1  | "])
def test_analyze_costs_reads_a_written_record_the_same_by_its_pattern_and_by_json(prefix):
    r = record(stream=True, partial=True, cached_tokens=4, reasoning_tokens=2, client="team-a", cost_usd=0.25)
    text = r.to_json()
    (fast,) = costs._FAST.findall(f"{prefix}{text}\n")
    assert fast == costs._as_groups(prefix, text, json.loads(text))
    by_name = dict(zip(costs.GROUPS, fast))
    assert (by_name["request_id"], by_name["client"], by_name["partial"], by_name["cached_tokens"]) == (
        "req-0",
        "team-a",
        "true",
        "4",
    )


def test_content_is_absent_unless_set_and_nan_never_reaches_json():
    assert "content" not in json.loads(record().to_json())
    assert json.loads(record(content={"prompt": "hi"}).to_json())["content"] == {"prompt": "hi"}
    assert json.loads(record(cost_usd=float("nan")).to_json())["cost_usd"] is None


def test_utc_now_iso_sorts_as_text():
    assert utc_now_iso(DAY1 + 0.5) == "2026-11-22T10:00:00.500Z"
    assert sorted(utc_now_iso(DAY1 + x) for x in (5, 0.1, 3600)) == [utc_now_iso(DAY1 + x) for x in (0.1, 5, 3600)]


# -- tokens from responses ---------------------------------------------------------------------------------


def test_openai_chat_usage_with_cached_and_reasoning_tokens():
    body = {
        "model": "o3-mini-2025-01-31",
        "usage": {
            "prompt_tokens": 1200,
            "completion_tokens": 900,
            "total_tokens": 2100,
            "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 640},
        },
    }
    assert usage_from_openai(body) == Usage(1200, 900, 1024, 640)
    assert usage_from_body(body) == Usage(1200, 900, 1024, 640)
    assert model_from_body(body) == "o3-mini-2025-01-31"


def test_openai_embeddings_and_responses_api_usage():
    assert usage_from_body({"usage": {"prompt_tokens": 8, "total_tokens": 8}}) == Usage(8, 0, 0, 0)
    responses = {
        "object": "response",
        "usage": {
            "input_tokens": 100,
            "output_tokens": 50,
            "input_tokens_details": {"cached_tokens": 64},
            "output_tokens_details": {"reasoning_tokens": 20},
        },
    }
    assert usage_from_body(responses) == Usage(100, 50, 64, 20)


def test_anthropic_usage_adds_cache_reads_and_writes_into_the_prompt():
    body = {
        "type": "message",
        "model": "claude-3-5-haiku-20241022",
        "usage": {
            "input_tokens": 20,
            "cache_read_input_tokens": 1000,
            "cache_creation_input_tokens": 300,
            "output_tokens": 70,
        },
    }
    assert usage_from_anthropic(body) == Usage(1320, 70, 1000, 0)
    assert usage_from_body(body) == Usage(1320, 70, 1000, 0)


def test_a_usage_object_alone_is_read_as_in_its_body():
    openai = {"prompt_tokens": 1200, "completion_tokens": 90, "prompt_tokens_details": {"cached_tokens": 1024}}
    anthropic = {"input_tokens": 20, "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 300}
    responses = {"input_tokens": 100, "output_tokens": 50, "input_tokens_details": {"cached_tokens": 64}}
    for usage in (openai, {**anthropic, "output_tokens": 70}, responses):
        assert usage_from_object(usage) == usage_from_body({"usage": usage})
    assert usage_from_object({**anthropic, "output_tokens": 70}) == Usage(1320, 70, 1000, 0)
    assert usage_from_object(None) is None and usage_from_object({"model": "x"}) is None


def test_token_fields_are_the_records_and_none_without_usage():
    assert token_fields(Usage(1320, 70, 1000, 0)) == {
        "prompt_tokens": 1320,
        "completion_tokens": 70,
        "total_tokens": 1390,
        "cached_tokens": 1000,
        "reasoning_tokens": 0,
    }
    assert token_fields(None) == dict.fromkeys(TOKEN_FIELDS)


def test_no_usage_is_none_not_zero():
    assert usage_from_body({"choices": []}) is None
    assert usage_from_body({"usage": None}) is None
    assert usage_from_body("not a dict") is None


def sse(*events: dict | str) -> bytes:
    out = []
    for e in events:
        out.append(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n")
    return "".join(out).encode()


def feed_in_pieces(stream: StreamUsage, data: bytes, size: int) -> None:
    for i in range(0, len(data), size):
        stream.feed_bytes(data[i : i + size])
    stream.close()


@pytest.mark.parametrize("piece", [1, 7, 64, 10_000])
def test_an_openai_stream_gives_its_final_usage_chunk_however_it_is_split(piece):
    chunk = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "delta": {"content": "hi"}}],
        "usage": None,
    }
    data = sse(
        chunk,
        chunk,
        {
            "id": "c1",
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [],
            "usage": {
                "prompt_tokens": 9,
                "completion_tokens": 2,
                "total_tokens": 11,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
        },
        "[DONE]",
    )
    s = StreamUsage()
    feed_in_pieces(s, data, piece)
    assert s.model == "gpt-4o-mini-2024-07-18"
    assert s.usage == Usage(9, 2, 0, 0)


def test_an_anthropic_stream_takes_input_from_message_start_and_output_from_message_delta():
    data = (
        b"event: message_start\n"
        + sse(
            {
                "type": "message_start",
                "message": {
                    "model": "claude-3-5-haiku-latest",
                    "usage": {"input_tokens": 12, "cache_read_input_tokens": 100, "output_tokens": 1},
                },
            }
        )
        + b"event: content_block_delta\n"
        + sse({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hello"}})
        + b"event: message_delta\n"
        + sse({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 42}})
    )
    s = StreamUsage()
    feed_in_pieces(s, data, 5)
    assert s.model == "claude-3-5-haiku-latest"
    assert s.usage == Usage(112, 42, 100, 0)


def test_a_stream_cut_before_its_usage_has_no_usage_and_never_raises():
    s = StreamUsage()
    s.feed_bytes(b'data: {"model": "gpt-4o-mini", "choices": [{"delta": {"content": "par')
    s.feed_bytes(b"\x00\xff garbage")
    s.close()
    assert s.usage is None and s.model is None


@pytest.mark.parametrize(
    "written_before",
    [
        (),
        ("config_hash",),
        ("config_hash", "trace_id"),
        ("config_hash", "trace_id", "api"),
        ("config_hash", "trace_id", "api", "saved_usd", "cache"),
    ],  # before reload, traces, dialects, cache
)
def test_analyze_costs_reads_a_record_written_before_its_last_fields_at_full_speed(written_before):
    """An older writer's record lacks the fields added since (null by default): the generated pattern still takes
    it, with the same groups json.loads gives."""
    from gateway_kit.cli import costs

    full = record(
        cached_tokens=2,
        reasoning_tokens=1,
        cost_usd=0.5,
        cache="hit",
        saved_usd=0.2,
        trace_id="ab" * 16,
        config_hash="3b9f0c2a7e41",
    )
    full = json.loads(full.to_json())
    old = {k: v for k, v in full.items() if k not in written_before}
    text = json.dumps(old, separators=(",", ":"))
    (groups,) = costs._FAST.findall(text + "\n")
    assert groups == costs._as_groups("", text, old)
