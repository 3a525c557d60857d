"""LoopThread: synchronous callers drive coroutines on a background loop."""

from __future__ import annotations

import asyncio

import pytest

from harness.loop import LoopThread


def test_run_returns_the_result_and_reraises_errors() -> None:
    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    async def boom() -> None:
        raise KeyError("gone")

    with LoopThread() as loop:
        assert loop.run(answer()) == 42
        with pytest.raises(KeyError, match="gone"):
            loop.run(boom())


def test_an_inner_timeout_keeps_its_own_message() -> None:
    async def inner() -> None:
        await asyncio.wait_for(asyncio.sleep(10), 0.01)

    with LoopThread() as loop, pytest.raises(TimeoutError) as raised:
        loop.run(inner(), timeout=5)
    assert "took longer than" not in str(raised.value)


def test_a_coroutine_over_its_time_is_cancelled_and_named() -> None:
    cancelled = []

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    with LoopThread() as loop:
        with pytest.raises(TimeoutError, match=r"slow took longer than 0\.05 s"):
            loop.run(slow(), timeout=0.05)
        loop.run(asyncio.sleep(0.05))
    assert cancelled == [True]
