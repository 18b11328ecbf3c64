"""The bounded queue between the reader and the scorer.

Not `queue.Queue` because the scorer needs two things it lacks: take "whatever is already
waiting and ready, up to n" without waiting for more (batching that never adds latency),
and a `close()` that wakes everyone up for shutdown.

every-frame mode: `put` blocks while the queue is full, so a slow model slows the reader
  down (back-pressure) and no frame is ever skipped.
latest-frame mode: `put` never blocks; when full, the oldest waiting frame is dropped and
  returned to the caller to be counted, so the scorer always works on fresh frames.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable

CLOSED = object()  # returned by get() once the queue is closed and empty


class FrameQueue:
    def __init__(self, maxsize: int, drop_oldest: bool = False) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.maxsize = maxsize
        self.drop_oldest = drop_oldest
        self._items: deque[Any] = deque()
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    def put(self, item: Any) -> tuple[bool, Any]:
        """Add an item. Returns (accepted, dropped): accepted is False once closed; dropped is
        the stale item pushed out in latest-frame mode, else None."""
        with self._cond:
            dropped = None
            if self.drop_oldest:
                if self._closed:
                    return False, None
                if len(self._items) >= self.maxsize:
                    dropped = self._items.popleft()
            else:
                while len(self._items) >= self.maxsize and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return False, None
            self._items.append(item)
            self._cond.notify_all()
            return True, dropped

    def get(self, timeout: float | None = None) -> Any:
        """Oldest item; None on timeout; CLOSED when closed and drained."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._items:
                if self._closed:
                    return CLOSED
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def take_ready(self, n: int, ready: Callable[[Any], bool]) -> list[Any]:
        """Up to n items from the head that are already `ready`; never waits."""
        taken: list[Any] = []
        with self._cond:
            while self._items and len(taken) < n and ready(self._items[0]):
                taken.append(self._items.popleft())
            if taken:
                self._cond.notify_all()
        return taken

    def close(self) -> None:
        """No more puts; get() drains what is left, then returns CLOSED."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def clear(self) -> list[Any]:
        with self._cond:
            items = list(self._items)
            self._items.clear()
            self._cond.notify_all()
            return items
