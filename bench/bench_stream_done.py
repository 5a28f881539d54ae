#!/usr/bin/env python3
"""What ending every stream with `data: [DONE]` costs per chunk: MLflow's make_streaming_response as MLflow
ships it against the kit's wrapper (gateway_kit.app.end_streams_with_done), side by side in one process.

    .venv/bin/python bench/bench_stream_done.py        # 200-chunk streams, 300 per round, 9 rounds
    .venv/bin/python bench/bench_stream_done.py --chunks 50 --streams 1000 --rounds 15

Each stream is MLflow's own: an async generator of StreamResponsePayload chunks (pydantic models, as a provider
adapter yields them) turned into SSE by make_streaming_response, and read to the end as Starlette would.
Rounds alternate the two (in turn first and last); the figure is each one's median CPU µs per chunk (the
process's user + system time, which other load on a shared machine does not add to), and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time


def chunk_maker():
    from mlflow.gateway.schemas.chat import StreamChoice, StreamDelta, StreamResponsePayload

    def make(i: int) -> StreamResponsePayload:
        return StreamResponsePayload(
            id="chatcmpl-1",
            created=1,
            model="gpt-4o-mini",
            choices=[StreamChoice(index=0, delta=StreamDelta(content=f"word{i} "))],
        )

    return make


async def read_streams(make_response, make_chunk, chunks: int, streams: int) -> int:
    """Build and read `streams` streams of `chunks` chunks; returns the bytes read (so nothing is optimised away)."""
    total = 0
    for _ in range(streams):

        async def events():
            for i in range(chunks):
                yield make_chunk(i)

        response = await make_response(events())
        async for part in response.body_iterator:
            total += len(part)
    return total


def cpu_us_per_chunk(make_response, make_chunk, chunks: int, streams: int) -> float:
    start = time.process_time()
    asyncio.run(read_streams(make_response, make_chunk, chunks, streams))
    return (time.process_time() - start) * 1e6 / (chunks * streams)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=200, help="chunks per stream (200)")
    parser.add_argument("--streams", type=int, default=300, help="streams per measurement (300)")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds; the median counts (9)")
    args = parser.parse_args(argv)

    import mlflow.gateway.app as gateway_app

    from gateway_kit.app import end_streams_with_done

    stock = gateway_app.make_streaming_response
    end_streams_with_done()
    kit = gateway_app.make_streaming_response
    make_chunk = chunk_maker()
    ends = {name: asyncio.run(read_last(fn, make_chunk)) for name, fn in (("stock", stock), ("kit", kit))}
    figures: dict[str, list[float]] = {"stock": [], "kit": []}
    for r in range(args.rounds):
        order = [("stock", stock), ("kit", kit)] if r % 2 == 0 else [("kit", kit), ("stock", stock)]
        for name, fn in order:
            figures[name].append(cpu_us_per_chunk(fn, make_chunk, args.chunks, args.streams))
    stock_us, kit_us = statistics.median(figures["stock"]), statistics.median(figures["kit"])
    print(f"streams of {args.chunks} chunks, {args.streams} per round, {args.rounds} rounds (median CPU µs per chunk)")
    print(f"  MLflow's make_streaming_response      {stock_us:7.2f} µs   last event {ends['stock']!r}")
    print(f"  the kit's, ending with data: [DONE]   {kit_us:7.2f} µs   last event {ends['kit']!r}")
    print(f"  kit / stock: {kit_us / stock_us:.3f}x")
    return 0


async def read_last(make_response, make_chunk) -> str:
    async def events():
        yield make_chunk(0)

    response = await make_response(events())
    parts = [part async for part in response.body_iterator]
    return parts[-1].strip()


if __name__ == "__main__":
    raise SystemExit(main())
