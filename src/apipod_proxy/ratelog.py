"""Log lines for repeated failures, at most once per interval per kind, with a count.

A flood (a client opening thousands of connections, a process out of file descriptors)
repeats one failure thousands of times a second; one line per event would fill disks
and hide everything else. The first occurrence is logged at once; later ones are
counted and the count is logged with the next line once the interval has passed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

INTERVAL = 10.0


class RateLimitedLog:
    def __init__(
        self,
        logger: logging.Logger,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger, self.interval, self.clock = logger, interval, clock
        self._last: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def __call__(self, level: int, kind: str, message: str, *args: object) -> bool:
        """Log `message % args` unless `kind` was logged in the last interval.

        Returns True when a line was written. The line ends with how many times
        `kind` happened since the previous line.
        """
        now = self.clock()
        self._count[kind] = self._count.get(kind, 0) + 1
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            return False
        count = self._count.pop(kind)
        self._last[kind] = now
        if last is None:
            self.logger.log(level, message, *args)
        else:
            self.logger.log(
                level, message + " (%d times in the last %.0fs)", *args, count, now - last
            )
        return True
