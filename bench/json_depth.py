"""What the kit's JSON depth limit (request.parse_json, MAX_JSON_DEPTH) costs per request body, side by side.

    .venv/bin/python bench/json_depth.py              # every body, 5 interleaved rounds
    .venv/bin/python bench/json_depth.py --rounds 9

Per body, microseconds per call (the median round) of what a fast route does with a body before MLflow's
handler runs: parse it, then validate it into MLflow's request model. Before: json.loads; now: parse_json
(json.loads, plus two byte counts, plus the level-by-level walk when the body holds more than 128 brackets).
The ratio is now / before. The bodies are what clients send: a one-line chat, a long conversation and a
request with tools (both over 128 brackets, so they pay for the walk), embeddings batches of text and of
token ids.
"""

from __future__ import annotations

import argparse
import json
import statistics
import timeit

from gateway_kit.request import parse_json
from lib import markdown_table

TOOL = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "units": {"type": "string", "enum": ["C", "F"]},
            },
            "required": ["city"],
        },
    },
}
BODIES = {
    "chat, 1 message": {"model": "chat", "messages": [{"role": "user", "content": "Hello there"}]},
    "conversation, 200 messages": {
        "model": "chat",
        "messages": [
            {"role": "user" if i % 2 else "assistant", "content": f"message number {i} " * 10} for i in range(200)
        ],
    },
    "chat with 20 tools": {
        "model": "chat",
        "messages": [{"role": "user", "content": "Weather?"}],
        "tools": [TOOL] * 20,
    },
    "embeddings, 500 texts": {"model": "embeddings", "input": [f"sentence {i} " * 20 for i in range(500)]},
    "embeddings, 20 x 500 token ids": {"model": "embeddings", "input": [list(range(500)) for _ in range(20)]},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; each cell is the median")
    args = parser.parse_args(argv)
    from mlflow.gateway.schemas import chat, embeddings

    rows = []
    for name, value in BODIES.items():
        body = json.dumps(value).encode()
        assert parse_json(body) == json.loads(body)
        model = (chat if "messages" in value else embeddings).RequestPayload
        calls = max(20, 200_000 // len(body))
        before, after = [], []
        for _ in range(args.rounds):  # interleaved: machine noise hits both alike
            before.append(timeit.timeit(lambda: model.model_validate(json.loads(body)), number=calls) / calls * 1e6)
            after.append(timeit.timeit(lambda: model.model_validate(parse_json(body)), number=calls) / calls * 1e6)
        b, a = statistics.median(before), statistics.median(after)
        brackets = body.count(b"[") + body.count(b"{")
        rows.append([name, f"{len(body):,}", str(brackets), f"{b:.1f}", f"{a:.1f}", f"{a / b:.2f}"])
    print(markdown_table(["body", "bytes", "brackets", "before µs", "now µs", "ratio"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
