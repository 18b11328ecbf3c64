"""Repeating problems logged at most once per interval."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

log = logging.getLogger("fsac.runtime")


class Throttle:
    """At most one log line per interval for a repeating problem (a camera sending garbage at
    30 fps must not fill the disk with logs); the count of the suppressed ones is reported."""

    def __init__(self, interval: float = 2.0) -> None:
        self.interval = interval
        self.last = -math.inf
        self.suppressed = 0

    def __call__(self, level: int, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self.last < self.interval:
            self.suppressed += 1
            return
        if self.suppressed:
            msg += f" (+{self.suppressed} similar messages suppressed)"
        log.log(level, msg, *args)
        self.last, self.suppressed = now, 0
