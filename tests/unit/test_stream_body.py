"""A stream's body (gateway_kit.app.stream_body) as the client's socket sees it: which body messages (one write
each) carry MLflow's SSE events. A scripted async generator stands in for MLflow's events; each test runs on
its own event loop (asyncio.run) and checks that it left no task or error behind."""

from __future__ import annotations

import asyncio
import gc

import pytest

from gateway_kit.app import SSE_DONE, stream_body

BOUND_S = 10  # a bound on a wait that would otherwise hang the test if the body held an event back


def event(i: int) -> str:
    return f'data: {{"n": {i}}}\n\n'


def run(test) -> None:
    """Run `test()` on a fresh loop and fail if the loop reported anything: a task destroyed while pending, an
    exception never retrieved."""
    reported: list[dict] = []

    async def main():
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: reported.append(context))
        await test()
        gc.collect()
        await asyncio.sleep(0)
        assert asyncio.all_tasks() == {asyncio.current_task()}, "a task outlived the stream"

    asyncio.run(main())
    assert reported == []


class Script:
    """MLflow's events for one stream: `ready` events at once, then each of `later` when its gate opens, then
    an optional exception; records whether it was closed."""

    def __init__(self, ready: int = 0, later: int = 0, error: Exception | None = None) -> None:
        self.ready, self.later, self.error = ready, later, error
        self.gates = [asyncio.Event() for _ in range(later)]
        self.closed = False

    async def events(self):
        try:
            for i in range(self.ready):
                yield event(i)
            for i, gate in enumerate(self.gates):
                await gate.wait()
                yield event(self.ready + i)
            if self.error is not None:
                raise self.error
        finally:
            self.closed = True


async def messages(body) -> list[str]:
    return [message async for message in body]


def test_events_ready_at_once_go_out_in_one_message_then_done():
    async def test():
        script = Script(ready=5)
        assert await messages(stream_body(script.events())) == ["".join(map(event, range(5))), SSE_DONE]
        assert script.closed

    run(test)


def test_an_event_that_comes_later_goes_out_without_waiting_for_the_next():
    async def test():
        script = Script(ready=2, later=2)
        body = stream_body(script.events())
        assert await asyncio.wait_for(anext(body), BOUND_S) == event(0) + event(1)
        script.gates[0].set()  # the second gate stays shut: the body must not wait for it
        assert await asyncio.wait_for(anext(body), BOUND_S) == event(2)
        script.gates[1].set()
        assert await messages(body) == [event(3), SSE_DONE]

    run(test)


def test_a_failure_after_some_events_sends_them_then_raises_without_done():
    async def test():
        script = Script(ready=3, error=ValueError("provider broke"))
        body = stream_body(script.events())
        assert await anext(body) == event(0) + event(1) + event(2)
        with pytest.raises(ValueError, match="provider broke"):
            await anext(body)
        assert script.closed

    run(test)


def test_a_failure_after_an_event_that_came_later_is_raised_in_its_turn():
    async def test():
        script = Script(ready=1, later=1, error=ConnectionResetError("reset"))
        body = stream_body(script.events())
        assert await anext(body) == event(0)
        script.gates[0].set()
        assert await anext(body) == event(1)
        with pytest.raises(ConnectionResetError):
            await anext(body)

    run(test)


def test_an_empty_stream_sends_nothing():
    async def test():
        script = Script()
        assert await messages(stream_body(script.events())) == []
        assert script.closed

    run(test)


def test_a_stream_that_fails_before_its_first_event_sends_nothing_and_raises():
    async def test():
        body = stream_body(Script(error=TimeoutError()).events())
        with pytest.raises(TimeoutError):
            await anext(body)

    run(test)


def test_a_body_closed_early_stops_reading_the_provider_and_closes_its_events():
    async def test():
        script = Script(ready=1, later=1)  # the second event never comes: the client leaves while it waits
        body = stream_body(script.events())
        assert await anext(body) == event(0)
        await body.aclose()
        assert script.closed

    run(test)


def test_a_body_cancelled_while_it_waits_closes_the_events():
    async def test():
        script = Script(later=1)
        body = stream_body(script.events())
        waiting = asyncio.ensure_future(anext(body))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert script.closed

    run(test)


def test_a_stream_longer_than_the_queue_arrives_whole_and_in_order():
    async def test():
        script = Script(ready=500)
        sent = await messages(stream_body(script.events()))
        assert "".join(sent) == "".join(map(event, range(500))) + SSE_DONE
        assert sent[-1] == SSE_DONE

    run(test)
