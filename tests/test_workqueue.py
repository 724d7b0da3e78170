"""The controller's work queue: keys collapse, one worker per key, one wake-up per key, backoff."""

from __future__ import annotations

import asyncio

from certkeeper.kube.workqueue import RETRY_S, WorkQueue


def test_a_key_queued_twice_is_worked_once_and_again_if_queued_while_held() -> None:
    async def scenario() -> list[str]:
        queue = WorkQueue()
        queue.add("a")
        queue.add("a")
        queue.add("b")
        taken = [await queue.get(), await queue.get()]
        assert len(queue) == 0
        queue.add("a")  # while a worker holds it: not handed to a second worker
        assert len(queue) == 0
        queue.done("a")
        taken.append(await asyncio.wait_for(queue.get(), 1))
        queue.done("a")
        queue.done("b")
        return taken

    assert asyncio.run(scenario()) == ["a", "b", "a"]


def test_each_key_has_one_wake_up_and_a_later_one_replaces_it() -> None:
    async def scenario() -> list[str]:
        queue = WorkQueue()
        timers = asyncio.create_task(queue.run_timers())
        queue.add_after("late", 0.2)
        queue.add_after("soon", 30.0)
        queue.add_after("soon", 0.05)  # replaces the 30 s wake-up
        queue.add_after("gone", 0.05)
        queue.cancel("gone")
        order = [await asyncio.wait_for(queue.get(), 2), await asyncio.wait_for(queue.get(), 2)]
        assert queue.timers == 0
        await asyncio.sleep(0.2)
        assert len(queue) == 0, "a cancelled or replaced wake-up fired"
        timers.cancel()
        return order

    assert asyncio.run(scenario()) == ["soon", "late"]


def test_failures_back_off_more_each_time_until_forgotten() -> None:
    async def scenario() -> list[float]:
        queue = WorkQueue()
        delays = [queue.retry("a") for _ in range(len(RETRY_S) + 2)]
        queue.forget("a")
        delays.append(queue.retry("a"))
        return delays

    delays = asyncio.run(scenario())
    assert delays[: len(RETRY_S)] == list(RETRY_S)
    assert delays[len(RETRY_S)] == RETRY_S[-1]
    assert delays[-1] == RETRY_S[0]
