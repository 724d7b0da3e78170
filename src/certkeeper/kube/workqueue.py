"""One keyed work queue with one timer heap: how every certificate gets its turn.

- A key queued twice before a worker takes it is processed once; a key queued while a worker holds it
  is processed again after (never by two workers at once).
- ``add_after(key, seconds)`` sets the key's one wake-up (a later call replaces it): each certificate
  sleeps until its own renewal time in one heap, with no task or poll per certificate.
- ``retry(key)`` wakes a failed key with growing backoff; ``forget(key)`` resets it after a success.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections import deque

RETRY_S = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)


class WorkQueue:
    def __init__(self) -> None:
        self._queue: deque[str] = deque()
        self._queued: set[str] = set()
        self._active: set[str] = set()
        self._again: set[str] = set()  # queued while active: run once more when done
        self._ready = asyncio.Condition()
        self._heap: list[tuple[float, int, str]] = []
        self._wake_at: dict[str, float] = {}  # the one live timer per key (heap entries may be stale)
        self._seq = itertools.count()
        self._timer_changed = asyncio.Event()
        self._failures: dict[str, int] = {}
        self.processed = 0

    # -- queueing ----------------------------------------------------------------------------------

    def add(self, key: str) -> None:
        if key in self._active:
            self._again.add(key)
            return
        if key in self._queued:
            return
        self._queued.add(key)
        self._queue.append(key)
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._ready:
            self._ready.notify()

    def add_after(self, key: str, seconds: float) -> None:
        """Wake ``key`` after ``seconds`` (replacing its previous wake-up)."""
        if seconds <= 0:
            self._wake_at.pop(key, None)
            self.add(key)
            return
        at = time.monotonic() + seconds
        self._wake_at[key] = at
        heapq.heappush(self._heap, (at, next(self._seq), key))
        if self._heap[0][2] == key:
            self._timer_changed.set()

    def cancel(self, key: str) -> None:
        """No wake-up for ``key`` (it was deleted); a queued run still happens and finds nothing."""
        self._wake_at.pop(key, None)
        self._failures.pop(key, None)

    def retry(self, key: str) -> float:
        """Wake ``key`` again after a backoff that grows with each failure in a row; returns the delay."""
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        delay = RETRY_S[min(failures, len(RETRY_S)) - 1]
        self.add_after(key, delay)
        return delay

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)

    def wake_at(self, key: str) -> float | None:
        return self._wake_at.get(key)

    # -- taking work -------------------------------------------------------------------------------

    async def get(self) -> str:
        async with self._ready:
            await self._ready.wait_for(lambda: bool(self._queue))
            key = self._queue.popleft()
        self._queued.discard(key)
        self._active.add(key)
        return key

    def done(self, key: str) -> None:
        self._active.discard(key)
        self.processed += 1
        if key in self._again:
            self._again.discard(key)
            self.add(key)

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def timers(self) -> int:
        return len(self._wake_at)

    async def run_timers(self) -> None:
        """Move keys whose time has come into the queue; until cancelled."""
        while True:
            now = time.monotonic()
            while self._heap and self._heap[0][0] <= now:
                at, _, key = heapq.heappop(self._heap)
                if self._wake_at.get(key) == at:
                    del self._wake_at[key]
                    self.add(key)
            self._timer_changed.clear()
            timeout = self._heap[0][0] - now if self._heap else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._timer_changed.wait(), timeout)
